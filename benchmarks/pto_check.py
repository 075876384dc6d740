"""The PTO path (ptoas 0.1.1) for every stage: compile with --pto-dtype f16, emit one kernel per token loop, run
ptoas, build with g++ against attnc's CPU tile model, run the kernel instances, compare with the interpreter.

At `tiny` every token's instance runs; at `flash` the first two tokens' instances (the interpreter's golden runs
the token loop for those rows only, the loops before it whole: a flash layer's check takes one to a few minutes).
Prints one line per kernel, then a table: stage, kernels, compiled by ptoas, max error vs the interpreter, pipe
hazards, share of the stage's tile ops that are in kernels (on the device), and the verdict. A stage is either
emitted (every kernel must compile and pass) or refused by attnc with one line naming the op (or the tile that
does not fit) and the ptoas 0.1.1 defect. Exit 1 when an emitted kernel fails."""
from __future__ import annotations

import argparse
import sys

from attnc.cli import compile_source, load_source, source_inputs
from attnc.codegen.pto.check import check_kernel
from attnc.codegen.pto.emit import PtoEmitError, emit_pto, token_loops
from attnc.ir.interpreter import entry_function
from attnc.kernels_src import STAGES
from attnc.passes import pto_pipeline

TINY_CASES = ([(name, ["max_pos=256"] if name.startswith("decode_hca") else []) for name in STAGES]
              + [("sparse_attn_core", ["cmp_topk=40", "n_cmp=64", "max_pos=256"])])
FLASH_BLOCKS = [0, 1]


def device_share(module) -> float:
    """Tile ops inside the token loops (the kernels) / all tile ops of the stage after the pipeline."""
    fn = entry_function(module)
    every = [op for op in fn.walk() if op.name.startswith("tile.") and op.name not in ("tile.parallel", "tile.yield")]
    inside = {id(op) for loop in token_loops(module) for op in loop.body.walk()}
    return sum(id(op) in inside for op in every) / max(1, len(every))


def run_config(config: str, seed: int, only: list[str]) -> tuple[list[tuple], int]:
    cases = TINY_CASES if config == "tiny" else [(name, []) for name in STAGES]
    rows, failed = [], 0
    for stage, sets in cases:
        if only and stage not in only:
            continue
        label = stage + (" [" + ",".join(sets) + "]" if sets else "")
        src = load_source(stage, config, sets)
        compile_source(src, pto_pipeline(None, "f16"), verify_each=False)
        share = device_share(src.module)
        try:
            plans = emit_pto(src.module, src.name)
        except PtoEmitError as e:
            print(f"{config} {label}: refused: {e}", flush=True)
            rows.append((label, 0, "-", "-", "-", f"0 (would be {share:.0%})", "refused: " +
                         str(e).split(": --emit pto: ", 1)[-1][:90]))
            continue
        inputs = list(source_inputs(src, seed).values())
        compiled, worst, hazards, ok = 0, 0.0, 0, True
        for i, plan in enumerate(plans):
            blocks = None if config == "tiny" else FLASH_BLOCKS
            chk = check_kernel(src.module, inputs, i, plan, blocks=blocks, opt="-O0" if config == "tiny" else "-O2")
            compiled += chk.ptoas_rc == 0
            ok &= chk.ok
            if chk.ptoas_rc == 0 and not chk.build_error:
                worst = max(worst, chk.max_error)
                hazards += max(0, chk.hazards)
            print(f"{config} {label}: {chk.line()} [{plan.memory.summary()}] {'PASS' if chk.ok else 'FAIL'}",
                  flush=True)
        failed += not ok
        rows.append((label, len(plans), f"{compiled}/{len(plans)}", f"{worst:.1e}", str(hazards), f"{share:.0%}",
                     "PASS" if ok else "FAIL"))
    return rows, failed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=("tiny", "flash", "both"), default="both")
    ap.add_argument("--stage", action="append", default=[], help="only this stage (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    failed = 0
    tables = []
    for config in (("tiny", "flash") if args.config == "both" else (args.config,)):
        rows, f = run_config(config, args.seed, args.stage)
        failed += f
        tables.append((config, rows))
    for config, rows in tables:
        print(f"\n{config} | kernels | compiled | max error | hazards | on device | verdict")
        print("|".join(["---"] * 7))
        for r in rows:
            print(" | ".join(map(str, r)))
    print(f"\nstages with a failing kernel: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
