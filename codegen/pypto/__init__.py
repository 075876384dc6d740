"""The pypto target: `emit` prints legalized tile IR as a `@pypto.frontend.jit` program (template in `templates/`),
`options` are the program's target options, `target` runs it in SIM (or on an NPU) through `sim/`."""
