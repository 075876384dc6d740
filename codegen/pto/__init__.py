"""The PTO target: `emit` prints kernels for ptoas 0.1.1, `plan` is their UB/L1/L0 memory plan, `check` runs them
on the CPU tile model (`model/`) against the interpreter, `ptoas` sets up and runs the ptoas binary."""
