"""Emit the pypto program of every project stage over a matrix of shapes into a folder, or compare against one:
the guard of the emitter redesign (issue 19), whose steps must leave every emitted program byte-identical.

    python -m tests.pypto_snapshot write DIR [--quick]     # one file per cell: DIR/<cell>.pypto.py (or .error)
    python -m tests.pypto_snapshot compare DIR [--quick]   # exit 1 and list the cells that differ

Cells: stage (`attnc list stages`, paged forms included) x config {tiny, flash} x layout {dense, packed} x
(batch, seq) in CELLS, plus quant=w8a8 at one shape. A cell whose build, pipeline or emission fails records its
one-line error, so refusals are compared too. `--quick` is the subset tests/test_pypto_snapshot.py runs."""
from __future__ import annotations

import argparse
import os
import sys

SHAPES = ((1, 1), (1, 2), (2, 2), (2, 16))
QUICK = (("tiny", "dense", (1, 1)), ("tiny", "packed", (2, 16)), ("tiny", "dense", (2, 2)))


def cells(quick: bool = False):
    """(name, stage, config, overrides) for every cell, in a fixed order."""
    from attnc.kernels_src import STAGES

    for stage in sorted(STAGES):
        if not STAGES[stage].fn.__module__.startswith("attnc.kernels_src"):
            continue
        if quick:
            combos = [(c, lay, s, "none") for c, lay, s in QUICK]
        else:
            combos = [(c, lay, s, "none") for c in ("tiny", "flash") for lay in ("dense", "packed") for s in SHAPES]
            combos += [(c, "dense", (2, 2), "w8a8") for c in ("tiny", "flash")]
        for config, layout, (batch, seq), quant in combos:
            sets = {"batch": batch, "seq": seq}
            if layout == "packed":
                sets.update(layout="packed")
            if quant != "none":
                sets.update(quant=quant)
            name = f"{stage}-{config}-{layout}-b{batch}-s{seq}" + (f"-{quant}" if quant != "none" else "")
            yield name, stage, config, sets


def emit_cell(stage: str, config: str, sets: dict) -> tuple[str, str]:
    """(suffix, text): the emitted program, or the cell's one-line error."""
    from attnc.codegen.pypto.emit import emit_pypto
    from attnc.errors import AttncError
    from attnc.kernels_src import STAGES, build_stage, resolve_config
    from attnc.passes import PYPTO_PIPELINE
    from attnc.passes.verify import run_pipeline

    try:
        cfg = resolve_config(config, sets)
        module = build_stage(STAGES[stage], cfg)
        run_pipeline(module, PYPTO_PIPELINE)
        return ".pypto.py", emit_pypto(module)
    except AttncError as e:
        return ".error", f"{type(e).__name__}: {e}\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("write", "compare"))
    ap.add_argument("dir")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-k", default="", help="only cells whose name contains this")
    args = ap.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    differ = 0
    for name, stage, config, sets in cells(args.quick):
        if args.k not in name:
            continue
        suffix, text = emit_cell(stage, config, sets)
        path = os.path.join(args.dir, name + suffix)
        if args.mode == "write":
            with open(path, "w") as f:
                f.write(text)
            print(name + suffix, flush=True)
            continue
        old = open(path).read() if os.path.exists(path) else None
        if old != text:
            differ += 1
            print(f"DIFFERS {name}{suffix}" + (" (missing)" if old is None else ""), flush=True)
    if args.mode == "compare":
        print(f"{differ} cells differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
