"""Cost of a step's cache/state update in pypto SIM (issue 7 item 2): the `compressor` stage (state rings and the
compressed cache kv_cmp written by the step) at the flash head sizes (S=2, m=4, d=512; B=4; at B=64 the compressor
failed in pypto 0.2.0's OoOSchedule pass before the emitter's pooled-reshape rule) for several cache sizes,
with the writes in place (update-in-place: one in/out parameter, the step's rows only) and as copies (the same
pipeline without update-in-place: every written table copied whole, as before). Time only (no verify).

    python benchmarks/cache_update.py [--config flash] [--batch 4] [--max-pos 1024 8192 65536] [--copy-max-pos 1024 8192]
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
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-pos", type=int, nargs="+", default=[1024, 8192, 65536])
    ap.add_argument("--copy-max-pos", type=int, nargs="*", default=[1024, 8192])
    ap.add_argument("--timeout", type=int, default=1800)
    args = ap.parse_args(argv)
    rows = []
    runs = [(m, "in place", PYPTO_PIPELINE) for m in args.max_pos] + [(m, "copy", COPYING) for m in args.copy_max_pos]
    for max_pos, label, pipeline in runs:
        r = bench_aicore(args.config, args.stage, args.timeout, {"max_pos": max_pos, "batch": args.batch}, pipeline)
        rows.append({"stage": args.stage, "batch": args.batch, "max_pos": max_pos, "writes": label, **r})
        print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
