"""Child-process entry: run one generated pypto kernel module in SIM mode and write its outputs.

    python -m attnc.codegen.pypto_sim.runner KERNEL.py IN.npz OUT.npz VERIFY(default|tensor-graph|none)

pypto 0.2.0 needs two fixes to be useful on a CPU box (see the project notes): its verifier is handed all-zero
copies of the inputs (so outputs would be garbage) and it rebuilds its torch "calculator" with cmake in every
process (~20 s). Here the verifier gets the real buffers and the calculator is built once into a cache.
Everything pypto writes goes to a private directory on tmpfs that is removed at the end."""
from __future__ import annotations

import contextlib
import csv
import ctypes
import glob
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

CALC_CACHE = Path(os.environ.get("ATTNC_PYPTO_CALC_CACHE", Path.home() / ".cache" / "attnc" / "pypto-calc"))
_VERIFY_LINE = re.compile(r"\[VERIFY\]:(?:ErrCode: \S+ )?(\S+) Verify for \d+ data view list index (\d+) result (\w+)")
_VERIFY_THROW = re.compile(r"VerifyPass failed for function (\S+), pass (\S+) \(passIndex: \d+, captureIndex: (\d+)\)")


def _private_root() -> Path:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    return Path(tempfile.mkdtemp(prefix="attnc-pypto-", dir=base))


def _redirect(root: Path) -> None:
    """Must run before pypto is imported: it reads these at load/first use."""
    os.environ["TILE_FWK_OUTPUT_DIR"] = str(root / "output")
    os.environ["ASCEND_PROCESS_LOG_PATH"] = str(root / "plog")
    os.environ["PYPTO_HOME"] = str(root / "home")
    # the cost model shells out to python3 swim-lane plotting scripts; a no-op python3 skips them
    stub = root / "bin"
    stub.mkdir()
    (stub / "python3").write_text("#!/bin/sh\nexit 0\n")
    (stub / "python3").chmod(0o755)
    os.environ["PATH"] = f"{stub}:{os.environ.get('PATH', '')}"


def _load_calculator() -> None:
    from pypto._utils import BuildOnlineManager

    mgr = BuildOnlineManager()
    if mgr.calculator_loaded:
        return
    lib = CALC_CACHE / "install" / "lib" / "libtile_fwk_calculator.so"
    if not lib.exists():
        CALC_CACHE.mkdir(parents=True, exist_ok=True)
        torch_ctx = mgr._TorchContext()
        ctx = mgr._CMakeContext.CompileContext(src_dir=Path(mgr.pkg_lib_dir, "calculator"), tmp_dir=CALC_CACHE)
        ctx.cfg_cmd_ext = (f"-DPY3_MOD_TORCH_VERSION={torch_ctx.torch_version} "
                           f"-DPY3_MOD_TORCH_ROOT_PATH={torch_ctx.torch_root_dir} "
                           f"-DPY3_MOD_TORCH_C_GLIBCXX_USE_CXX11_ABI={torch_ctx.torch_c_use_cxx11_abi}")
        ctx.build_job_num = os.cpu_count() or 2
        mgr._CMakeContext().compile(ctx=ctx)
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    mgr.calculator_loaded = True


def _patch_verify_inputs() -> None:
    import pypto
    from pypto import pypto_impl
    from pypto.frontend.parser import entry
    from pypto.runtime import _pto_verify_datas

    def setup_verify_data(pto_tensors):
        if not pypto.get_verify_options().get("enable_pass_verify"):
            return
        _load_calculator()
        pypto_impl.SetVerifyData(entry._pto_to_tensor_data(pto_tensors), [], _pto_verify_datas.get_data())

    entry.JitCallableWrapper._setup_verify_data = staticmethod(setup_verify_data)


@contextlib.contextmanager
def _quiet(logfile: Path):
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def aicore_us(run_dir: Path) -> float | None:
    """AICore end-to-end time: first AIC/AIV task start to last end in the cost model's swim lanes, at 1.8 GHz."""
    f = run_dir / "CostModelSimulationOutput" / "_simulate.swim.json"
    if not f.exists():
        return None
    lo = hi = None
    for core in json.loads(f.read_text()):
        if core.get("coreType") not in ("AIC", "AIV"):
            continue
        for task in core.get("tasks", []):
            s, e = task.get("execStart", 0), task.get("execEnd", 0)
            if e >= s:
                lo = s if lo is None else min(lo, s)
                hi = e if hi is None else max(hi, e)
    return None if lo is None else (hi - lo) / 1800.0


def verify_records(root: Path) -> tuple[list, list]:
    records, errors = [], []
    for f in sorted(glob.glob(str(root / "plog" / "**" / "*.log"), recursive=True)):
        for line in Path(f).read_text(errors="replace").splitlines():
            m = _VERIFY_LINE.search(line)
            if m:
                records.append([m.group(1), int(m.group(2)), m.group(3)])
                continue
            m = _VERIFY_THROW.search(line)
            if m:
                records.append([f"{m.group(1)}_{m.group(2)}", int(m.group(3)), "EXCEPTION"])
            elif line.startswith("[ERROR]") and not any(k in line for k in ("cmd error: python3", "F7A001", "FB4001")):
                errors.append(line[:300])
    return records, errors


def main(argv: list[str]) -> int:
    kernel_py, in_npz, out_npz, verify = argv[1], argv[2], argv[3], argv[4]
    root = _private_root()
    try:
        _redirect(root)
        import numpy as np
        import torch
        import pypto

        _load_calculator()
        _patch_verify_inputs()
        options = {"none": {"enable_pass_verify": False},
                   "tensor-graph": {"enable_pass_verify": True, "pass_verify_pass_filter": []},
                   "default": {"enable_pass_verify": True}}[verify]
        os.environ["ATTNC_PYPTO_VERIFY"] = json.dumps(options)  # read by the generated module
        spec = importlib.util.spec_from_file_location("attnc_kernel", kernel_py)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        dtypes = {"bf16": torch.bfloat16, "f32": torch.float32, "i32": torch.int32}
        with np.load(in_npz) as data:
            arrays = {k: data[k] for k in data.files}
        args = []
        for name in mod.ARG_NAMES:
            if name in mod.OUTPUT_NAMES:
                args.append(torch.zeros(mod.ARG_SHAPES[name], dtype=dtypes[mod.ARG_DTYPES[name]]))
            else:
                args.append(torch.from_numpy(arrays[name]).to(dtypes[mod.ARG_DTYPES[name]]).contiguous())
        kernel = mod.kernel
        pypto.set_verify_golden_data(goldens=None)
        t0 = time.perf_counter()
        with _quiet(root / "console.log"):
            kernel(*args)
        wall = time.perf_counter() - t0
        runs = sorted(glob.glob(str(root / "output" / "output_*")), key=os.path.getmtime)
        us = aicore_us(Path(runs[-1])) if runs else None
        records, errors = verify_records(root)
        outs = {n: a.float().numpy() if a.is_floating_point() else a.numpy()
                for n, a in zip(mod.ARG_NAMES, args) if n in mod.OUTPUT_NAMES}
        np.savez(out_npz, **outs)
        Path(out_npz + ".json").write_text(json.dumps(
            {"aicore_us": us, "verify": records, "errors": errors, "wall_s": wall}))
        return 0
    finally:
        if os.environ.get("ATTNC_PYPTO_KEEP"):  # debugging: keep pypto's logs and run files
            print(f"pypto files kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
