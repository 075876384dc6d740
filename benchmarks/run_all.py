"""Benchmarks (`make bench`): ratios measured side by side in one run; results go into the README.

1. compile time of every stage through the default pipeline at the config's decode shape (goal < 1 s per
   stage, < 3 s per whole layer kind);
2. interpreter time at the flash decode shape (B=64, S=2, window 128 + 512 listed compressed keys):
   tile level vs tensor level (goal <= 3x);
3. simulated AICore time (pypto 0.2.0 cost model) and scheduler task count of each layer kind's attention core
   at B=64, S=2, 8K context (SWA: sparse_attn_core, 128 window keys; HCA: hca_attn_core, + every one of the 64
   ratio-128 entries; CSA: sparse_attn_core, + 512 indexer picks), with attnc's numerics and with P normalised
   before P·V, next to the hand-written hicann/pypto kernels under the same pypto (goal: at or below each); then
   the whole layer steps decode_swa/hca/csa.
4. chunked prefill (`--sections prefill`): each layer kind on a chunk of S = 128 and 512 tokens per row, B = 4,
   flash heads — compile time, interpreter time (tensor and tile level) and simulated AICore time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from attnc.ir.interpreter import run_module
from attnc.kernels_src import STAGES, build_stage, resolve_config
from attnc.kernels_src.inputs import make_inputs
from attnc.passes import DEFAULT_PIPELINE, PYPTO_PIPELINE
from attnc.passes.verify import run_pipeline

# layer kind -> (hand-written kernel, its simulated AICore us under pypto 0.2.0, attention-core stage, overrides)
ATTENTION_CORES = {
    "decode_swa": ("SWA (window 128)", 120.6, "sparse_attn_core", {"compress_ratio": 0}),
    "decode_hca": ("CFA (ratio 128)", 258.2, "hca_attn_core", {}),
    "decode_csa": ("SCFA (CSA, 512 picks)", 212.9, "sparse_attn_core", {"compress_ratio": 4}),
}
# the hand-written kernels' numerics (P normalised before P·V), a schedule-attention option
NORMALIZE_BEFORE = PYPTO_PIPELINE.replace("schedule-attention", "schedule-attention{normalize=before}")


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_compile(config: str, repeat: int) -> dict:
    out = {}
    for name, st in STAGES.items():
        cfg = resolve_config(config)

        def once():
            run_pipeline(build_stage(st, cfg), DEFAULT_PIPELINE)

        out[name] = _best(once, repeat)
    return out


def bench_interpreter(config: str, stage: str, repeat: int) -> dict:
    st = STAGES[stage]
    cfg = resolve_config(config)
    inputs = list(make_inputs(st, cfg, 0).values())
    tensor_mod = build_stage(st, cfg)
    tile_mod = build_stage(st, cfg)
    run_pipeline(tile_mod, DEFAULT_PIPELINE)
    t_tensor = _best(lambda: run_module(tensor_mod, inputs), repeat)
    t_tile = _best(lambda: run_module(tile_mod, inputs), repeat)
    return {"tensor_s": t_tensor, "tile_s": t_tile, "ratio": t_tile / t_tensor}


def bench_aicore(config: str, stage: str, timeout_s: int, overrides: dict | None = None,
                 pipeline: str = PYPTO_PIPELINE) -> dict:
    from attnc.codegen.pypto.target import run_pypto_sim
    from attnc.memory import MemoryLimitError, check_memory
    from attnc.sim_check import check_outputs

    st = STAGES[stage]
    cfg = resolve_config(config, overrides)
    module = build_stage(st, cfg)
    run_pipeline(module, pipeline)
    inputs = make_inputs(st, cfg, 0)
    # tensor-graph: the cheapest verify mode in which SIM writes the outputs back; a time counts only for a program
    # whose outputs equal the interpreter's (the check of `attnc run`). Where the SIM child with outputs and the
    # interpreter do not fit the machine's memory (attnc.memory's check, as `attnc run` makes it: flash HCA/CSA
    # layers), the time alone, said so.
    try:
        check_memory(module, f"{stage}: SIM with outputs and the interpreter", copies_of_inputs=3, sim_children=1)
    except MemoryLimitError as e:
        res = run_pypto_sim(module, inputs, verify="none", timeout_s=timeout_s)
        values = f"not checked ({e})"
    else:
        res = run_pypto_sim(module, inputs, verify="tensor-graph", timeout_s=timeout_s)
        check = check_outputs(module, inputs, res.outputs, st.outputs)
        if not check.ok:
            raise RuntimeError(f"{stage}: SIM outputs differ from the interpreter: {check.failures[0]}")
        values = "equal to the interpreter"
    return {"aicore_us": res.aicore_us, "wall_s": res.wall_s, "tasks": (res.tasks or {}).get("total"),
            "values": values}


PREFILL_KINDS = ("decode_swa", "decode_hca", "decode_csa")


def time_layer_step(config: str, stage: str, timeout_s: int, overrides: dict | None = None, width: int = 12) -> dict:
    """bench_aicore of one whole layer step, printed as one line; a pypto failure is a result (its first line)."""
    try:
        r = bench_aicore(config, stage, timeout_s, overrides)
        print(f"  {stage:<{width}} {r['aicore_us']:9.1f} us  {r['tasks'] or 0:6d} tasks  (wall {r['wall_s']:.0f} s)",
              flush=True)
    except Exception as e:  # noqa: BLE001 - keep measuring the others
        r = {"error": str(e).splitlines()[0][-300:]}
        print(f"  {stage:<{width}} not measured: {r['error']}", flush=True)
    return r


def bench_prefill(config: str, stage: str, batch: int, seq: int, timeout_s: int, sim: bool = True) -> dict:
    """One layer step on a prefill chunk of `seq` tokens per row (S > window): compile (default pipeline),
    interpret at both levels once, then the pypto pipeline in SIM (time only)."""
    st = STAGES[stage]
    cfg = resolve_config(config, {"batch": batch, "seq": seq})
    inputs = make_inputs(st, cfg, 0)
    t0 = time.perf_counter()
    tile_mod = build_stage(st, cfg)
    run_pipeline(tile_mod, DEFAULT_PIPELINE)
    out = {"compile_s": time.perf_counter() - t0}
    tensor_mod = build_stage(st, cfg)
    out["tensor_s"] = _best(lambda: run_module(tensor_mod, list(inputs.values())), 1)
    out["tile_s"] = _best(lambda: run_module(tile_mod, list(inputs.values())), 1)
    if sim:
        from attnc.codegen.pypto.target import run_pypto_sim

        module = build_stage(st, cfg)
        run_pipeline(module, PYPTO_PIPELINE)
        try:
            res = run_pypto_sim(module, inputs, verify="none", timeout_s=timeout_s)
            out.update(aicore_us=res.aicore_us, sim_wall_s=res.wall_s)
        except Exception as e:  # keep the compile and interpreter numbers
            out["sim_error"] = str(e).splitlines()[0][-300:]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="flash")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sections", default="compile,interp,sim",
                    help="comma list of compile, interp, sim (attention cores, then layers), layers (whole "
                         "layer steps only), prefill")
    ap.add_argument("--prefill-seq", default="128,512", help="prefill chunk lengths (tokens per row)")
    ap.add_argument("--prefill-batch", type=int, default=4)
    ap.add_argument("--no-sim", action="store_true", help="prefill: skip the pypto SIM runs")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    sections = set(args.sections.split(","))
    results: dict = {"config": args.config}

    if "compile" in sections:
        results["compile_s"] = bench_compile(args.config, args.repeat)
        print("compile time through the default pipeline (goal < 1 s per stage, < 3 s per layer kind):")
        for k, v in results["compile_s"].items():
            print(f"  {k:<20} {v:.3f} s")

    if "interp" in sections:
        print("interpreter time at the decode shape, tile level vs tensor level (goal <= 3x):")
        results["interp"] = {}
        for stage in ("sparse_attn_core", "sparse_attn", "qkv_proj_rope"):
            r = bench_interpreter(args.config, stage, max(1, args.repeat - 1))
            results["interp"][stage] = r
            print(f"  {stage:<20} tensor {r['tensor_s']:.3f} s  tile {r['tile_s']:.3f} s  ratio {r['ratio']:.2f}x")

    if "sim" in sections:
        sections.add("layers")
        print("simulated AICore time of each layer kind's attention core at B=64, S=2, 8K (pypto 0.2.0 cost model):")
        print(f"  {'layer kind':<12} {'stage':<16} {'attnc us':>9} {'tasks':>6} {'P-norm-first us':>15}  "
              f"{'hand-written':<22} {'us':>6}  ratio", flush=True)
        results["aicore"] = {}
        for kind, (kernel, us, stage, overrides) in ATTENTION_CORES.items():
            try:
                r = bench_aicore(args.config, stage, timeout_s=3600, overrides=overrides)
                r["normalize_before_us"] = bench_aicore(args.config, stage, 3600, overrides, NORMALIZE_BEFORE)["aicore_us"]
                r.update(hand_written=kernel, hand_written_us=us, ratio=r["aicore_us"] / us)
                print(f"  {kind:<12} {stage:<16} {r['aicore_us']:9.1f} {r['tasks'] or 0:6d} "
                      f"{r['normalize_before_us']:15.1f}  {kernel:<22} {us:6.1f}  {r['ratio']:.2f}", flush=True)
            except Exception as e:
                r = {"error": str(e).splitlines()[0]}
                print(f"  {kind:<12} not measured: {r['error']}", flush=True)
            results["aicore"][kind] = r
    if "layers" in sections:
        print("simulated AICore time of a whole layer step at B=64, S=2, 8K (no hand-written anchor):")
        results["layers"] = {}
        for kind in ATTENTION_CORES:
            results["layers"][kind] = time_layer_step(args.config, kind, 3600)

    if "prefill" in sections:
        B = args.prefill_batch
        print(f"chunked prefill, B = {B}, {args.config} heads: compile (default pipeline), interpreter "
              f"(tensor / tile level), simulated AICore (pypto pipeline, time only):")
        results["prefill"] = {}
        for seq in [int(x) for x in args.prefill_seq.split(",")]:
            for kind in PREFILL_KINDS:
                try:
                    r = bench_prefill(args.config, kind, B, seq, timeout_s=3600, sim=not args.no_sim)
                    us = (f"{r['aicore_us']:.1f} us (wall {r['sim_wall_s']:.0f} s)" if "aicore_us" in r else
                          f"not measured: {r['sim_error']}" if "sim_error" in r else "-")
                    print(f"  S={seq:<4} {kind:<12} compile {r['compile_s']:.2f} s  interp {r['tensor_s']:.1f} / "
                          f"{r['tile_s']:.1f} s  AICore {us}", flush=True)
                except Exception as e:
                    r = {"error": str(e).splitlines()[0]}
                    print(f"  S={seq:<4} {kind:<12} not measured: {r['error']}", flush=True)
                results["prefill"][f"{kind}/S={seq}"] = r
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
