"""Differential shape matrix (issue 18): every stage and layer kind (`attnc list`) x layout {dense, packed, paged}
where the stage exists x batch {1, 2, 3} x seq {1, 2, 3, 4, 5, 16}, at `tiny` (max_pos 256).

Each cell draws, from its key and the matrix seed, one start position per batch row from the boundaries
(0, window - 1, window, a position where a compressed block completes inside the step for m = 4 and for m = 128,
the last position before max_pos) and an input seed; both are recorded. Per cell, on the module the pypto
pipeline compiles:
- ref:   the interpreter against the independent FP32 reference (tests/reference/, tolerance 3e-2 as
         tests/test_stages_vs_reference.py and tests/test_layers_vs_reference.py) where one exists for the cell;
- order: where the stage takes a pick list `cmp_idx`: the interpreter on every row's list permuted (padding -1
         anywhere) against the reference (or the unpermuted run), same tolerance;
- sim:   the pypto SIM run against the interpreter (`attnc.sim_check`, the check of `attnc run
         --target pypto-sim`), every verify record excused by its cause or the cell fails.
A cell is `passed`, `refused` (the compiler or the config refuses the shape: one line) or `failed` (with reason).

    .venv/bin/python benchmarks/sim_matrix.py [--out sim_matrix.jsonl] [--resume] [--only GLOB] [--jobs 1]
                                              [--no-sim] [--seed 0] [--quant w8a8] [--table]

`--quant w8a8` runs the stages and layer kinds with a quantisable projection (`quant=w8a8`: i8 weights with their
per-channel scales, quantize-w8a8 in the pipeline); their keys end in `|w8a8`, the FP32 reference is given the
dequantised weights (i8 x scale) and the tolerance against it is the quantize-w8a8 pass's declared one.

Results are appended to the JSONL file, one line per cell keyed by `key` (`stage|layout|bB|sS`); `--resume` skips
the cells already there, so an interrupted run continues where it stopped. `--only` takes fnmatch globs over keys
(repeatable). SIM runs go one at a time unless --jobs says otherwise (each is a child process of ~1-3 GB). The
full matrix (414 cells) takes hours on 2 cores; the table at the end counts passed, refused (by reason) and
failed cells."""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

BATCHES = (1, 2, 3)
SEQS = (1, 2, 3, 4, 5, 16)
MAX_POS = 256
START_KINDS = ("0", "W-1", "W", "m4", "m128", "last")
TOLERANCE = 3e-2  # bf16 outputs vs the FP32 reference (tests/test_stages_vs_reference.py, test_layers_...)
SIM_TIMEOUT_S = 900


def tolerance(quant: str) -> float:
    """Against the FP32 reference: the bf16 one, or for W8A8 the quantize-w8a8 pass's declared tolerance."""
    if quant == "none":
        return TOLERANCE
    from attnc.passes import pass_class

    return pass_class("quantize-w8a8").tolerance


@dataclass(frozen=True)
class Cell:
    stage: str
    layout: str  # dense | packed | paged (paged: the decode_*_paged stages)
    batch: int
    seq: int
    quant: str = "none"  # none | w8a8

    @property
    def key(self) -> str:
        key = f"{self.stage}|{self.layout}|b{self.batch}|s{self.seq}"
        return key if self.quant == "none" else f"{key}|{self.quant}"


def project_stages() -> list[str]:
    """The project's own stages (kernels_src), not plugin stages a process may have loaded from a FILE.py."""
    from attnc.kernels_src import STAGES

    return [name for name, st in STAGES.items() if st.fn.__module__.startswith("attnc.kernels_src")]


def cells(quant: str = "none") -> list[Cell]:
    """Every cell of the matrix: each project stage in each layout it exists in (with `quant`, the stages that
    have a quantisable projection)."""
    from attnc.kernels_src import STAGES

    out = []
    for name in project_stages():
        if quant != "none" and not any(p.quantizable for p in STAGES[name].params.values()):
            continue
        layouts = ("paged",) if name.endswith("_paged") else ("dense", "packed")
        out += [Cell(name, lay, b, s, quant) for lay in layouts for b in BATCHES for s in SEQS]
    return out


def sample(matrix_seed: int = 0, batch: int = 1) -> list[Cell]:
    """One cell per stage and layout at `batch`, its seq drawn from SEQS by the matrix seed (the default suite's
    sample: every stage, layout and batch = 1 at least once)."""
    out, seen = [], set()
    for c in cells():
        if (c.stage, c.layout) in seen:
            continue
        seen.add((c.stage, c.layout))
        seq = SEQS[_draw(f"{c.stage}|{c.layout}|sample", matrix_seed) % len(SEQS)]
        out.append(Cell(c.stage, c.layout, batch, seq))
    return out


def _draw(key: str, matrix_seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{matrix_seed}:{key}".encode()).digest()[:8], "little")


def start_position(kind: str, seq: int, window: int, max_pos: int = MAX_POS) -> int:
    """The boundary position of `kind` for a step of `seq` tokens."""
    if kind == "0":
        return 0
    if kind in ("W-1", "W"):
        p = window - 1 if kind == "W-1" else window
    elif kind in ("m4", "m128"):  # the block's last position m - 1 lies inside [p, p + seq)
        m = 4 if kind == "m4" else 128
        p = max(0, m - 1 - (seq - 1) // 2)
    else:  # "last": the step's last token at max_pos - 1
        p = max_pos - seq
    return min(p, max_pos - seq)


def draw_starts(cell: Cell, matrix_seed: int, window: int) -> tuple[list[str], list[int], int]:
    """(start kind per row, start position per row, input seed) drawn from the cell's key."""
    h = _draw(cell.key, matrix_seed)
    kinds = []
    for _ in range(cell.batch):
        kinds.append(START_KINDS[h % len(START_KINDS)])
        h //= len(START_KINDS)
    return kinds, [start_position(k, cell.seq, window) for k in kinds], h % 1000


def overrides(cell: Cell) -> dict:
    o = {"batch": cell.batch, "seq": cell.seq, "max_pos": MAX_POS, "n_cmp": MAX_POS // 4, "cmp_topk": 8,
         "quant": cell.quant}
    if cell.layout == "packed":
        o.update(layout="packed", tokens=cell.batch * cell.seq)
    return o


@dataclass
class Result:
    key: str
    stage: str
    layout: str
    batch: int
    seq: int
    matrix_seed: int
    start_kinds: list = field(default_factory=list)
    start_pos: list = field(default_factory=list)
    seed: int = 0
    status: str = "failed"  # passed | refused | failed
    reason: str = ""
    ref: dict = field(default_factory=dict)
    order: dict = field(default_factory=dict)
    sim: dict = field(default_factory=dict)
    seconds: float = 0.0


def _line(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:300]


def _refusals() -> tuple[type[BaseException], ...]:
    from attnc.codegen.pypto.emit import EmitError
    from attnc.ir import IRError
    from attnc.ir.dsl import DSLError
    from attnc.kernels_src.configs import ConfigError
    from attnc.passes import PassError, PipelineError

    return ConfigError, PassError, PipelineError, EmitError, DSLError, IRError


def _error(got, want, layer: bool) -> float:
    """normalised_error for a stage's outputs; the relative norm error for a layer's `out` (the metrics and the
    tolerance of tests/test_stages_vs_reference.py and tests/test_layers_vs_reference.py)."""
    from attnc.passes.verify import normalised_error

    if layer:
        g, w = got.float(), want.float()
        return float((g - w).norm() / w.norm().clamp_min(1e-30))
    return normalised_error(got.float(), want.float())


def _reference(cell: Cell, cfg: dict, st, names, inputs):
    """(reference function or None, why none)."""
    from attnc.fp32_reference import fp32_reference

    if cell.layout != "dense":
        return None, f"the FP32 reference reads the dense layout (the {cell.layout} one equals it bit for bit in " \
                     f"tests/test_{'packed' if cell.layout == 'packed' else 'paged'}.py)"
    state = [n for n in st.outputs if n in names]
    return fp32_reference(cell.stage, cfg, state, inputs.get("start_pos"))


def _permuted_picks(cmp_idx, seed: int):
    """Every row's pick list in another order (padding -1 moved anywhere), seeded."""
    import torch

    gen = torch.Generator().manual_seed(seed + 7)
    flat = cmp_idx.reshape(-1, cmp_idx.shape[-1]).clone()
    for r in range(flat.shape[0]):
        flat[r] = flat[r][torch.randperm(flat.shape[1], generator=gen)]
    return flat.reshape(cmp_idx.shape)


def _layer_history(cell: Cell, st, names, start_pos, seed):
    """A dense layer step after its history (tests/layer_harness.py: the layer's own tensor-level steps from
    position 0 over one fixed token sequence per row), so the FP32 layer reference, which recomputes everything
    from token rows, applies at any start position: (driver, the step's inputs)."""
    import torch

    from tests.layer_harness import LayerDriver

    kind = cell.stage.removeprefix("decode_")
    d = LayerDriver(kind, batch=cell.batch, length=MAX_POS, seed=seed,
                    overrides=(("n_cmp", MAX_POS // 4), ("cmp_topk", 8), ("quant", cell.quant)))
    state = d.history(list(start_pos))
    x = torch.stack([d.x_hist[b, p:p + cell.seq] for b, p in enumerate(start_pos)])
    args = dict(d.weights, **state, x=x, start_pos=torch.tensor(start_pos, dtype=torch.int32), rope_cos=d.cos,
                rope_sin=d.sin)
    return d, {n: args[n] for n in names}


def _layer_reference(d, start_pos, seq: int, outs: dict):
    """The layer reference of the step (CSA: on the kernel's own picks, judged by their own check)."""
    from attnc.fp32_reference import dequantized
    from tests.reference.dsv4_layer_reference import layer_reference

    def ref(inputs: dict) -> dict:
        selection = None
        if "cmp_idx" in outs:
            selection = {(b, s): [int(i) for i in outs["cmp_idx"][b, s] if int(i) >= 0]
                         for b in range(len(start_pos)) for s in range(seq)}
        y = layer_reference(d.kind, d.cfg, dequantized(d.reference_weights()), d.x_hist.float(), list(start_pos),
                            seq, selection=selection)
        return {"out": y["y"]}

    return ref


def run_cell(cell: Cell, matrix_seed: int = 0, sim: bool = True, timeout_s: float = SIM_TIMEOUT_S,
             history: bool = True) -> Result:
    """One cell. `history`: a dense layer at a start position > 0 runs after its own history (reference at every
    start); without it the state is seeded and the layer reference applies only at position 0."""
    import torch

    from attnc.ir.dsl import stage_config, stage_params
    from attnc.ir.interpreter import run_module
    from attnc.kernels_src import STAGES, build_stage, resolve_config
    from attnc.kernels_src.inputs import make_inputs
    from attnc.passes import PYPTO_PIPELINE
    from attnc.passes.verify import run_pipeline

    t0 = time.perf_counter()
    st = STAGES[cell.stage]
    res = Result(cell.key, cell.stage, cell.layout, cell.batch, cell.seq, matrix_seed)

    def done(status: str, reason: str = "") -> Result:
        res.status, res.reason, res.seconds = status, reason, round(time.perf_counter() - t0, 2)
        return res

    try:
        cfg = resolve_config("tiny", overrides(cell))
        why = st.needs(cfg)
        if why:
            return done("refused", f"config: {why}")
        scfg = stage_config(st, cfg)
        res.start_kinds, res.start_pos, res.seed = draw_starts(cell, matrix_seed, scfg["window"])
        res.start_pos = [min(p, scfg["max_pos"] - cell.seq) for p in res.start_pos]
        module = build_stage(st, cfg)
        run_pipeline(module, PYPTO_PIPELINE)
        program = None
        if sim:
            from attnc.codegen.pypto.emit import emit_pypto

            program = emit_pypto(module)
    except _refusals() as e:
        return done("refused", f"compile: {_line(e)}")
    names = list(stage_params(st, cfg))
    given = {"start_pos": torch.tensor(res.start_pos, dtype=torch.int32)}
    if cell.layout == "packed":
        given["cu_seqlens"] = torch.arange(0, cell.batch * cell.seq + 1, cell.seq, dtype=torch.int32)
    driver = None
    try:
        if history and cell.layout == "dense" and cell.stage.startswith("decode_") and any(res.start_pos):
            driver, inputs = _layer_history(cell, st, names, res.start_pos, res.seed)
        else:
            inputs = make_inputs(st, cfg, res.seed, given)
    except Exception as e:  # noqa: BLE001 - a refused input is the harness's bug here: report it
        return done("failed", f"inputs: {_line(e)}")
    failures, tol = [], tolerance(cell.quant)
    outs = dict(zip(st.outputs, run_module(module, list(inputs.values()))))
    layer = cell.stage.startswith("decode_")
    if driver is not None:  # the step after its history: the whole-layer reference from the token rows
        ref_fn, why = _layer_reference(driver, res.start_pos, cell.seq, outs), ""
    else:
        ref_fn, why = _reference(cell, scfg, st, names, inputs)
    if ref_fn is None:
        res.ref = {"status": "n/a", "note": why.split(":")[0][:160]}
    else:
        ref = ref_fn(inputs)
        errs = {n: _error(outs[n], ref[n], layer) for n in ref}
        bad = {n: e for n, e in errs.items() if not e <= tol}
        res.ref = {"status": "failed" if bad else "ok", "errors": {n: round(e, 6) for n, e in errs.items()},
                   "tolerance": tol}
        if bad:
            n, e = next(iter(bad.items()))
            failures.append(f"ref: {n} error {e:.3g} > {tol:g} vs the FP32 reference")
    if "cmp_idx" in inputs:
        perm_inputs = dict(inputs, cmp_idx=_permuted_picks(inputs["cmp_idx"], res.seed))
        perm = dict(zip(st.outputs, run_module(module, list(perm_inputs.values()))))
        want = ref_fn(perm_inputs) if ref_fn is not None else outs
        errs = {n: _error(perm[n], want[n], layer) for n in want if n in perm}
        bad = {n: e for n, e in errs.items() if not e <= tol}
        res.order = {"status": "failed" if bad else "ok", "against": "reference" if ref_fn else "unpermuted",
                     "errors": {n: round(e, 6) for n, e in errs.items()}}
        if bad:
            n, e = next(iter(bad.items()))
            failures.append(f"order: permuted cmp_idx gives {n} error {e:.3g} > {tol:g} vs the "
                            f"{res.order['against']}")
    if sim:
        failures += _sim(cell, module, inputs, program, res, timeout_s)
    return done("failed", "; ".join(failures)) if failures else done("passed")


def _sim(cell: Cell, module, inputs: dict, program: str, res: Result, timeout_s: float) -> list[str]:
    from attnc.codegen.pypto.sim import PyptoSimError
    from attnc.codegen.pypto.target import describe, run_pypto_sim, unexcused
    from attnc.sim_check import check_outputs
    from attnc.kernels_src import STAGES

    try:
        run = run_pypto_sim(module, inputs, timeout_s=timeout_s)
    except PyptoSimError as e:
        res.sim = {"status": "failed", "note": _line(e)}
        return [f"sim: {_line(e)}"]
    res.sim = {"wall_s": round(run.wall_s, 2), "records": len(run.verify), "failed_records": len(run.failed_records)}
    if not run.verify:  # the run's plog was lost (its run folder removed): nothing was verified
        res.sim.update(status="failed", note="no per-pass verify records")
        return ["sim: no per-pass verify records (pypto's log of the run is missing)"]
    bad = unexcused(run)
    if bad:
        res.sim.update(status="failed", note=describe(bad[0], run.program))
        return [f"sim: {len(bad)} verify record(s) with no known cause (first: {describe(bad[0], run.program)})"]
    check = check_outputs(module, inputs, run.outputs, STAGES[cell.stage].outputs)
    res.sim["outputs"] = {o.name: [None if o.error is None else round(o.error, 6), o.differing, o.verdict]
                          for o in check.outputs}
    if not check.ok:
        res.sim.update(status="failed", note=check.failures[0])
        return [f"sim: {check.failures[0]} vs the interpreter"]
    res.sim["status"] = "ok"
    return []


def load(path: str) -> dict:
    """{key: result dict} of a results file (the last line of a key wins)."""
    found = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    found[r["key"]] = r
    return found


def table(results: list[dict]) -> list[str]:
    """The summary: cells, passed, refused by reason, failed with reason."""
    status = Counter(r["status"] for r in results)
    lines = [f"cells {len(results)}  passed {status['passed']}  refused {status['refused']}  failed {status['failed']}"]
    refused = Counter(r["reason"] for r in results if r["status"] == "refused")
    for why, n in refused.most_common():
        lines.append(f"  refused {n:>3}: {why}")
    for r in results:
        if r["status"] == "failed":
            lines.append(f"  FAILED {r['key']} start {r.get('start_pos')} seed {r.get('seed')}: {r['reason'][:240]}")
    by_stage = Counter((r["stage"], r["layout"], r["status"]) for r in results)
    lines.append("  by stage/layout: " + ", ".join(
        f"{s}/{lay} {by_stage[(s, lay, 'passed')]}p/{by_stage[(s, lay, 'refused')]}r/{by_stage[(s, lay, 'failed')]}f"
        for s, lay in dict.fromkeys((r["stage"], r["layout"]) for r in results)))
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="sim_matrix.jsonl", help="results file (JSONL, one line per cell)")
    ap.add_argument("--resume", action="store_true", help="skip the cells already in --out (else it is rewritten)")
    ap.add_argument("--only", action="append", default=[], metavar="GLOB",
                    help="only cells whose key (stage|layout|bB|sS[|quant]) matches (repeatable)")
    ap.add_argument("--jobs", type=int, default=1, help="cells at a time (each SIM run is a child process)")
    ap.add_argument("--no-sim", action="store_true", help="interpreter-level checks only (ref, order)")
    ap.add_argument("--seed", type=int, default=0, help="matrix seed: draws each cell's start positions and seed")
    ap.add_argument("--timeout", type=float, default=SIM_TIMEOUT_S, help="SIM timeout per cell, seconds")
    ap.add_argument("--quant", choices=("none", "w8a8"), default="none",
                    help="w8a8: the stages with a quantisable projection, quantised (keys end in |w8a8)")
    ap.add_argument("--table", action="store_true", help="print the table of --out and exit")
    ap.add_argument("--no-history", action="store_true",
                    help="dense layers: seeded state instead of the step's history (no reference past position 0)")
    args = ap.parse_args(argv)
    if args.table:
        for line in table(list(load(args.out).values())):
            print(line)
        return 0
    todo = [c for c in cells(args.quant) if not args.only or any(fnmatch.fnmatch(c.key, g) for g in args.only)]
    if args.resume:
        have = load(args.out)
        todo = [c for c in todo if c.key not in have]
    elif os.path.exists(args.out):
        os.remove(args.out)
    print(f"{len(todo)} cells to run", file=sys.stderr)

    def record(r: Result) -> None:
        with open(args.out, "a") as f:
            f.write(json.dumps(asdict(r)) + "\n")
        print(f"{r.status:<8} {r.key:<34} start {r.start_pos} seed {r.seed} {r.seconds:6.1f}s {r.reason[:160]}",
              file=sys.stderr, flush=True)

    def one(c: Cell) -> Result:
        try:
            return run_cell(c, args.seed, sim=not args.no_sim, timeout_s=args.timeout, history=not args.no_history)
        except Exception as e:  # noqa: BLE001 - an unexpected error is a failed cell, the matrix goes on
            return Result(c.key, c.stage, c.layout, c.batch, c.seq, args.seed,
                          reason=f"internal: {type(e).__name__}: {_line(e)}")

    if args.jobs > 1:
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(args.jobs) as pool:
            for r in pool.map(one, todo):
                record(r)
    else:
        for c in todo:
            record(one(c))
    results = list(load(args.out).values())
    if args.only:
        results = [r for r in results if any(fnmatch.fnmatch(r["key"], g) for g in args.only)]
    for line in table(results):
        print(line)
    return 1 if any(r["status"] == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
