"""The targets: each turns tile IR that its legalize pass accepted into what that target runs.

- `attnc.codegen.pypto`: a pypto 0.2.0 program (jinja2 template), its options, the SIM/NPU runner.
- `attnc.codegen.pto`: PTO text for ptoas 0.1.1, its memory plan, the CPU tile model check, the ptoas set-up.

`escape` is shared by both: the only way a name from an input reaches generated code."""
