"""The PTO path (ptoas 0.1.1) for every stage at `tiny`: compile with --pto-dtype f16, emit one kernel per token
loop, run ptoas, build with g++ against attnc's CPU tile model, run every token, compare with the interpreter.
Prints one line per kernel, and for a refused stage every op that blocks it (static scan)."""
from __future__ import annotations

import argparse
import sys
from collections import Counter

from attnc.codegen.driver import compile_source, load_source, source_inputs
from attnc.codegen.pto_check import check_kernel
from attnc.codegen.pto_emit import PtoEmitError, emit_pto, pto_blockers
from attnc.kernels_src import STAGES
from attnc.passes import pto_pipeline

CASES = ([(name, ["max_pos=256"] if name == "decode_hca" else []) for name in STAGES]
         + [("sparse_attn_core", ["cmp_topk=40", "n_cmp=64", "max_pos=256"])])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    compiled = failed = 0
    worst = 0.0
    for stage, sets in CASES:
        label = stage + (" [" + ",".join(sets) + "]" if sets else "")
        try:
            src = load_source(stage, "tiny", sets)
        except Exception as e:  # a stage that cannot be built at tiny (e.g. HCA needs max_pos >= 256)
            print(f"{label}: not built at tiny: {e}")
            continue
        compile_source(src, pto_pipeline(None, "f16"), verify_each=False)
        try:
            plans = emit_pto(src.module, src.name)
        except PtoEmitError as e:
            blockers = Counter(f"{op} ({why.split(' (')[0]})" for _, op, why in pto_blockers(src.module))
            print(f"{label}: refused: {e}")
            print(f"    blocking ops: {dict(blockers)}")
            continue
        inputs = list(source_inputs(src, args.seed).values())
        for i, plan in enumerate(plans):
            chk = check_kernel(src.module, inputs, i, plan)
            compiled += chk.ptoas_rc == 0
            failed += not chk.ok
            if chk.ptoas_rc == 0 and not chk.build_error:
                worst = max(worst, chk.max_error)
            print(f"{label}: {chk.line()} {'PASS' if chk.ok else 'FAIL'}")
    print(f"kernels compiled by ptoas: {compiled}, failing the check: {failed}, "
          f"max error vs interpreter (kernels that ran): {worst:.3e}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
