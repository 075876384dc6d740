"""Long mutation-fuzzing run of the IR front end (issue 9): N Hypothesis-drawn mutants of the corpus in
tests/ir_fuzz.py through parse -> verify -> memory estimate -> interpret -> passes -> interpret -> emit.

    .venv/bin/python benchmarks/fuzz_ir.py --mutants 10000 --seed 0 [--json out.json]

Prints the number of mutants, how far they got, the crashes (exceptions that are not input errors) and hangs
(over 5 s), and the slowest mutant. Exit 1 if any crash or hang was found."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import seed as hyp_seed  # noqa: E402

from tests.ir_fuzz import Stats, corpus, front_end, mutate, mutations  # noqa: E402


def run(n: int, seed: int, stats: Stats) -> None:
    @hyp_seed(seed)
    @settings(max_examples=n, deadline=None, database=None, derandomize=False, phases=["generate"],
              suppress_health_check=list(HealthCheck))
    @given(mutations(corpus()))
    def one(case):
        text = mutate(case)
        stats.add(text, front_end(text))

    one()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the statistics here")
    ap.add_argument("--errors", action="store_true", help="also count the input errors by message")
    ap.add_argument("--save", metavar="DIR", help="write each crashing/hanging mutant to DIR/crash-N.mlir")
    ap.add_argument("--progress", type=int, default=500, metavar="N", help="a progress line every N mutants")
    args = ap.parse_args()
    stats = Stats(keep_errors=args.errors, save_dir=args.save, progress_every=args.progress)
    t0 = time.perf_counter()
    run(args.mutants, args.seed, stats)
    wall = time.perf_counter() - t0
    print(f"mutants: {stats.mutants}  wall: {wall:.0f} s  mean: {stats.total_seconds / max(1, stats.mutants):.3f} CPU s"
          f"  slowest: {stats.max_seconds:.2f} CPU s")
    for stage, count in sorted(stats.stages.items(), key=lambda kv: -kv[1]):
        print(f"  {count:6d}  {stage}")
    for msg, count in stats.errors.most_common(25):
        print(f"  {count:6d}  error: {msg}")
    print(f"crashes and hangs: {len(stats.crashes)}")
    seen = set()
    for crash, stage, text in stats.crashes:
        if (crash[:80], stage) in seen:
            continue
        seen.add((crash[:80], stage))
        print(f"--- {stage}: {crash}\n{text[:3000]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mutants": stats.mutants, "wall_s": wall, "slowest_s": stats.max_seconds,
                       "stages": dict(stats.stages), "crashes": [c[:2] for c in stats.crashes]}, f, indent=1)
    return 1 if stats.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
