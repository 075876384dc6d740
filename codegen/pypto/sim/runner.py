"""Child-process entry: run one generated pypto 0.2.0 kernel module once and write its outputs.

    python runner.py KERNEL.py IN.npz OUT.npz [VERIFY]
    python -m attnc.codegen.pypto.sim.runner KERNEL.py IN.npz OUT.npz [VERIFY]

VERIFY: ``default`` (pass verify with pypto's default pass filter), ``tensor-graph`` (verify with the empty filter:
only the tensor graph is interpreted -- outputs still written), ``all`` (every pass), ``none`` (time only: no
interpreter, so pypto writes NO output values; the result .npz is then empty), or a JSON list of pass names.

The kernel module defines ``kernel`` (a ``@pypto.frontend.jit`` function whose parameters are all tensors),
``ARG_NAMES`` (parameter order), ``OUTPUT_NAMES``, optionally ``SCRATCH_NAMES`` (working buffers the harness
allocates as zeros and does not return), ``ARG_DTYPES`` (name -> 'bf16' | 'f32' | 'i32' | ...), and
optionally ``ARG_SHAPES`` (name -> shape; needed for outputs whose annotation has dynamic dims) and
``RESULT_SHAPES`` (an output the kernel writes as token rows -> the stage's shape of the same bytes, returned so), and
optionally ``host_constant_values()`` (name -> array: parameters computed from no input, written into the program).
Input arrays come from IN.npz by name (bf16 travels as float32 holding bf16 values). An output that also appears in IN.npz is an
in/out tensor and starts from that array; other outputs start as zeros.

Results: OUT.npz (outputs; bf16 -> float32) and OUT.npz.json
``{"aicore_us", "verify": [[pass, index, result, cause], ...], "errors": [...], "wall_s", "process_s", "exception"}``
(see parse_log_lines: a failed record's cause names pypto's error code and the op).

Two pypto 0.2.0 problems are fixed here (see the shared pypto notes): the pass verifier is handed all-zero copies
of the inputs on CPU (we hand it the real buffers), and the torch "calculator" library is cmake-built in every
process (~20 s; we build it once into a cache). Everything pypto writes (output dirs, plog, rundata) goes to a
private run directory, by default /dev/shm/attnc-pypto-<pid>, which is removed at the end; pypto's verify dumps (files
of every verified function's tensors) go to OUT.npz's folder (pypto-verify/, on disk: not memory), removed too.

This file is self-contained (stdlib + numpy/torch/pypto imported lazily) so it can run as a plain script.
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.util
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

T_START = time.perf_counter()

CALC_CACHE = Path(os.environ.get("ATTNC_PYPTO_CALC_CACHE") or Path.home() / ".cache" / "attnc" / "pypto-calc")
CALC_LIB = Path("install") / "lib" / "libtile_fwk_calculator.so"

VERIFY_MODES = {
    "none": {"enable_pass_verify": False},
    "tensor-graph": {"enable_pass_verify": True, "pass_verify_pass_filter": []},
    "default": {"enable_pass_verify": True},
    "all": {"enable_pass_verify": True, "pass_verify_pass_filter": ["all"]},
}

# plog lines of the pass verifier, e.g.
#   [VERIFY]:tensor_graph Verify for 2 data view list index 0 result PASS
#   [VERIFY]:ErrCode: FB4001 Pass_04_ExpandFunction Verify for 1 data view list index 3 result FAILED
#   ... VerifyPass failed for function F, pass P (passIndex: 5, captureIndex: 0) ...
_RE_RESULT = re.compile(r"\[VERIFY\]:(?:ErrCode: *\S+ +)?(\S+) Verify for \d+ data view list index (\d+) result (\w+)")
_RE_THROW = re.compile(r"VerifyPass failed for function (\S+), pass (\S+) \(passIndex: \d+, captureIndex: (\d+)\)"
                       r"(?:: *(.*))?")
# what names a record's cause in the lines around it: the op the verify interpreter failed on, e.g.
#   [VERIFY]:ErrCode: FB200F! ExecuteOperation error: op GATHER (magic=10165) output[0] tensorMagic=5082, ...
# the inner error code and op kind of a throw ("...captureIndex: 0): Errcode: FB200B!", "..., GATHEROpError"),
# and the kernel line it was traced from ("lineno: 258", the emitted program's line)
_RE_OP_ERROR = re.compile(r"ErrCode: *(\w+)! ExecuteOperation error: op (\w+)")
_RE_INNER_CODE = re.compile(r"Err[cC]ode: *(\w+)!")
_RE_OP_KIND = re.compile(r"(\w+?)OpError\b|\bTILE_(\w+)\(")
_RE_LINENO = re.compile(r"^lineno: (\d+)")
# pypto's AssembleChecker: two assembles into one tensor whose declared shapes overlap (two lines)
_RE_OVERLAP1 = re.compile(r"\[AssembleChecker\.Tensor\]:Tensor produced by assemble has overlap inputs\. "
                          r"Overlap input1: shape:\{([^}]*)\} offset:\{([^}]*)\}")
_RE_OVERLAP2 = re.compile(r"\[AssembleChecker\.Tensor\]:Overlap input2: shape:\{([^}]*)\} offset:\{([^}]*)\}.*"
                          r"Tensor\[(\d+)\]")
# an FB4001 record (a pass's values differ from the tensor graph's beyond pass_verify_error_tol) is followed by up to
# 6 of its mismatches and the extremes, e.g.
#     Error rtol=0.001000 atol=0.001000 index:3083 golden:-0.287109 output:-0.289062 absDiff:0.00195312 relDiff:...
#   All size:5120 failNum:0 maxAbsDiff:0.00195312 maxRelDiff:0.00701754averageAbsDiff:...
#   maxAbs-> index:3083 golden:-0.287109 output:-0.289062 absDiff:0.00195312 relDiff:0.00677966
_RE_MISMATCH = re.compile(r"^\s*(?:Error .*?|max(?:Abs|Rel)->) index:\d+ golden:(\S+) output:(\S+) absDiff:\S+ relDiff:\S+")
_RE_MAX_ABS = re.compile(r"\bmaxAbsDiff:([0-9.eE+-]+?)(?=max|average|\s|$)")
# benign noise: the stubbed python3 scripts, a known out-of-bounds log in the cost model, per-pass FAILED details
_NOISE = ("cmd error: python3", "F7A001", "FB4001")


def _phase(text: str) -> None:
    """Tell the parent what the child is doing (it shows it as progress): one line in ATTNC_PYPTO_PHASE_FILE."""
    path = os.environ.get("ATTNC_PYPTO_PHASE_FILE")
    if path:
        with contextlib.suppress(OSError):
            Path(path).write_text(text)


def run_dir_for_pid(pid: int) -> Path:
    """The private run directory of the child with this pid (the parent uses it to clean up after a kill)."""
    base = os.environ.get("ATTNC_PYPTO_TMP")
    if not base:
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    return Path(base) / f"attnc-pypto-{pid}"


def die_with_parent(sig: int, parent: int | None) -> None:
    """Have the kernel send `sig` to this process when `parent` (the process that started it) dies, even by
    SIGKILL: a SIM child runs in its own session, so nothing else would end it (Linux; elsewhere a no-op)."""
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl
        os.kill(os.getpid(), sig)


def watch_parent(parent: int | None, folders: list[str]):
    """A shell in this process's group that waits for `parent` (attnc) to go, then removes `folders` and kills the
    whole group: killed by SIGKILL, attnc cannot end the SIM child (its own session) nor what the child started,
    nor remove its temp folders. Killed with the group on a normal end (the runner kills it on the way out)."""
    if parent is None or os.name != "posix" or not os.path.exists("/bin/sh"):
        return None
    import subprocess

    script = 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; shift; rm -rf -- "$@"; kill -9 0'
    return subprocess.Popen(["/bin/sh", "-c", script, "attnc-sim-watchdog", str(parent), *folders],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _redirect_outputs(root: Path) -> None:
    """Point every file pypto writes into `root`. Must happen before `import pypto` (read at load/first use)."""
    os.environ["TILE_FWK_OUTPUT_DIR"] = str(root / "output")
    os.environ["ASCEND_PROCESS_LOG_PATH"] = str(root / "plog")
    os.environ["PYPTO_HOME"] = str(root / "home")
    # After every kernel the cost model system()s three `python3 <pypto>/lib/scripts/*swim_lane*.py` plotting
    # scripts. We compute the AICore time ourselves, so a no-op python3 first on PATH saves time and noise.
    bindir = root / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    stub = bindir / "python3"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    os.environ["PATH"] = f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"


@contextlib.contextmanager
def _console_to(logfile: Path):
    """Send fd 1 and 2 (C++ prints, compiler/cost-model children) to `logfile`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    fd = os.open(str(logfile), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)


def _load_calculator(console: Path) -> None:
    """Load pypto's torch calculator (used by the pass-verify interpreter), building it once into CALC_CACHE."""
    import fcntl

    import torch
    from pypto._utils import BuildOnlineManager

    mgr = BuildOnlineManager()
    if mgr.calculator_loaded:
        return
    CALC_CACHE.mkdir(parents=True, exist_ok=True)
    lib = CALC_CACHE / CALC_LIB
    stamp = CALC_CACHE / "torch_version.txt"
    with open(CALC_CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent children: one builds, the others wait
        if lib.exists() and not stamp.exists():
            stamp.write_text(torch.__version__)  # a cache from before stamps existed
        if not lib.exists() or stamp.read_text().strip() != torch.__version__:
            _phase("building pypto's torch calculator (once per machine, about a minute)")
            for sub in ("build", "install"):
                shutil.rmtree(CALC_CACHE / sub, ignore_errors=True)
            torch_ctx = mgr._TorchContext()
            ctx = mgr._CMakeContext.CompileContext(src_dir=Path(mgr.pkg_lib_dir, "calculator"), tmp_dir=CALC_CACHE)
            ctx.cfg_cmd_ext = (f"-DPY3_MOD_TORCH_VERSION={torch_ctx.torch_version} "
                               f"-DPY3_MOD_TORCH_ROOT_PATH={torch_ctx.torch_root_dir} "
                               f"-DPY3_MOD_TORCH_C_GLIBCXX_USE_CXX11_ABI={torch_ctx.torch_c_use_cxx11_abi}")
            ctx.build_job_num = max(1, os.cpu_count() or 1)
            with _console_to(console):
                mgr._CMakeContext().compile(ctx=ctx)
            if not lib.exists():
                raise RuntimeError(f"calculator build did not produce {lib} (log: {console})")
            stamp.write_text(torch.__version__)
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    mgr.calculator_loaded = True


def _fix_verify_inputs(console: Path) -> None:
    """pypto 0.2.0 copies the inputs for the verifier with CopyToHost into fresh zero tensors, a no-op on CPU, so
    the interpreter would see zeros. Register the real (CPU) buffers instead."""
    import pypto
    from pypto import pypto_impl
    from pypto.frontend.parser import entry
    from pypto.runtime import _pto_verify_datas

    def _setup_verify_data(pto_tensors):
        if not pypto.get_verify_options().get("enable_pass_verify"):
            return
        _load_calculator(console)
        pypto_impl.SetVerifyData(entry._pto_to_tensor_data(pto_tensors), [], _pto_verify_datas.get_data())

    entry.JitCallableWrapper._setup_verify_data = staticmethod(_setup_verify_data)


def aicore_time_us(output_dir: Path) -> float | None:
    """'AICore End-to-End Time': first AIC/AIV task start to last task end in the cost model's swim lanes,
    in cycles / 1800 (the simulator's 1.8 GHz) = microseconds."""
    f = output_dir / "CostModelSimulationOutput" / "_simulate.swim.json"
    if not f.exists():
        return None
    starts, ends = [], []
    for core in json.loads(f.read_text()):
        if core.get("coreType") not in ("AIC", "AIV"):
            continue
        for task in core.get("tasks", []):
            s, e = task.get("execStart", 0), task.get("execEnd", 0)
            if e >= s:
                starts.append(s)
                ends.append(e)
    return (max(ends) - min(starts)) / 1800.0 if starts else None


def submitted_tasks(output_dir: Path) -> dict | None:
    """Tasks the cost model's AICPU scheduler submitted (the first-order cost of a scheduler-bound kernel):
    {"total", "cube", "vector"} from _simulate.stat.report.txt."""
    f = output_dir / "CostModelSimulationOutput" / "_simulate.stat.report.txt"
    if not f.exists():
        return None
    found = {}
    for line in f.read_text(errors="replace").splitlines():
        for key, label in (("total", "Total Submit Tasks"), ("cube", "|--Cube Tasks"), ("vector", "|--Vector Tasks")):
            if line.strip().startswith(label) and key not in found:
                found[key] = int(line.split(":")[1].split()[0])
    return found or None


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.replace(" ", "").split(",") if v]


def parse_log_lines(lines: list[str]) -> tuple[list, list]:
    """(records, error lines) of one plog file. A record is [pass, index, result, cause]: `cause` is {} for a
    PASS; for a failure {"code": the innermost pypto error code, "op": the op kind the log names around it (or
    the earlier record's of the same function), "line": the emitted program's line, "function": pypto's function;
    an FB4001 value mismatch adds "mismatches": [[golden, output], ...] as logged and "max_abs": the largest
    absolute difference over all values};
    an AssembleChecker report is ["AssembleChecker", tensor, "OVERLAP", {"code": "AssembleChecker", "op":
    "ASSEMBLE", "tensor": id, "inputs": [[shape, offset], [shape, offset]]}]."""
    records, errors = [], []
    pending: dict = {}  # the last ExecuteOperation error not yet attached to a record
    op_of_function: dict = {}
    overlap = None
    mismatch = None  # the cause of the last FB4001 record: the lines after it list its mismatches
    for i, line in enumerate(lines):
        if mismatch is not None:
            m = _RE_MISMATCH.match(line)
            r = _RE_MAX_ABS.search(line)
            if m:
                mismatch.setdefault("mismatches", []).append([float(m.group(1)), float(m.group(2))])
                continue
            if r:
                mismatch["max_abs"] = float(r.group(1))
                continue
            if "[VERIFY]" in line and "flow_verifier.h" in line:  # the header of the mismatch listing
                continue
            mismatch = None
        m = _RE_OP_ERROR.search(line)
        if m:
            pending = {"code": m.group(1), "op": m.group(2)}
            continue
        m = _RE_OVERLAP1.search(line)
        if m:
            overlap = [_ints(m.group(1)), _ints(m.group(2))]
            continue
        m = _RE_OVERLAP2.search(line)
        if m and overlap is not None:
            tensor = int(m.group(3))
            records.append(["AssembleChecker", tensor, "OVERLAP", {
                "code": "AssembleChecker", "op": "ASSEMBLE", "tensor": tensor,
                "inputs": [overlap, [_ints(m.group(1)), _ints(m.group(2))]]}])
            overlap = None
            continue
        m = _RE_RESULT.search(line)
        if m:
            cause = {}
            if m.group(3) not in ("PASS", "NO_COMPARE"):
                code = _RE_INNER_CODE.search(line)
                cause = {"code": pending.get("code") or (code.group(1) if code else ""), "op": pending.get("op", ""),
                         "line": None, "function": m.group(1).split("_Pass_")[0]}
                pending = {}
                mismatch = cause if cause["code"] == "FB4001" else None
            records.append([m.group(1), int(m.group(2)), m.group(3), cause])
            continue
        m = _RE_THROW.search(line)
        if m:
            function, inner = m.group(1), m.group(4) or ""
            code = _RE_INNER_CODE.search(inner)
            cause = {"code": code.group(1) if code else pending.get("code", ""), "op": "", "line": None,
                     "function": function}
            kind = _RE_OP_KIND.search(inner)
            for follow in lines[i + 1:i + 12]:  # the traced statement follows on continuation lines
                if "VerifyPass failed" in follow:
                    break
                if cause["line"] is None and (ln := _RE_LINENO.match(follow.strip())):
                    cause["line"] = int(ln.group(1))
                kind = kind or _RE_OP_KIND.search(follow)
            op = (kind.group(1) or kind.group(2)) if kind else pending.get("op")
            cause["op"] = op or op_of_function.get(function, "")
            if cause["op"]:
                op_of_function[function] = cause["op"]
            pending = {}
            records.append([f"{function}:{m.group(2)}", int(m.group(3)), "EXCEPTION", cause])
        elif line.startswith("[ERROR]") and not any(k in line for k in _NOISE):
            if line[:400] not in errors:
                errors.append(line[:400])
    return records, errors


def parse_plog(root: Path) -> tuple[list, list]:
    """(verify records, error lines) from every plog file under root/plog (see parse_log_lines)."""
    records, errors = [], []
    for f in sorted(glob.glob(str(root / "plog" / "**" / "*.log"), recursive=True)):
        r, e = parse_log_lines(Path(f).read_text(errors="replace").splitlines())
        records += r
        errors += [x for x in e if x not in errors]
    return records, errors[:50]


def _torch_dtypes():
    import torch

    return {"bf16": torch.bfloat16, "f32": torch.float32, "fp32": torch.float32, "f16": torch.float16,
            "fp16": torch.float16, "i32": torch.int32, "int32": torch.int32, "i8": torch.int8, "int8": torch.int8,
            "i64": torch.int64, "bool": torch.bool, "i1": torch.bool}


def _annotated_shape(kernel, name: str):
    """Static shape from the jit function's `pypto.Tensor(shape, dtype)` annotation, or None."""
    fn = getattr(kernel, "_original_func", kernel)
    try:
        ann = inspect.signature(fn).parameters[name].annotation
        shape = [int(d) for d in ann.shape]
    except Exception:
        return None
    return shape if all(d >= 0 for d in shape) else None


def _build_args(mod, arrays: dict, device: str | None):
    import torch

    dts = _torch_dtypes()
    outputs = set(mod.OUTPUT_NAMES)
    scratch = set(getattr(mod, "SCRATCH_NAMES", ()))  # the kernel's working buffers: zeros, not returned
    shapes = getattr(mod, "ARG_SHAPES", {}) or {}
    # the host constants' values written into the program (HOST_CONSTANT_VALUES)
    embedded = mod.host_constant_values() if hasattr(mod, "host_constant_values") else {}
    args = []
    for name in mod.ARG_NAMES:
        dt = dts[mod.ARG_DTYPES[name]]
        if name in arrays:
            t = torch.from_numpy(arrays[name]).to(dt).contiguous()
        elif name in embedded:
            t = torch.from_numpy(embedded[name]).to(dt).contiguous()
        elif name in outputs or name in scratch:
            shape = shapes.get(name) or _annotated_shape(mod.kernel, name)
            if shape is None:
                raise ValueError(f"output {name!r}: no ARG_SHAPES entry and no static annotation")
            t = torch.zeros(list(shape), dtype=dt)
        else:
            raise ValueError(f"input {name!r} missing from the input .npz (have {sorted(arrays)})")
        args.append(t.to(device) if device else t)
    return args


def _to_numpy(t):
    import torch

    t = t.detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.numpy()


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _meaningful(line: str) -> bool:
    line = line.strip()
    return bool(line) and "(+0x" not in line and "[0x" not in line and line != "Errcode: FFFFFF!"


def _summary(text: str) -> str:
    """The informative line of a pypto exception (its first line is often just 'Errcode: FFFFFF!')."""
    lines = [_ANSI.sub("", ln).strip() for ln in text.splitlines() if _meaningful(ln)]
    coded = [ln for ln in lines if "ErrCode" in ln or "Error" in ln or "error" in ln]
    return (coded or lines or [text.strip()])[0]


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    kernel_py, in_npz, out_npz = argv[1], argv[2], argv[3]
    verify = argv[4] if len(argv) == 5 else "default"
    vopts = VERIFY_MODES.get(verify)
    if vopts is None:
        vopts = {"enable_pass_verify": True, "pass_verify_pass_filter": list(json.loads(verify))}
    if vopts["enable_pass_verify"]:
        # pypto 0.2.0's verifier writes every verified function's inputs, outputs and goldens to files whatever
        # pass_verify_save_tensor says (sparse_attn_core at flash B = 8: 545 MB): beside OUT.npz, in the caller's
        # temp folder on disk, not in the run folder on /dev/shm, where they would take memory
        vopts = {**vopts, "pass_verify_save_tensor_dir": str(Path(out_npz).resolve().parent / "pypto-verify")}
    npu = os.environ.get("ATTNC_PYPTO_NPU") == "1"
    parent = os.environ.get("ATTNC_PYPTO_PARENT", "")
    die_with_parent(9, int(parent) if parent.isdigit() else None)  # SIGKILL; its run folder is swept later
    _phase("starting (numpy, torch)")
    meta = {"aicore_us": None, "verify": [], "errors": [], "wall_s": None, "process_s": None, "exception": None}
    root = run_dir_for_pid(os.getpid())
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    console = root / "console.log"
    rc = 0
    watchdog = watch_parent(int(parent) if parent.isdigit() else None,
                            [str(root), *filter(None, os.environ.get("ATTNC_PYPTO_PARENT_TMP", "").split("\n"))])
    try:
        _redirect_outputs(root)
        os.environ["ATTNC_PYPTO_VERIFY"] = json.dumps(vopts)  # older generated modules read this at import
        import numpy as np
        import torch

        _phase("importing pypto")
        with _console_to(console):
            import pypto
        device = None
        if npu:
            import torch_npu  # noqa: F401

            device = "npu"
        else:
            _phase("loading pypto's torch calculator")
            _load_calculator(console)
            _fix_verify_inputs(console)
        _phase("loading the kernel")

        spec = importlib.util.spec_from_file_location("attnc_pypto_kernel", kernel_py)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        kernel = mod.kernel
        if hasattr(kernel, "_verify_options"):
            kernel._verify_options = dict(vopts)  # authoritative, whatever the module's decorator said
        with np.load(in_npz) as data:
            arrays = {k: data[k] for k in data.files}
        args = _build_args(mod, arrays, device)

        pypto.set_verify_golden_data(goldens=None)
        _phase("compiling and simulating" + (" (with per-pass verify)" if vopts["enable_pass_verify"] else ""))
        t0 = time.perf_counter()
        with _console_to(console):
            kernel(*args)
        meta["wall_s"] = time.perf_counter() - t0
        _phase("writing outputs, cleaning up")

        runs = sorted(glob.glob(str(root / "output" / "output_*")), key=os.path.getmtime)
        meta["aicore_us"] = aicore_time_us(Path(runs[-1])) if runs else None
        meta["tasks"] = submitted_tasks(Path(runs[-1])) if runs else None
        keep = os.environ.get("ATTNC_PYPTO_TRACE_DIR")
        if keep and runs:  # the cost model's Perfetto trace and swim lanes, before the run dir is removed
            sim_out = Path(runs[-1]) / "CostModelSimulationOutput"
            for src_name, dst_name in (("_simulate.pefetto.trace.json", "perfetto.json"),
                                       ("_simulate.swim.json", "swim.json")):
                if (sim_out / src_name).exists():
                    shutil.copyfile(sim_out / src_name, Path(keep) / dst_name)
        outs = {}
        if npu or vopts["enable_pass_verify"]:  # without the verifier SIM computes no values
            viewed = getattr(mod, "RESULT_SHAPES", {})  # outputs the kernel writes as token rows: the stage's view
            outs = {n: _to_numpy(a).reshape(viewed.get(n, a.shape)) for n, a in zip(mod.ARG_NAMES, args)
                    if n in mod.OUTPUT_NAMES}
        np.savez(out_npz, **outs)
    except BaseException as exc:  # noqa: BLE001 - report everything, incl. KeyboardInterrupt
        rc = 1
        meta["exception"] = f"{type(exc).__name__}: {_summary(str(exc))}"[:500]
        traceback.print_exc(file=sys.stderr)
    finally:
        try:
            meta["verify"], meta["errors"] = parse_plog(root)
        except Exception as exc:  # noqa: BLE001
            meta["errors"].append(f"plog parse failed: {exc}")
        if rc:
            coded = [e for e in meta["errors"] if "ErrCode" in e]  # not the continuation chunks of a long message
            notes = (coded or meta["errors"])[-2:]
            if not notes and console.exists():
                notes = [ln for ln in console.read_text(errors="replace").splitlines() if _meaningful(ln)][-2:]
            for line in notes:
                print(f"pypto: {_ANSI.sub('', line).strip()[:300]}", file=sys.stderr)
            print(f"ATTNC_PYPTO_FAIL: {meta['exception']}", file=sys.stderr)
        meta["process_s"] = time.perf_counter() - T_START
        Path(out_npz + ".json").write_text(json.dumps(meta))
        if os.environ.get("ATTNC_PYPTO_KEEP") == "1":
            print(f"pypto run files kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
            if vopts.get("pass_verify_save_tensor_dir"):
                shutil.rmtree(vopts["pass_verify_save_tensor_dir"], ignore_errors=True)
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait()
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
