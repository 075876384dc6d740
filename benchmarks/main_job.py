"""The main job (`make run`): compile the stages for a config with the default pipeline and check them.

For every stage it prints: the passes run, the compile time at the config's full decode shape, the max
normalised error of the compiled (tile-level) IR vs the tensor-level interpreter and vs the independent FP32
reference (at the config's head sizes with a small batch), and the pypto program run in SIM at a small shape:
its error vs the interpreter, its per-pass verify records and the simulated AICore time.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # tests.reference (the independent FP32 reference) lives beside the packages

from attnc.ir.interpreter import run_module  # noqa: E402
from attnc.kernels_src import STAGES, build_stage, resolve_config  # noqa: E402
from attnc.kernels_src.inputs import make_inputs  # noqa: E402
from attnc.passes import DEFAULT_PIPELINE, PYPTO_PIPELINE  # noqa: E402
from attnc.passes.verify import normalised_error, run_pipeline  # noqa: E402

STAGE_ORDER = ("qkv_proj_rope", "sparse_attn_core", "sparse_attn", "compressor", "index_compressor", "indexer",
               "decode_swa", "decode_hca", "decode_csa")
# a layer step is checked against the reference of the whole layer from a history the compiled kernel decoded
# itself, at positions where a block of its ratio completes inside the step
LAYER_START = {"decode_swa": (126, 131), "decode_hca": (126, 127), "decode_csa": (126, 131)}


def layer_reference_error(stage: str, config: str, batch: int) -> float:
    from tests.layer_harness import LayerDriver
    from tests.reference.dsv4_layer_reference import layer_reference

    kind = stage.removeprefix("decode_")
    start = list(LAYER_START[stage])[:batch] + [0] * max(0, batch - 2)
    d = LayerDriver(kind, batch=batch, length=max(start) + 8, config=config, pipeline=DEFAULT_PIPELINE)
    seq = resolve_config(config)["seq"]
    outs = d.step(start, seq, d.history(start))
    sel = None
    if kind == "csa":  # compare attention with the kernel's own picks (spec §7c); the picks are tested as sets
        sel = {(b, s): [int(i) for i in outs["cmp_idx"][b, s] if int(i) >= 0] for b in range(batch) for s in range(seq)}
    ref = layer_reference(kind, d.cfg, d.reference_weights(), d.x_hist.float(), start, seq, selection=sel)
    return normalised_error(outs["out"].float(), ref["y"].float())


def reference_outputs(stage: str, inputs: dict, cfg: dict) -> dict:
    from tests.reference import dsv4_reference as ref

    if stage == "qkv_proj_rope":
        return ref.qkv_proj_rope_reference(inputs, cfg)
    out = ref.sparse_attn_reference(inputs, cfg)
    return {"core": out["core"]} if stage == "sparse_attn_core" else {"out": out["out"]}


def worst(errors: dict) -> str:
    return f"{max(errors.values()):.2e}" if errors else "n/a"


def check_stage(stage: str, config: str, small: dict, sim_config: str, seed: int, with_sim: bool,
                status=lambda text: None) -> dict:
    """One table row; `status(text)` is told what is running (the progress line on a terminal)."""
    st = STAGES[stage]
    status(f"{stage}: compile at {config}")
    row = {"stage": stage}
    # compile time at the full decode shape
    module = build_stage(st, resolve_config(config))
    t0 = time.perf_counter()
    report = run_pipeline(module, DEFAULT_PIPELINE)
    row["compile_s"] = time.perf_counter() - t0
    row["passes"] = len(report.passes)

    # numerics at the config's head sizes with a small batch
    status(f"{stage}: numerics (--verify-each, FP32 reference)")
    cfg = resolve_config(config, small)
    inputs = make_inputs(st, cfg, seed)
    tensor_out = dict(zip(st.outputs, run_module(build_stage(st, cfg), list(inputs.values()))))
    tiled = build_stage(st, cfg)
    rep = run_pipeline(tiled, DEFAULT_PIPELINE, verify_inputs=list(inputs.values()), output_names=st.outputs)
    row["verify_failed"] = len(rep.failed)
    tile_out = dict(zip(st.outputs, run_module(tiled, list(inputs.values()))))
    row["err_interp"] = worst({k: normalised_error(tile_out[k], tensor_out[k]) for k in st.outputs})
    if stage.startswith("decode_"):
        row["err_ref"] = f"{layer_reference_error(stage, config, small['batch']):.2e}"
    elif stage in ("qkv_proj_rope", "sparse_attn_core", "sparse_attn"):
        ref = reference_outputs(stage, inputs, cfg)
        row["err_ref"] = worst({k: normalised_error(tile_out[k].float(), ref[k].float()) for k in st.outputs})
    else:  # one step from arbitrary state: checked through the layers, whose history is real
        row["err_ref"] = "in layer"

    row["sim_err"], row["aicore_us"], row["sim_verify"] = "n/a", "n/a", "n/a"
    if with_sim:
        try:
            from attnc.codegen.pypto.target import run_pypto_sim

            scfg = resolve_config(sim_config, {"max_pos": 256} if sim_config == "tiny" else None)
            sim_inputs = make_inputs(st, scfg, seed)
            sim_module = build_stage(st, scfg)
            run_pipeline(sim_module, PYPTO_PIPELINE)
            # the program is the compiled IR: compare it with the interpreter of that same IR
            want = dict(zip(st.outputs, run_module(sim_module, list(sim_inputs.values()))))
            res = run_pypto_sim(sim_module, sim_inputs, on_phase=lambda text: status(f"{stage}: pypto SIM: {text}"))
            row["sim_err"] = worst({k: normalised_error(res.outputs[k], want[k]) for k in st.outputs})
            row["aicore_us"] = f"{res.aicore_us:.2f}" if res.aicore_us is not None else "n/a"
            row["sim_verify"] = f"{len(res.verify) - len(res.failed_records)}/{len(res.verify)} pass"
        except Exception as e:  # report, don't hide: the table says why SIM did not run
            row["sim_err"] = f"error: {str(e).splitlines()[0][:60]}"
    return row


COLUMNS = [("stage", "stage"), ("passes", "passes"), ("compile_s", "compile s"), ("err_interp", "tile vs interp"),
           ("err_ref", "vs FP32 ref"), ("verify_failed", "verify FAILED"), ("sim_err", "pypto SIM vs interp"),
           ("sim_verify", "SIM pass-verify"), ("aicore_us", "AICore us")]


def markdown_table(title: str, cells: list[list[str]], command: str) -> str:
    """The table `make run` prints, as Markdown (docs/main-job.md is written by this, never by hand)."""
    lines = ["# Main job (`make run`)", "",
             f"Generated by `{command}` (what `make run` runs, plus `--markdown`); do not edit by hand.", "",
             title + ".", "",
             "| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="flash")
    ap.add_argument("--batch", type=int, default=2, help="batch for the numeric checks at the config's head sizes")
    ap.add_argument("--sim-config", default="tiny", help="config of the pypto SIM run (small shape)")
    ap.add_argument("--no-sim", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown (docs/main-job.md)")
    args = ap.parse_args(argv)
    from attnc.progress import Progress

    rows = []
    with Progress(len(STAGE_ORDER), "make run") as bar:  # on a terminal only
        bar.tick_every(1.0)
        for s in STAGE_ORDER:
            rows.append(check_stage(s, args.config, {"batch": args.batch}, args.sim_config, args.seed,
                                    not args.no_sim, status=lambda text: bar.describe(f"make run: {text}")))
            bar.advance()
    cells = [[(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k])) for k, _ in COLUMNS] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(COLUMNS)]
    title = (f"config {args.config}: compile at batch={resolve_config(args.config)['batch']}, numerics at batch="
             f"{args.batch}, pypto SIM at config {args.sim_config}; errors are max|a-b|/max|b|")
    print(title)
    print("  ".join(h.ljust(w) for (_, h), w in zip(COLUMNS, widths)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown_table(title, cells, " ".join(["python benchmarks/main_job.py", *(argv or sys.argv[1:])])))
    bad = [r["stage"] for r in rows if r["verify_failed"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
