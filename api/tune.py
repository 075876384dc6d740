"""`attnc tune`: search pass options, emitter tiles and pypto scheduling options for one stage by its simulated
AICore time in pypto 0.2.0's cost model, and write a tuning file that `attnc compile/run --tuning FILE` applies.

How a tune runs:
1. The search space (`SPACE`) has pass-option dimensions (only for passes in the pipeline) and `PyptoOptions`
   dimensions; `--space NAME=V1|V2` narrows or replaces one. The default candidate (the pipeline's own options and
   `PyptoOptions()`) is always the first one timed.
2. Each candidate is compiled here (cheap), statically filtered (`static_check`: a vector op's tile, inputs and
   result together, must fit UB), emitted, and looked up in the content-addressed cache. Only programs not seen
   before are timed: in SIM with `verify="none"` in a child process with a timeout, on a local process pool
   (`--jobs`) or on a Ray cluster (`--ray ADDRESS|auto`, optional extra `attnc[ray]`). A crash, a timeout or a
   failed compile disqualifies the candidate; the search goes on. `--budget N` caps the number of distinct programs timed
   (a cached timing counts but costs no SIM run, so repeating a tune costs nothing and a larger budget resumes it).
3. Sampler: exhaustive when the space has at most `budget` points, else optuna's TPE (seeded: same tune, same
   order), which first gets the default's one-dimension neighbours for up to half the budget (small budgets).
4. The best candidates are re-checked in SIM with pypto's pass verify at a small batch of the same config
   (`--recheck-batch`, default 2) against attnc's interpreter on the same compiled IR: integers bit for bit,
   floats within `recheck_limit` of the largest value (bf16: one rounding step — pypto sums f32 products in
   its own order, so even the default is not bit-exact at the flash shape; at `tiny` it is); a candidate may not
   fail more pypto verify records than the default does there. Top-k picks (an output that carries a `topk` op's
   result) are compared tie-aware (`compare_with_interpreter`): row by row they must be a top-k of the
   interpreter's own scores up to near-ties (same valid count and padding, visible distinct ids; set and order
   may differ only between entries within `attnc.ir.topk.TIE_EPS` of the row's score scale of the k-th score /
   of each other), and every output is then compared with the interpreter re-run on the device's picks (a
   top-k resolver substitutes them), so a legitimately different member does not fail `out`. The tuning file records the error and how many
   values differ. The first that passes is written; if none passes, nothing is written. `--recheck-verify
   tensor-graph` drops pypto's per-pass records (the outputs compared are the tensor graph's either way): a whole
   flash layer's re-check at B=2 with the records outgrew this shared 23 GB machine (decode_swa: > 8.4 GB and
   > 13 min when stopped).

Cache: one JSON file per timing under `~/.cache/attnc/tune` (or `$ATTNC_TUNE_CACHE`), named by the sha256 of the
emitted program (the IR and the options as pypto sees them), the SIM harness, the pypto version, the verify mode
and the input seed. Timeouts are not cached (they depend on the machine's load).

Tuning file (JSON, `"attnc_tuning": 1`): `stage`, `config`, `set` (the tune's overrides), `pipeline` (the pass
pipeline string to compile with), `pypto_options` (every `PyptoOptions` field), `aicore_us` and
`default_aicore_us` (at the tuned shape), `recheck` (batch, max normalised error, failed verify records; with
top-k outputs `topk_ties`: picks compared, how many differ from the interpreter's and were accepted as near-ties,
how many of them are other members at the cut, the largest accepted gap / scale, the band eps), `trials`
(every candidate: parameters, status, µs), `evaluated` (programs with a timing), `sim_trials` (SIM runs this tune
started), `wall_s`, `pypto_version`. `--tuning FILE` uses
`pipeline` (unless `--pipeline` is given) and `pypto_options` (`--pypto-option` still overrides single keys); the
file's stage must be the stage compiled.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import itertools
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from attnc.codegen.pypto.tiles import UB_BYTES
from attnc.errors import AttncError

TUNING_FORMAT = 1
SIM_VERIFY = "none"
RECHECK_VERIFY = "default"
# the re-check's verify modes: with pypto's per-pass verify records (default), or the tensor graph only -- the
# outputs the re-check compares bit for bit come from the tensor graph's interpretation either way
RECHECK_VERIFY_MODES = ("default", "tensor-graph")


# the re-check's limits and comparison are the ones `attnc run --target pypto-sim` checks every run with
from attnc.sim_check import RECHECK_TOLERANCE, recheck_limit  # noqa: E402,F401

# pass options the tuner varies (only for passes present in the pipeline): (pass, option) -> values
PASS_SPACE = {
    ("tile-softmax", "kv-tile"): (64, 128, 256),
    ("parallelize-tokens", "rows"): (16, 32, 64),
    # projection loops (token rows times a weight): one chunk per step of up to 128 tokens reads each weight once
    ("parallelize-tokens", "weight-rows"): (0, 32, 64, 128),
    ("parallelize-tokens", "weight-vec-tile"): (0, 8192, 16384),
    ("tile-matmul", "k"): (512, 2048, 4096),
    ("tile-matmul", "tasks"): (1, 24, 48),  # 24 cube cores in the cost model
    ("tile-matmul", "rule"): ("fixed", "cost"),  # cost: K chunks and N tile per matmul by its estimate
    ("tile-matmul", "merge"): (1, 2),  # rule=cost: same-structure tiles the target runs as one task
    ("schedule-compressor", "pool-rows"): (4, 8, 32),
    ("schedule-compressor", "chunk-rows"): (8, 16, 128),
    ("schedule-attention", "schedule"): ("auto", "batch", "token"),
    ("schedule-attention", "vec-tile"): (8192, 16384),
}
# PyptoOptions fields the tuner varies; dict-valued settings as Python literals (optuna wants plain values).
# The sets come from the hand-written kernels' choices (shared notes §3) and their neighbours.
PYPTO_SPACE = {
    "vec_tile_elems": (4096, 8192, 16384),
    "vec_nbuffer_setting": ("{}", "{-1: 2}", "{-1: 4}", "{-1: 8}", "{-1: 16}"),  # 8/16: CSA core 250.2 -> 240.9
    "cube_nbuffer_setting": ("{}", "{1: 2}", "{-1: 2}", "{-1: 4}", "{-1: 8}"),
    "cube_l1_reuse_setting": ("{}", "{0: 4}", "{-1: 3}", "{-1: 2, 0: 8}"),
    "stitch_function_max_num": (32, 128),
    "device_sched_mode": (0, 1),
    "combine_axis": (False, True),
}


class TuneError(AttncError):
    """Bad tune input or a tune that cannot produce a file; one line."""


# -------------------------------------------------------------------------------------------------- space


@dataclass(frozen=True)
class Dim:
    name: str  # "tile-softmax.kv-tile" for a pass option, the PyptoOptions field otherwise
    values: tuple
    default: object
    pass_name: str | None = None
    option: str | None = None
    baseline: object = None  # the true default (pass or PyptoOptions default), also when --space narrows it away


def _pass_specs(pipeline: str):
    from xdsl.utils.arg_spec import parse_pipeline

    from attnc.passes import build_pipeline

    build_pipeline(pipeline)  # validates (PipelineError on bad text)
    return list(parse_pipeline(pipeline))


def _pass_default(pass_name: str, option: str):
    from dataclasses import fields

    from attnc.passes import pass_class

    for f in fields(pass_class(pass_name)):
        if f.name == option.replace("-", "_"):
            return f.default
    raise TuneError(f"pass {pass_name} has no option {option}")


def _literal_text(value) -> object:
    """Dict settings travel as their literal text (sorted keys), everything else as itself."""
    return repr(dict(sorted(value.items()))) if isinstance(value, dict) else value


def build_space(pipeline: str, narrow: list[str] | None = None) -> list[Dim]:
    """The dimensions for `pipeline`; `narrow` entries `NAME=V1|V2|...` replace a dimension's values (Python
    literals; a dimension narrowed to one value is fixed). The default value is always kept first."""
    import ast

    from attnc.codegen.pypto.options import PyptoOptions

    specs = {s.name: s for s in _pass_specs(pipeline)}
    dims = []
    for (pname, opt), values in PASS_SPACE.items():
        if pname not in specs:
            continue
        given = specs[pname].parameters.get(opt)
        default = given[0] if given else _pass_default(pname, opt)
        dims.append(Dim(f"{pname}.{opt}", tuple(values), default, pname, opt))
    base = PyptoOptions()
    for name, values in PYPTO_SPACE.items():
        dims.append(Dim(name, tuple(values), _literal_text(getattr(base, name))))
    by_name = {d.name: d for d in dims}
    for item in narrow or []:
        if "=" not in item:
            raise TuneError(f"--space '{item}': expected NAME=V1|V2|...")
        name, text = (s.strip() for s in item.split("=", 1))
        if name not in by_name:
            raise TuneError(f"--space: unknown dimension '{name}' (known: {', '.join(by_name)})")
        values = []
        for part in text.split("|"):
            try:
                v = ast.literal_eval(part.strip())
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                v = part.strip()  # bare words (schedule names)
            values.append(_literal_text(v))
        d = by_name[name]
        wrong = [v for v in values if type(v) is not type(d.default)]
        if wrong:
            from attnc.provenance import printable

            raise TuneError(f"--space {name}: {printable(repr(wrong[0]))[:40]} is not of type "
                            f"{type(d.default).__name__} (the default is {d.default!r})")
        start = d.default if d.default in values else values[0]
        by_name[name] = Dim(d.name, tuple(values), start, d.pass_name, d.option,
                            d.default if d.baseline is None else d.baseline)
    out = []
    for d in by_name.values():  # the search's start first, no duplicates
        vals = (d.default, *[v for v in d.values if v != d.default])
        out.append(Dim(d.name, tuple(dict.fromkeys(vals)), d.default, d.pass_name, d.option,
                       d.default if d.baseline is None else d.baseline))
    return out


def space_size(dims: list[Dim]) -> int:
    return math.prod(len(d.values) for d in dims)


def default_params(dims: list[Dim]) -> dict:
    """Where the search starts: every dimension's default, or its first value when --space narrowed it away."""
    return {d.name: d.default for d in dims}


def baseline_params(dims: list[Dim]) -> dict:
    """The true all-defaults candidate (what compile/run use without a tuning file): always timed, named default."""
    return {d.name: d.baseline for d in dims}


def candidate_pipeline(pipeline: str, dims: list[Dim], params: dict) -> str:
    """`pipeline` with the candidate's pass options set (other passes and options unchanged)."""
    parts = []
    for spec in _pass_specs(pipeline):
        opts = {k: v[0] if len(v) == 1 else v for k, v in spec.parameters.items()}
        for d in dims:
            if d.pass_name == spec.name:
                opts[d.option] = params[d.name]
        if opts:
            parts.append(spec.name + "{" + " ".join(f"{k}={v}" for k, v in sorted(opts.items())) + "}")
        else:
            parts.append(spec.name)
    return ",".join(parts)


def candidate_options(dims: list[Dim], params: dict):
    from attnc.codegen.pypto.options import PyptoOptions

    return PyptoOptions().with_settings({d.name: _value(params[d.name]) for d in dims if d.pass_name is None})


def _value(v):
    import ast

    return ast.literal_eval(v) if isinstance(v, str) and v.startswith("{") else v


# -------------------------------------------------------------------------------------------------- static filter


def static_check(module, options) -> str | None:
    """None if every vector op's tile fits, else the reason. Per op, the emitter's vector tile (for the budget
    `options.vec_tile_elems`, or the one a pass set on the op's loop; pypto-legalize's `vec_tile` where it stated
    one, by the same rule's `live_bytes`) times the element bytes of the result and every tensor operand must fit UB (192
    KiB): pypto 0.2.0 keeps an op's inputs and output in UB together (16384-element tiles overflowed it at the
    flash shape before the attention schedule). Cube tiles are chosen by the emitter within L0A/L0B/L0C with
    kL1 % kL0 == 0 (`cube_tile`), so the tuner does not vary them."""
    need, where = largest_vector_tile(module, options.vec_tile_elems)
    if need > UB_BYTES:
        return f"{where} = {need // 1024} KiB > UB {UB_BYTES // 1024} KiB"
    return None


def largest_vector_tile(module, budget: int) -> tuple[int, str]:
    """(bytes, description) of the op whose vector tile with its operands needs the most UB. `budget` applies
    outside loops whose pass chose their own (`vec_tile_elems` on a tile.parallel), as in the emitter."""
    from xdsl.dialects.builtin import TensorType

    from attnc.codegen.pypto.emit import _BYTES, vec_tile
    from attnc.codegen.pypto.legalize import loop_budget, op_tile_operands
    from attnc.codegen.pypto.tiles import live_bytes
    from attnc.ir.common import op_location
    from attnc.ir.types import dtype_of, shape_of

    worst, where = 0, ""
    for op in module.walk():
        if op.name in ("tile.matmul", "tile.matmul_acc", "attn.matmul"):
            continue  # cube tiles
        if op.regions:  # a loop (tile.parallel, scf.for) is no vector op: it copies what it captures one by one
            continue
        results = [r for r in op.results if isinstance(r.type, TensorType)]
        if not results:
            continue
        tensors = results + [o for o in op.operands if isinstance(o.type, TensorType)]
        if "vec_tile" in op.attributes:  # pypto-legalize's per-op rule: its tile and live tiles (tiles.py)
            tile = [a.value.data for a in op.attributes["vec_tile"].data]
            found = op_tile_operands(op)  # None for ops tiled by another rule (a matmul's reader tiles)
            need = live_bytes(tile, found[1] if found else [(shape_of(t.type), dtype_of(t.type)) for t in tensors])
            if need > worst:
                worst, where = need, f"{op.name} at {op_location(op)}: stated tile {tile} x {len(tensors)} tensors"
            continue
        op_budget = loop_budget(op, budget)
        tile = vec_tile(shape_of(results[0].type), dtype_of(results[0].type), op_budget)
        need = 0
        for t in tensors:  # an operand's tile is the op's tile clipped to its shape ([R, 1] row operands)
            own = vec_tile(shape_of(t.type), dtype_of(t.type), op_budget)
            elems = math.prod(map(min, tile, own)) if len(own) == len(tile) else math.prod(own)
            need += elems * _BYTES.get(dtype_of(t.type), 4)
        if need > worst:
            worst, where = need, f"{op.name} at {op_location(op)}: tile {tile} x {len(tensors)} tensors"
    return worst, where


# -------------------------------------------------------------------------------------------------- cache


def pypto_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pypto")
    except PackageNotFoundError:
        return "absent"


def _harness_digest() -> str:
    from attnc.codegen.pypto.sim import RUNNER

    return hashlib.sha256(RUNNER.read_bytes()).hexdigest()[:16]


def cache_key(program: str, verify: str, seed: int) -> str:
    h = hashlib.sha256()
    for part in (program, verify, str(seed), pypto_version(), _harness_digest()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


CACHE_FORMAT = 2
# a child ended by one of these was stopped from outside (the OOM killer, a Ctrl-C, a shutdown): a transient
# failure, never cached; SIGSEGV, SIGABRT, SIGBUS, SIGFPE are the program's own crash, a verdict
TRANSIENT_SIGNALS = ("SIGKILL", "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
MAX_RETRIES = 1  # a transient failure (killed child, dead worker) is run again once, never cached
MAX_CACHE_ENTRY_BYTES = 1 << 20


def _record_digest(key: str, value: dict) -> str:
    return hashlib.sha256(json.dumps({"key": key, "value": value}, sort_keys=True).encode()).hexdigest()


def is_timing_verdict(value) -> bool:
    """A cached SIM timing: a completed time, or a deterministic failure (never a timeout or a killed child)."""
    if not isinstance(value, dict) or value.get("timeout") is not False or value.get("transient"):
        return False
    us, error = value.get("aicore_us"), value.get("error")
    if us is None:
        return isinstance(error, str) and bool(error)
    return (isinstance(us, float) and math.isfinite(us) and us > 0 and error is None
            and isinstance(value.get("failed_records", 0), int))


def is_recheck_verdict(value) -> bool:
    """A cached re-check: a comparison that ran to its end."""
    return (isinstance(value, dict) and isinstance(value.get("ok"), bool) and isinstance(value.get("note"), str)
            and isinstance(value.get("failed_records"), int) and isinstance(value.get("differing"), int)
            and (value.get("max_error") is None or isinstance(value.get("max_error"), (int, float))))


class Cache:
    """One JSON record per key: {"format", "key", "value", "sha256" of key and value}; writes are atomic. A record
    is trusted only when it parses, names its own key, its checksum matches and its value is a verdict of the
    expected kind; anything else is ignored (reported once per entry) and the candidate is timed again. Disabled
    (--no-cache): nothing is read or written."""

    def __init__(self, root: str | os.PathLike | None, enabled: bool = True, report=None):
        self.root = Path(root or os.environ.get("ATTNC_TUNE_CACHE") or Path.home() / ".cache" / "attnc" / "tune")
        self.enabled = enabled
        self.report = report or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.reported: set[str] = set()

    def _ignore(self, key: str, why: str) -> None:
        if key not in self.reported:
            self.reported.add(key)
            self.report(f"tune: note: cache entry {key[:16]}... ignored ({why}); it is evaluated again")

    def get(self, key: str, valid=is_timing_verdict) -> dict | None:
        from attnc.io import InputError, parse_json, read_bounded

        if not self.enabled:
            return None
        path = self.root / f"{key}.json"
        if not path.exists():
            return None
        try:
            record = parse_json(read_bounded(str(path), MAX_CACHE_ENTRY_BYTES, "cache entry").decode("utf-8"),
                                str(path))
        except (InputError, UnicodeDecodeError):
            self._ignore(key, "unreadable or not JSON")
            return None
        if not isinstance(record, dict) or record.get("format") != CACHE_FORMAT or record.get("key") != key:
            self._ignore(key, "not a record of this format for this key")
            return None
        value = record.get("value")
        if not isinstance(value, dict) or record.get("sha256") != _record_digest(key, value):
            self._ignore(key, "checksum mismatch")
            return None
        if not valid(value):
            self._ignore(key, "not a deterministic verdict")
            return None
        return value

    def put(self, key: str, value: dict) -> None:
        if not self.enabled:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        record = {"format": CACHE_FORMAT, "key": key, "value": value, "sha256": _record_digest(key, value)}
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            os.replace(tmp, self.root / f"{key}.json")
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


# -------------------------------------------------------------------------------------------------- evaluation


def sim_trial(program: str, name: str, inputs, timeout_s: float, verify: str = SIM_VERIFY) -> dict:
    """Time one emitted program in SIM (a pool worker or a Ray task runs this). `inputs` is an .npz path or a
    dict of arrays. Never raises for a failing program: the failure is the result."""
    import numpy as np

    from attnc.codegen.pypto.sim import PyptoSimError, run_in_subprocess

    if isinstance(inputs, (str, os.PathLike)):
        with np.load(inputs) as data:
            inputs = {k: data[k] for k in data.files}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="attnc-tune-") as tmp:
        path = os.path.join(tmp, f"{name}.py")
        with open(path, "w") as f:
            f.write(program)
        try:
            res = run_in_subprocess(path, inputs, verify=verify, timeout_s=timeout_s)
        except PyptoSimError as e:
            msg = str(e)
            # a timeout, a child killed by a signal (the OOM killer, a Ctrl-C) or one that exited before the
            # runner could report the program's failure (ATTNC_PYPTO_FAIL: an environment problem) says nothing
            # about the program
            died = " failed (exit " in msg and "ATTNC_PYPTO_FAIL:" not in msg
            return {"aicore_us": None, "error": msg[:600], "timeout": " timed out after " in msg,
                    "transient": " timed out after " in msg or died or any(f"(killed by {sig})" in msg
                                                                           for sig in TRANSIENT_SIGNALS),
                    "seconds": time.perf_counter() - t0}
    if res.aicore_us is None:
        return {"aicore_us": None, "error": "SIM reported no AICore time", "timeout": False,
                "seconds": time.perf_counter() - t0}
    return {"aicore_us": float(res.aicore_us), "error": None, "timeout": False, "seconds": time.perf_counter() - t0,
            "failed_records": len(res.failed_records)}


class LocalPool:
    """A process pool (spawned workers: the parent holds torch and xDSL state that should not be forked)."""

    def __init__(self, jobs: int):
        import multiprocessing

        self.pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_worker_init)
        self.jobs = jobs

    def submit(self, program, name, inputs_path, inputs, timeout_s) -> cf.Future:
        return self.pool.submit(sim_trial, program, name, inputs_path, timeout_s)

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)

    def abort(self):
        """Interrupted: SIGTERM every worker (each ends its SIM child's process group on the way out), wait."""
        for proc in list((getattr(self.pool, "_processes", None) or {}).values()):
            try:
                proc.terminate()
            except (OSError, ValueError):
                pass
        self.pool.shutdown(wait=True, cancel_futures=True)


def _worker_init() -> None:
    """A pool worker: SIGTERM unwinds like Ctrl-C (run_in_subprocess then kills the SIM child's group); Ctrl-C at
    the terminal reaches the workers too, which unwind the same way."""
    import signal

    from attnc.cli import _on_sigterm
    from attnc.codegen.pypto.sim.runner import die_with_parent

    signal.signal(signal.SIGTERM, _on_sigterm)
    die_with_parent(signal.SIGTERM, os.getppid())  # attnc killed (even by SIGKILL): unwind the same way


class SerialPool:
    """In-process, one at a time (--jobs 0; tests)."""

    jobs = 1

    def submit(self, program, name, inputs_path, inputs, timeout_s) -> cf.Future:
        fut = cf.Future()
        fut.set_result(sim_trial(program, name, inputs_path, timeout_s))
        return fut

    def close(self):
        pass

    def abort(self):
        pass


class RayPool:
    """Candidates as Ray tasks (one CPU each); the inputs go to the object store once."""

    def __init__(self, address: str, jobs: int):
        try:
            import ray
        except ImportError:
            raise TuneError("--ray needs Ray: pip install 'attnc[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=None if address == "local" else address, ignore_reinit_error=True,
                     log_to_driver=False, include_dashboard=False)
        self.remote = ray.remote(num_cpus=1)(sim_trial)
        self.inputs_ref = None
        self.jobs = max(jobs, int(ray.cluster_resources().get("CPU", 1)))

    def submit(self, program, name, inputs_path, inputs, timeout_s) -> cf.Future:
        if self.inputs_ref is None:
            self.inputs_ref = self.ray.put(inputs)
        return self.remote.remote(program, name, self.inputs_ref, timeout_s).future()

    def close(self):
        pass  # the caller owns the Ray session (ray.shutdown() when it started it)

    def abort(self):
        pass  # Ray ends the tasks of a driver that exits


# -------------------------------------------------------------------------------------------------- search


@dataclass
class Trial:
    number: int
    params: dict
    status: str  # "timed", "cached", "duplicate", "filtered", "compile-error", "sim-error", "timeout"
    aicore_us: float | None = None
    note: str = ""
    key: str | None = None
    sim_index: int | None = None  # 1-based index among SIM timings (for the plot)


@dataclass
class TuneRequest:
    source: str
    config: str = "tiny"
    overrides: list = field(default_factory=list)
    pipeline: str | None = None
    budget: int = 8
    space: list = field(default_factory=list)
    jobs: int = 1
    ray: str | None = None
    timeout_s: float = 900.0
    seed: int = 0
    recheck_batch: int = 2
    recheck_verify: str = RECHECK_VERIFY
    recheck_candidates: int = 3
    cache_dir: str | None = None
    use_cache: bool = True


@dataclass
class TuneResult:
    tuning: dict
    trials: list


def _sampler(dims, budget, seed):
    """Yields parameter dicts; `tell(params, value|None)` feeds results back (optuna) — exhaustive when small."""
    if space_size(dims) <= budget:
        return _Exhaustive(dims)
    return _Optuna(dims, seed, budget)


class _Exhaustive:
    def __init__(self, dims):
        self.it = (dict(zip([d.name for d in dims], vals)) for vals in itertools.product(*[d.values for d in dims]))

    def ask(self):
        return next(self.it, None), None

    def tell(self, handle, value, state="complete"):
        pass


class _Optuna:
    """TPE, seeded. The default is trial 1; then, for budgets too small for TPE's random start-up to find
    anything near a hand-picked default, up to half the budget goes to the default's neighbours (one dimension
    changed), in a seeded random order; TPE proposes the rest."""

    def __init__(self, dims, seed, budget):
        import random

        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.dims = dims
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, budget // 4)))
        self.study = optuna.create_study(direction="minimize", sampler=sampler)
        default = default_params(dims)
        self.study.enqueue_trial(default)
        neighbours = [{**default, d.name: v} for d in dims for v in d.values[1:]]
        random.Random(seed).shuffle(neighbours)
        for params in neighbours[:max(0, budget // 2 - 1)]:
            self.study.enqueue_trial(params)

    def ask(self):
        t = self.study.ask()
        return {d.name: t.suggest_categorical(d.name, list(d.values)) for d in self.dims}, t

    def tell(self, handle, value, state="complete"):
        from optuna.trial import TrialState

        if value is not None:
            self.study.tell(handle, value)
        else:
            self.study.tell(handle, state=TrialState.PRUNED if state == "filtered" else TrialState.FAIL)


def _us(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _short(params: dict, dims: list[Dim]) -> str:
    """The candidate as its differences from the default."""
    changed = [f"{d.name.split('.')[-1]}={params[d.name]}" for d in dims if params[d.name] != d.baseline]
    return " ".join(changed) or "default"


def tune(req: TuneRequest, log=None) -> TuneResult:
    """Run the search and the re-check; returns the tuning record (not yet written)."""
    from attnc.cli import load_source, source_inputs
    from attnc.progress import Progress
    from attnc.codegen.pypto.emit import emit_pypto
    from attnc.ir import print_ir
    from attnc.passes import PYPTO_PIPELINE, PassError, PipelineError
    from attnc.passes.verify import run_pipeline

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if req.budget < 1:
        raise TuneError("--budget must be at least 1")
    t_start = time.perf_counter()
    base_pipeline = req.pipeline or PYPTO_PIPELINE
    dims = build_space(base_pipeline, req.space)
    cache = Cache(req.cache_dir, req.use_cache, report=log)
    src0 = load_source(req.source, req.config, req.overrides)
    from attnc.memory import check_memory

    # seeded tensors, their arrays and the .npz each SIM child reads; the re-check interprets at its own batch
    check_memory(src0.module, f"tune {src0.name}", copies_of_inputs=3, sim_children=max(1, req.jobs))
    inputs = source_inputs(src0, req.seed)
    sampler = _sampler(dims, req.budget, req.seed)
    log(f"tune: {src0.name} at {req.config} {' '.join(req.overrides)}: {len(dims)} dimensions, "
        f"{space_size(dims)} points, budget {req.budget} candidates, "
        f"{'exhaustive' if isinstance(sampler, _Exhaustive) else 'optuna TPE'}")

    trials: list[Trial] = []
    seen: dict[str, float | None] = {}  # key -> µs (this run)
    modules: dict[str, tuple] = {}  # key -> (params) of the first candidate with that program
    modules_program: dict[str, str] = {}  # key -> its program (to run it again after a transient failure)
    in_flight: dict[cf.Future, tuple] = {}
    sim_count = 0  # SIM runs started by this tune
    evaluated = 0  # distinct programs with a result (timed now or found in the cache): what --budget caps
    best = math.inf
    idle_asks = 0

    def record(trial: Trial, handle):
        nonlocal best
        trials.append(trial)
        value = trial.aicore_us
        if handle is not None or isinstance(sampler, _Exhaustive):
            sampler.tell(handle, value, trial.status)
        if value is not None:
            best = min(best, value)
        us = f"{value:9.2f} us" if value is not None else f"{trial.status:>12}"
        log(f"tune: trial {trial.number:3d} [{evaluated}/{req.budget}, {sim_count} run] {us}  best "
            f"{best if best < math.inf else float('nan'):.2f} us  {_short(trial.params, dims)}"
            + (f"  ({trial.note[:160]})" if trial.note and value is None else ""))

    def prepare(params):
        """Compile and emit one candidate: (key, program, note, status)."""
        from attnc.kernels_src import build_stage

        src = load_source(req.source, req.config, req.overrides) if src0.stage is None else None
        module = build_stage(src0.stage, src0.cfg) if src0.stage is not None else src.module
        try:
            run_pipeline(module, candidate_pipeline(base_pipeline, dims, params), output_names=src0.output_names)
            options = candidate_options(dims, params)
            why = static_check(module, options)
            if why and params not in (default, baseline):  # the defaults are always timed (a filter that
                return None, None, why, "filtered"                 # rejects them is wrong)
            program = emit_pypto(module, options)  # its host constants' values in it (one inputs file for all)
        except (PassError, PipelineError, Exception) as e:  # noqa: BLE001 - any failure disqualifies the candidate
            return None, None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", "compile-error"
        return cache_key(program, SIM_VERIFY, req.seed), program, "", "ok"

    if req.ray:
        pool = RayPool(req.ray, req.jobs)
    elif req.jobs <= 0:
        pool = SerialPool()
    else:
        pool = LocalPool(req.jobs)
    default = default_params(dims)
    baseline = baseline_params(dims)
    # the true all-defaults candidate is timed first even when --space narrowed it out of the search
    extra = [] if baseline == default else [baseline]
    retries: dict[str, int] = {}  # key -> transient failures (a killed child, a dead worker) retried so far
    number = 0
    with tempfile.TemporaryDirectory(prefix="attnc-tune-in-") as tmp:
        import numpy as np

        from attnc.io import to_numpy

        arrays = {k: to_numpy(v) for k, v in inputs.items()}
        inputs_path = os.path.join(tmp, "inputs.npz")
        np.savez(inputs_path, **arrays)
        exhausted = False
        try:
            while True:
                while not exhausted and evaluated < req.budget and len(in_flight) < max(1, pool.jobs):
                    params, handle = (extra.pop(0), None) if extra else sampler.ask()
                    if params is None:
                        exhausted = True
                        break
                    number += 1
                    key, program, note, status = prepare(params)
                    if status != "ok":
                        record(Trial(number, params, status, note=note), handle)
                        idle_asks += 1
                    elif key in seen:
                        record(Trial(number, params, "duplicate", seen[key], note="same program as an earlier "
                                     "candidate", key=key), handle)
                        idle_asks += 1
                    elif (hit := cache.get(key)) is not None:
                        evaluated += 1
                        seen[key] = hit.get("aicore_us")
                        record(Trial(number, params, "cached" if hit.get("aicore_us") is not None else "sim-error",
                                     hit.get("aicore_us"), note=hit.get("error") or "", key=key), handle)
                        idle_asks += 1
                    else:
                        idle_asks = 0
                        sim_count += 1
                        evaluated += 1
                        seen[key] = None
                        modules[key] = params
                        modules_program[key] = program
                        fut = pool.submit(program, src0.name, inputs_path, arrays, req.timeout_s)
                        in_flight[fut] = (number, params, handle, key, sim_count)
                    if idle_asks > 20 * len(dims) + 50:  # the sampler keeps proposing what is known
                        exhausted = True
                if not in_flight:
                    break
                # a live line (on a terminal) while candidates run in SIM, which can take up to --timeout each
                with Progress(None, "tune: in SIM: trial " + ", ".join(str(v[0]) for v in in_flight.values())) as bar:
                    bar.tick_every(1.0)
                    done, _ = cf.wait(list(in_flight), return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    n, params, handle, key, index = in_flight.pop(fut)
                    try:
                        res = fut.result()
                    except Exception as e:  # noqa: BLE001 - a dead worker disqualifies its candidate only
                        res = {"aicore_us": None, "error": f"worker failed: {type(e).__name__}: {e}",
                               "timeout": False, "transient": True}
                    if res.get("transient") and not res.get("timeout") and retries.get(key, 0) < MAX_RETRIES:
                        retries[key] = retries.get(key, 0) + 1  # a killed child: the same program once more
                        sim_count += 1
                        log(f"tune: trial {n}: {res['error'][:120]}: transient, running it again")
                        again = pool.submit(modules_program[key], src0.name, inputs_path, arrays, req.timeout_s)
                        in_flight[again] = (n, params, handle, key, sim_count)
                        continue
                    seen[key] = res["aicore_us"]
                    if not res.get("transient") and is_timing_verdict(res):
                        cache.put(key, res)  # only deterministic verdicts
                    status = "timed" if res["aicore_us"] is not None else ("timeout" if res.get("timeout")
                                                                          else "sim-error")
                    record(Trial(n, params, status, res["aicore_us"], note=res.get("error") or "", key=key,
                                 sim_index=index), handle)
        except BaseException:  # Ctrl-C, SIGTERM, an error: no worker or SIM child outlives the tune
            pool.abort()
            raise
        finally:
            pool.close()

    default_trial = next(t for t in trials if t.params == baseline)
    ranked = sorted((t for t in trials if t.aicore_us is not None and t.status != "duplicate"),
                    key=lambda t: (t.aicore_us, t.number))
    if not ranked:
        raise TuneError(f"no candidate of {src0.name} ran in SIM (default: {default_trial.status}: "
                        f"{default_trial.note[:200]})")
    # the re-check: the default's pypto verify records at the small batch are the bar
    log(f"tune: re-checking at batch {req.recheck_batch} with pypto verify against the interpreter")
    base_check = recheck(req, base_pipeline, dims, baseline, cache, log)
    if not base_check["ok"]:
        raise TuneError(f"the default candidate fails the re-check: {base_check['note']}")
    chosen, check = None, None
    for t in ranked[:max(1, req.recheck_candidates)]:
        # the winner is always re-checked in SIM (never taken from the cache) before the file is written
        check = base_check if t.params == baseline else recheck(req, base_pipeline, dims, t.params, cache, log,
                                                                 fresh=True)
        if check["ok"] and check["failed_records"] <= base_check["failed_records"]:
            chosen = t
            break
        log(f"tune: trial {t.number} disqualified by the re-check: {check['note'] or 'more verify failures'}")
    if chosen is None:
        raise TuneError("no candidate among the best passed the re-check; nothing written")
    options = candidate_options(dims, chosen.params)
    tuning = {
        "attnc_tuning": TUNING_FORMAT,
        "stage": src0.name,
        "config": req.config,
        "set": list(req.overrides),
        "pipeline": candidate_pipeline(base_pipeline, dims, chosen.params),
        "pypto_options": {k: _literal_text(v) for k, v in options.as_dict().items()},
        "aicore_us": chosen.aicore_us,
        "default_aicore_us": default_trial.aicore_us,
        "pypto_version": pypto_version(),
        "recheck": {"batch": req.recheck_batch, "verify": req.recheck_verify, "max_error": check["max_error"],
                    "differing": check.get("differing"),
                    **({"topk_ties": {k: check["topk"][k] for k in ("outputs", "eps", "picks", "differing",
                                                                    "swapped", "max_gap")}}
                       if check.get("topk") else {}),
                    "failed_records": check["failed_records"],
                    "default_failed_records": base_check["failed_records"]},
        "evaluated": evaluated,
        "sim_trials": sim_count,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "trials": [{"number": t.number, "params": t.params, "status": t.status, "aicore_us": t.aicore_us,
                    "sim_index": t.sim_index, **({"note": t.note[:300]} if t.aicore_us is None else {})}
                   for t in trials],
    }
    log(f"tune: best {chosen.aicore_us:.2f} us (default {_us(default_trial.aicore_us)} us), {evaluated} candidates "
        f"evaluated, {sim_count} SIM runs, "
        f"{tuning['wall_s']} s")
    return TuneResult(tuning, trials)


def recheck(req: TuneRequest, base_pipeline: str, dims, params: dict, cache: Cache, log, fresh: bool = False) -> dict:
    """Compile the candidate at `recheck_batch`, run it in SIM with pypto's pass verify and compare every output
    with attnc's interpreter on the same compiled IR. Cached like the timings."""
    from attnc.cli import load_source, source_inputs
    from attnc.progress import Progress
    from attnc.codegen.pypto.emit import emit_pypto
    from attnc.codegen.pypto.sim import PyptoSimError
    from attnc.codegen.pypto.target import run_pypto_sim, unexcused
    from attnc.ir.topk import TIE_EPS
    from attnc.passes.verify import run_pipeline

    overrides = [*req.overrides, f"batch={req.recheck_batch}"]
    src = load_source(req.source, req.config, overrides)
    try:
        run_pipeline(src.module, candidate_pipeline(base_pipeline, dims, params), output_names=src.output_names)
        options = candidate_options(dims, params)
        program = emit_pypto(src.module, options)
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "note": f"compile at batch {req.recheck_batch}: {e}", "max_error": None,
                "failed_records": None}
    key = cache_key(f"{program}\n# recheck within {sorted(RECHECK_TOLERANCE.items())} or one step of the largest "
                    f"value, top-k ties within "
                    f"{TIE_EPS!r}", req.recheck_verify, req.seed)
    if not fresh and (hit := cache.get(key, is_recheck_verdict)) is not None:
        return hit
    inputs = source_inputs(src, req.seed)
    try:
        res = run_pypto_sim(src.module, inputs, verify=req.recheck_verify, timeout_s=req.timeout_s, options=options)
    except PyptoSimError as e:
        return {"ok": False, "note": str(e)[:300], "max_error": None, "failed_records": None}
    out = compare_with_interpreter(src.module, inputs, res.outputs, src.output_names)
    out["failed_records"] = len(unexcused(res))  # records no cause excuses (codegen/pypto/target.excuse)
    cache.put(key, out)
    ties = out.get("topk")
    log(f"tune: re-check {'passed' if out['ok'] else 'FAILED'} ({_short(params, dims)}): max error "
        f"{_err(out['max_error'])} ({out['differing']} values differ), {out['failed_records']} pypto verify records "
        f"failed with no known cause" + (f"; top-k: {ties['differing']} of {ties['picks']} picks accepted as near-ties "
                     f"({ties['swapped']} other members)" if ties and ties["ok"] else "")
        + (f": {out['note']}" if not out["ok"] else ""))
    return out


def _err(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def compare_with_interpreter(module, inputs: dict, got: dict, output_names, eps: float | None = None) -> dict:
    """The re-check's comparison of a device run's outputs `got` with attnc's interpreter on the same IR
    (`attnc.sim_check.check_outputs`, the check of every `attnc run --target pypto-sim`), as the record
    the tuning file and the cache keep: ok, note, max_error, differing, topk."""
    from attnc.sim_check import check_outputs

    return check_outputs(module, inputs, got, output_names, eps).as_dict()


# -------------------------------------------------------------------------------------------------- plot, file


def plot_trials(trials: list[Trial], title: str, path: str) -> bool:
    """µs per candidate (timed now, or from the cache), the best so far and the default; crashes and timeouts as
    crosses, written to `path`. False when matplotlib is not installed."""
    from attnc.io import atomic_write_bytes

    data = plot_trials_bytes(trials, title)
    if data is None:
        return False
    atomic_write_bytes(path, data)
    return True


def plot_trials_bytes(trials: list[Trial], title: str) -> bytes | None:
    """The PNG of `plot_trials`; None when matplotlib is not installed."""
    import io

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    ok = [t for t in trials if t.aicore_us is not None and t.status != "duplicate"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for status, marker in (("timed", "o"), ("cached", "s")):
        pts = [t for t in ok if t.status == status]
        if pts:
            ax.scatter([t.number for t in pts], [t.aicore_us for t in pts], s=20, marker=marker,
                       label="timed in SIM" if status == "timed" else "from the cache")
    xs, running, best = [], [], math.inf
    for t in ok:
        best = min(best, t.aicore_us)
        xs.append(t.number)
        running.append(best)
    if xs:
        ax.step(xs, running, where="post", color="C2", label="best so far")
    if trials and trials[0].aicore_us is not None:  # the default is the first candidate
        ax.axhline(trials[0].aicore_us, color="grey", linestyle="--", linewidth=0.8, label="default")
    failed = [t.number for t in trials if t.status in ("sim-error", "timeout")]
    if failed and ok:
        ax.scatter(failed, [max(t.aicore_us for t in ok)] * len(failed), marker="x", color="C3",
                   label="crash / timeout")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("candidate")
    ax.set_ylabel("AICore µs (pypto 0.2.0 cost model)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def tuning_text(tuning: dict) -> str:
    return json.dumps(tuning, indent=1) + "\n"


def write_tuning(path: str, tuning: dict) -> None:
    from attnc.io import atomic_write_text

    atomic_write_text(path, tuning_text(tuning))


_TUNING_KEYS = {"attnc_tuning", "evaluated", "stage", "config", "set", "pipeline", "pypto_options", "aicore_us",
                "default_aicore_us", "pypto_version", "recheck", "sim_trials", "wall_s", "trials"}


MAX_TUNING_BYTES = 16 << 20


def load_tuning(path: str) -> dict:
    """Read and check a tuning file; TuneError (one line naming the file) on anything malformed."""
    from attnc.codegen.pypto.options import OptionError, PyptoOptions
    from attnc.passes import PipelineError, build_pipeline

    from attnc.io import InputError, parse_json, read_bounded

    try:
        data = parse_json(read_bounded(path, MAX_TUNING_BYTES, "tuning file").decode("utf-8", "replace"),
                          f"{path}: not a JSON tuning file")
    except InputError as e:
        raise TuneError(str(e)) from None
    if not isinstance(data, dict) or data.get("attnc_tuning") != TUNING_FORMAT:
        raise TuneError(f"{path}: not an attnc tuning file (expected \"attnc_tuning\": {TUNING_FORMAT})")
    unknown = sorted(set(data) - _TUNING_KEYS)
    if unknown:
        raise TuneError(f"{path}: unknown key '{unknown[0][:60]}'")
    if not isinstance(data.get("stage"), str) or not isinstance(data.get("pipeline"), str):
        raise TuneError(f"{path}: 'stage' and 'pipeline' must be strings")
    if not isinstance(data.get("config", ""), str) or not (
            isinstance(data.get("set", []), list) and all(isinstance(o, str) and "=" in o for o in data.get("set", []))):
        raise TuneError(f"{path}: 'config' must be a string and 'set' a list of KEY=VALUE strings")
    opts = data.get("pypto_options")
    if not isinstance(opts, dict) or not all(isinstance(k, str) for k in opts):
        raise TuneError(f"{path}: 'pypto_options' must be an object of option names")
    try:
        build_pipeline(data["pipeline"])
        PyptoOptions().with_settings(opts)  # strings are parsed as literals there, with its errors
    except (PipelineError, OptionError) as e:
        raise TuneError(f"{path}: {str(e).splitlines()[0]}") from None
    return data


def apply_tuning(args, stage_name: str) -> None:
    """`--tuning FILE` for compile/run: the file's pipeline (unless --pipeline) and options (before any
    --pypto-option, which override single keys)."""
    if not getattr(args, "tuning", None):
        return
    data = load_tuning(args.tuning)
    if data["stage"] != stage_name:
        raise TuneError(f"{args.tuning}: tuned for stage '{data['stage'][:60]}', not '{stage_name}'")
    if getattr(args, "emit", None) == "pto":
        raise TuneError("--tuning applies to the pypto target, not --emit pto")
    if args.pipeline is None:
        args.pipeline = data["pipeline"]
    settings = [f"{k}={v if isinstance(v, str) else repr(v)}" for k, v in data["pypto_options"].items()]
    args.pypto_option = settings + list(args.pypto_option)


# -------------------------------------------------------------------------------------------------- CLI


def add_parser(sub, formatter_class=None) -> None:
    text = "search pass options, tiles and pypto options by simulated AICore time"
    t = sub.add_parser("tune", help=text, description=text,
                       **({"formatter_class": formatter_class} if formatter_class else {}))
    t.add_argument("source", metavar="STAGE|FILE.mlir", help="a stage name or an .mlir file")
    t.add_argument("--config", default="tiny", help="model/shape config")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable; default: none)")
    t.add_argument("-p", "--pipeline", default=None, help="base pipeline (default: the pypto pipeline)")
    t.add_argument("--budget", type=int, default=8,
                   help="at most this many candidates timed (a cached timing counts but costs no SIM run)")
    t.add_argument("--space", action="append", default=[], metavar="NAME=V1|V2",
                   help="narrow one dimension, e.g. 'combine_axis=False' or 'tile-softmax.kv-tile=64|128' (default: none)")
    t.add_argument("--jobs", type=int, default=1, help="worker processes (0: none)")
    t.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run candidates on a Ray cluster ('auto', an address, or 'local' to start one; default: local pool)")
    t.add_argument("--timeout", type=float, default=900.0, help="seconds per SIM run")
    t.add_argument("--seed", type=int, default=0, help="seed of the inputs and of the search")
    t.add_argument("--recheck-batch", type=int, default=2,
                   help="batch of the bit-exactness re-check of the best candidate")
    t.add_argument("--recheck-verify", choices=RECHECK_VERIFY_MODES, default=RECHECK_VERIFY,
                   help="pypto verify of the re-check: 'default' (pypto's per-pass records too) or 'tensor-graph' "
                        "(the outputs only: a whole flash layer's re-check at B=2 with the records took > 8.4 GB "
                        "and > 13 min here) (default: default)")
    t.add_argument("--no-cache", action="store_true", help="time every candidate again (default: use the cache)")
    from attnc.cli import _out_path

    t.add_argument("--plot", metavar="FILE.png", default=None, type=_out_path,
                   help="default: the tuning file with .png")
    t.add_argument("-o", "--output", metavar="FILE", required=True, type=_out_path,
                   help="the tuning file to write (required)")
    t.set_defaults(fn=cmd_tune)


def _default_pipeline() -> str:
    from attnc.passes import PYPTO_PIPELINE

    return PYPTO_PIPELINE


def default_plot_path(output: str) -> str | None:
    """The tuning file with .png, for a regular file path only (stdout, a device or a FIFO has no sibling)."""
    from attnc.io import resolve_output

    kind, target, _ = resolve_output(output)
    return str(Path(target).with_suffix(".png")) if kind == "file" else None


def cmd_tune(args) -> int:
    from attnc.io import Outputs, check_output_path

    if args.recheck_batch < 1:
        raise TuneError("--recheck-batch must be at least 1")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise TuneError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if args.budget < 1:
        raise TuneError("--budget must be at least 1")
    if args.jobs < 0:
        raise TuneError(f"--jobs must be 0 or more, got {args.jobs}")
    if args.ray is not None and not args.ray.strip():
        raise TuneError("--ray: an empty address (give 'auto', 'local' or HOST:PORT)")
    build_space(args.pipeline or _default_pipeline(), args.space)  # --space checked before any work
    check_output_path(args.output)  # every output path is checked before the (long) work
    plot = args.plot if args.plot is not None else default_plot_path(args.output)
    if plot is not None:
        check_output_path(plot)
    req = TuneRequest(source=args.source, config=args.config, overrides=list(args.set), pipeline=args.pipeline,
                      budget=args.budget, space=list(args.space), jobs=args.jobs, ray=args.ray,
                      timeout_s=args.timeout, seed=args.seed, recheck_batch=args.recheck_batch,
                      recheck_verify=args.recheck_verify,
                      use_cache=not args.no_cache)
    result = tune(req)
    outputs = Outputs()  # the tuning file and its plot, all or nothing
    outputs.add(args.output, tuning_text(result.tuning))
    picture = plot_trials_bytes(result.trials, f"{result.tuning['stage']} --config {args.config}") if plot else None
    if picture is not None:
        outputs.add(plot, picture)
    outputs.commit()
    print(f"wrote {args.output}", file=sys.stderr)
    if picture is not None:
        print(f"wrote {plot}", file=sys.stderr)
    elif plot:
        print("tune: no plot (matplotlib is not installed)", file=sys.stderr)
    t = result.tuning
    print(f"aicore_us: {t['aicore_us']:.3f} (default {_us(t['default_aicore_us'])})")
    return 0


def main(argv=None) -> int:  # python -m attnc.tune ...
    from attnc.cli import main as attnc_main

    return attnc_main(["tune", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["TuneError", "TuneRequest", "tune", "build_space", "static_check", "load_tuning", "apply_tuning",
           "add_parser"]
