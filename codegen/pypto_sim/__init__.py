"""Run generated pypto 0.2.0 programs in SIM mode on the CPU, one child process per call (pypto is never
imported into the calling process: a failed pypto compile leaves its process unusable)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class PyptoSimError(Exception):
    """The SIM run failed (compile error, crash, timeout); one line with the tail of the child's output."""


@dataclass
class SimResult:
    outputs: dict
    aicore_us: float | None
    verify: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def failed_records(self) -> list:
        return [r for r in self.verify if r[2] not in ("PASS", "NO_COMPARE")]


def _child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ, **(extra or {}))
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), root) if p)
    return env


def run_in_subprocess(kernel_py: str | Path, inputs: dict[str, np.ndarray], *, verify: str = "default",
                      timeout_s: float = 900, python: str = sys.executable, npu: bool = False) -> SimResult:
    with tempfile.TemporaryDirectory(prefix="attnc-sim-") as tmp:
        in_npz, out_npz = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(in_npz, **inputs)
        cmd = [python, "-m", "attnc.codegen.pypto_sim.runner", str(kernel_py), in_npz, out_npz, verify]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                  env=_child_env({"ATTNC_PYPTO_NPU": "1"} if npu else None))
        except subprocess.TimeoutExpired:
            raise PyptoSimError(f"pypto SIM run of {kernel_py} timed out after {timeout_s:.0f} s") from None
        if proc.returncode != 0 or not os.path.exists(out_npz):
            tail = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()][-1:] or ["no output"]
            raise PyptoSimError(f"pypto SIM run of {kernel_py} failed (exit {proc.returncode}): {tail[0][:300]}")
        meta = json.loads(Path(out_npz + ".json").read_text())
        with np.load(out_npz) as data:
            outputs = {k: data[k] for k in data.files}
    return SimResult(outputs, meta["aicore_us"], meta["verify"], meta["errors"], meta["wall_s"])


def _importable(module: str) -> bool:
    code = f"import {module}"
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def pypto_available() -> bool:
    return _importable("pypto")


def npu_available() -> bool:
    return _importable("torch_npu")
