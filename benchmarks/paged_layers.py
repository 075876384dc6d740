"""Paged vs dense whole-layer steps in pypto SIM (issue 8 §3): `decode_<kind>` and `decode_<kind>_paged` (caches in
block pools read through block tables in place) at one config, time only (no verify), the pypto pipeline. The same
numbers as `attnc run decode_<kind>[_paged] --config flash --target pypto-sim --time-only` (seed 0 inputs; the paged
form's block tables shuffled). A whole flash layer takes 1–5 min of SIM wall time per run.

    python benchmarks/paged_layers.py [--config flash] [--kinds swa hca] [--set batch=16 ...] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from run_all import time_layer_step  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="flash")
    ap.add_argument("--kinds", nargs="+", default=["swa", "hca"], choices=["swa", "hca", "csa"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    results = {}
    print(f"whole layer step, {args.config} {' '.join(args.set)} (pypto 0.2.0 cost model, time only):")
    for kind in args.kinds:
        for stage in (f"decode_{kind}", f"decode_{kind}_paged"):
            results[stage] = time_layer_step(args.config, stage, args.timeout, overrides, width=18)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
