"""Cost of a step's cache/state update in pypto SIM (issue 7 item 2): the `compressor` stage (state rings and the
compressed cache kv_cmp written by the step) at the flash shape (B=64, S=2, m=4, d=512) for two cache sizes,
with the writes in place (update-in-place: one in/out parameter, the step's rows only) and as copies (the same
pipeline without update-in-place: every written table copied whole, as before). Time only (no verify).

    python benchmarks/cache_update.py [--config flash] [--max-pos 1024 8192] [--timeout 1800]
"""
from __future__ import annotations

import argparse
import json
import sys

from attnc.passes import PYPTO_PIPELINE

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from run_all import bench_aicore  # noqa: E402

COPYING = PYPTO_PIPELINE.replace(",update-in-place", "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="flash")
    ap.add_argument("--stage", default="compressor")
    ap.add_argument("--max-pos", type=int, nargs="+", default=[1024, 8192])
    ap.add_argument("--timeout", type=int, default=1800)
    args = ap.parse_args(argv)
    rows = []
    for max_pos in args.max_pos:
        for label, pipeline in (("in place", PYPTO_PIPELINE), ("copy", COPYING)):
            r = bench_aicore(args.config, args.stage, args.timeout, {"max_pos": max_pos}, pipeline)
            rows.append({"stage": args.stage, "max_pos": max_pos, "writes": label, **r})
            print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
