"""Tune each layer kind's attention core or whole layer step (pypto 0.2.0 SIM cost model) and print default vs
tuned AICore µs.

    .venv/bin/python benchmarks/tune_cores.py --config flash --budget 6 --out tune-out/
    .venv/bin/python benchmarks/tune_cores.py --layers --only SWA --budget 6 --out tune-out/   # whole layers

Writes one tuning file and one plot per core into --out and a markdown table on stdout (the README's figures).
Timings are cached under ~/.cache/attnc/tune, so a repeated run costs only the re-checks' cache look-ups."""
from __future__ import annotations

import argparse
import os
import sys
import time

from attnc.tune import TuneRequest, plot_trials, tune, write_tuning

CORES = [  # layer kind, stage, overrides, hand-written kernel's µs under the same pypto 0.2.0 (README)
    ("SWA", "sparse_attn_core", ["compress_ratio=0"], 120.6),
    ("HCA", "hca_attn_core", [], 258.2),
    ("CSA", "sparse_attn_core", [], 212.9),
]
LAYERS = [  # whole layer steps: no hand-written anchor
    ("SWA", "decode_swa", [], None),
    ("HCA", "decode_hca", [], None),
    ("CSA", "decode_csa", [], None),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="flash")
    ap.add_argument("--budget", type=int, default=6)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--only", action="append", default=[], help="layer kinds to tune (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    ap.add_argument("--out", default="tune-out")
    ap.add_argument("--layers", action="store_true", help="tune whole layer steps instead of attention cores")
    ap.add_argument("--recheck-verify", default="default", choices=("default", "tensor-graph"),
                    help="pypto verify of the re-check (see attnc tune --help)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for kind, stage, overrides, hand in LAYERS if args.layers else CORES:
        if args.only and kind not in args.only:
            continue
        t0 = time.perf_counter()
        req = TuneRequest(source=stage, config=args.config, overrides=[*overrides, *args.set], budget=args.budget,
                          jobs=args.jobs, timeout_s=args.timeout, recheck_verify=args.recheck_verify)
        result = tune(req)
        t = result.tuning
        path = os.path.join(args.out, f"{kind.lower()}{'_layer' if args.layers else ''}_{args.config}.json")
        write_tuning(path, t)
        plot_trials(result.trials, f"{kind} {stage} --config {args.config}", path[:-5] + ".png")
        rows.append((kind, stage, t["default_aicore_us"], t["aicore_us"], hand, t["evaluated"], t["sim_trials"],
                     time.perf_counter() - t0, t["recheck"]["max_error"]))
        print(f"{kind}: default {t['default_aicore_us']:.1f} us -> tuned {t['aicore_us']:.1f} us ({path})",
              file=sys.stderr, flush=True)
    print(f"| layer kind | stage | default µs | tuned µs | gain | hand-written µs | candidates | SIM runs | "
          f"tune wall s | re-check error |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind, stage, default, tuned, hand, evaluated, runs, wall, err in rows:
        print(f"| {kind} | {stage} | {default:.1f} | {tuned:.1f} | {(1 - tuned / default) * 100:.1f} % | {hand or '—'} | "
              f"{evaluated} | {runs} | {wall:.0f} | {err:.2g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
