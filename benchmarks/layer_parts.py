"""Layer steps against their parts: every stage next to its hand-written kernel and bound, every layer kind as one
program next to the sum of its stages run alone and the sum of the hand-written parts (issue 20's table).

pypto 0.2.0 SIM AICore µs at the config's decode shape (flash: B = 64, S = 2; the `t16` rows B = 8), each program's
outputs compared with the interpreter where the SIM child with outputs fits the machine (else time only, said so).
Rows run one after another; `--only` picks rows and `--json FILE` keeps results across runs (rows measured again
replace theirs), so a long sweep can be split and the table printed from the file (`--table`).

    python benchmarks/layer_parts.py --json parts.json                 # every row (about 20 SIM runs)
    python benchmarks/layer_parts.py --json parts.json --only 'qkv*'   # some rows again
    python benchmarks/layer_parts.py --json parts.json --table         # the tables from the file
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys

from run_all import bench_aicore

# row -> (stage, overrides, hand-written kernel and its µs, the target µs, HBM bound µs); hand-written
# figures and bounds: ../shared/notes/hand-written-stage-kernels.md (same pypto 0.2.0 SIM, B = 64, S = 2)
STAGE_ROWS = {
    "qkv_proj_rope": ("qkv_proj_rope", {}, "mla_prolog_v4", 457.9, 457.9, 56.0),
    "qkv_proj_rope_t16": ("qkv_proj_rope", {"batch": 8}, "mla_prolog_v4 t=16", 196.7, 196.7, None),
    "qkv_proj_rope_w8a8": ("qkv_proj_rope", {"quant": "w8a8"}, "mla_prolog_quant_v4", 149.4, 149.4, 35.0),
    "qkv_proj_rope_w8a8_t16": ("qkv_proj_rope", {"quant": "w8a8", "batch": 8}, "mla_prolog_quant_v4 t=16",
                               99.0, 99.0, None),
    "compressor_m4": ("compressor", {"compress_ratio": 4}, "compressor_ratio_4", 116.0, 116.0, 12.8),
    "index_compressor": ("index_compressor", {}, "compressor_ratio_4_rotate", 92.0, 92.0, 3.7),
    "compressor_m128": ("compressor", {"compress_ratio": 128}, "compressor_ratio_128", 102.1, 102.1, 27.1),
    "indexer": ("indexer", {}, None, None, 4 * 34.8, 34.8),
    "indexer_w8a8": ("indexer", {"quant": "w8a8"}, None, None, None, None),
    "swa_core": ("sparse_attn_core", {"compress_ratio": 0}, "SWA window attention", 120.6, 120.6, None),
    "hca_core": ("hca_attn_core", {}, "CFA", 258.2, 258.2, None),
    "csa_core": ("sparse_attn_core", {"compress_ratio": 4}, "SCFA", 212.9, 170.0, None),
    "sparse_attn_m0": ("sparse_attn", {"compress_ratio": 0}, None, None, None, None),
    "sparse_attn_m4": ("sparse_attn", {"compress_ratio": 4}, None, None, None, None),
}
LAYER_ROWS = {"decode_swa": ("decode_swa", {}), "decode_hca": ("decode_hca", {}), "decode_csa": ("decode_csa", {})}

# layer kind -> its stages run alone (sign: the o-projection of HCA is sparse_attn m = 0 minus the SWA core) and
# the hand-written parts (the o-projection and the indexer have none)
LAYER_SUMS = {
    "decode_swa": ([("qkv_proj_rope", 1), ("sparse_attn_m0", 1)], ["qkv_proj_rope", "swa_core"]),
    "decode_hca": ([("qkv_proj_rope", 1), ("compressor_m128", 1), ("hca_core", 1), ("sparse_attn_m0", 1),
                    ("swa_core", -1)], ["qkv_proj_rope", "compressor_m128", "hca_core"]),
    "decode_csa": ([("qkv_proj_rope", 1), ("compressor_m4", 1), ("index_compressor", 1), ("indexer", 1),
                    ("sparse_attn_m4", 1)], ["qkv_proj_rope", "compressor_m4", "index_compressor", "csa_core"]),
}


def measure(row: str, config: str, timeout_s: int) -> dict:
    stage, overrides = (STAGE_ROWS[row][:2] if row in STAGE_ROWS else LAYER_ROWS[row])
    try:
        r = bench_aicore(config, stage, timeout_s, dict(overrides))
    except Exception as e:  # noqa: BLE001 - a pypto failure is a result; keep measuring the others
        return {"error": str(e).splitlines()[0][-300:]}
    return {"config": config, **{k: r[k] for k in ("aicore_us", "tasks", "values", "wall_s")}}


def _us(results: dict, row: str):
    r = results.get(row) or {}
    return r.get("aicore_us")


def tables(results: dict) -> list[str]:
    out = ["| stage | ours µs | tasks | hand-written | µs | ratio | target | HBM bound | values |",
           "|---|---|---|---|---|---|---|---|---|"]
    for row, (_, _, kernel, hw, target, bound) in STAGE_ROWS.items():
        r = results.get(row)
        if r is None:
            continue
        if r.get("config") != "flash":  # the hand-written figures are flash-size ones
            kernel = hw = target = bound = None
        us = r.get("aicore_us")
        cell = f"{us:.1f}" if us is not None else f"not measured: {r.get('error', '')[:80]}"
        ratio = f"{us / hw:.2f}×" if us is not None and hw else "—"
        mark = " ✓" if us is not None and target is not None and us <= target else ""
        out.append(f"| {row} | {cell}{mark} | {r.get('tasks') or '—'} | {kernel or 'none'} | {hw or '—'} | {ratio} | "
                   f"{target or '—'} | {bound or '—'} | {'equal' if str(r.get('values', '')).startswith('equal') else 'time only'} |")
    out += ["", "| layer kind | one program µs | sum of stages alone µs | one program / sum | hand-written parts µs |",
            "|---|---|---|---|---|"]
    for kind, (parts, hw_parts) in LAYER_SUMS.items():
        one = _us(results, kind)
        got = [(_us(results, p), sign) for p, sign in parts]
        total = sum(u * s for u, s in got) if all(u is not None for u, _ in got) else None
        flash = all((results.get(p) or {}).get("config") == "flash" for p in hw_parts)
        hw = sum(STAGE_ROWS[p][3] for p in hw_parts) if flash else None
        fmt = lambda v: f"{v:.1f}" if v is not None else "—"  # noqa: E731
        ratio = f"{one / total:.2f}" if one is not None and total else "—"
        out.append(f"| {kind} | {fmt(one)} | {fmt(total)} | {ratio} | {fmt(hw)} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="flash")
    ap.add_argument("--only", action="append", default=[], help="row name pattern (fnmatch; repeatable)")
    ap.add_argument("--json", metavar="FILE", help="results kept here across runs")
    ap.add_argument("--table", action="store_true", help="print the tables from --json without measuring")
    ap.add_argument("--timeout", type=int, default=3600)
    args = ap.parse_args(argv)
    results = {}
    if args.json and os.path.exists(args.json):
        with open(args.json) as f:
            results = json.load(f)
    if any(r.get("config", args.config) != args.config for r in results.values()):
        print(f"error: {args.json} holds rows of another config than {args.config}", file=sys.stderr)
        return 2
    if not args.table:
        rows = [r for r in [*STAGE_ROWS, *LAYER_ROWS]
                if not args.only or any(fnmatch.fnmatch(r, p) for p in args.only)]
        if not rows:
            print(f"error: --only {args.only} names no row; rows: {', '.join([*STAGE_ROWS, *LAYER_ROWS])}",
                  file=sys.stderr)
            return 2
        for row in rows:
            results[row] = measure(row, args.config, args.timeout)
            r = results[row]
            print(f"{row:<24} " + (f"{r['aicore_us']:9.1f} us {r['tasks'] or 0:6d} tasks ({r['values'][:40]})"
                                   if "aicore_us" in r else f"not measured: {r['error']}"), flush=True)
            if args.json:  # after every row: a long sweep interrupted keeps what it measured
                tmp = args.json + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(results, f, indent=1, sort_keys=True)
                os.replace(tmp, args.json)
    print("\n".join(tables(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
