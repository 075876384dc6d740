"""The values of a program's host constants (pypto-legalize `host_constant`: values computed from no kernel input,
kernel parameters `hcN`), written into the program so that it runs alone on the stage's inputs.

Each value is computed by the interpreter (the golden of the same IR) from the op that states it and the ops it is
computed from (ramps, fills and what is made of them), then written as a zlib-compressed `.npy` in base64 (bf16 as
float32 holding the bf16 values, as an inputs `.npz` holds them): deterministic bytes, a few KB per program (flash
decode_csa_paged: 24 constants, 19 KB; uncompressed they were 1.8 MB of text)."""
from __future__ import annotations

import base64
import io
import zlib

LINE_CHARS = 100  # base64 characters per program line


def host_constants(module) -> dict:
    """The values of the entry function's `host_constant` parameters (pypto-legalize), name -> torch tensor: each
    such op and the ops it is computed from (no input: ramps, fills, what is made of them) run by the interpreter."""
    from attnc.ir.interpreter import entry_function, make_interpreter

    fn = entry_function(module)
    it = make_interpreter(module)
    env: dict = {}

    def value(v):
        if v not in env:
            op = v.owner
            env.update(zip(op.results, it.run_op(op, tuple(value(u) for u in op.operands))))
        return env[v]

    return {op.attributes["host_constant"].data: value(op.results[0]) for op in fn.walk()
            if "host_constant" in op.attributes}


def encoded(values: dict) -> list[tuple[str, list[str]]]:
    """(name, base64 lines of its zlib-compressed .npy) per value, in the order given."""
    import numpy as np

    from attnc.ir.types import to_numpy

    out = []
    for name, v in values.items():
        buf = io.BytesIO()
        np.save(buf, to_numpy(v), allow_pickle=False)
        text = base64.b64encode(zlib.compress(buf.getvalue(), 9)).decode("ascii")
        out.append((name, [text[i:i + LINE_CHARS] for i in range(0, len(text), LINE_CHARS)]))
    return out
