"""Run generated pypto 0.2.0 programs (SIM mode on the CPU, or an NPU when torch_npu is present), one child
process per call. pypto is never imported into the calling process: a failed pypto compile leaves its process
unusable, and the child needs environment set before pypto loads. See runner.py for the kernel-module protocol
and COOKBOOK.md for the pypto 0.2.0 constructs checked with this harness."""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .runner import VERIFY_MODES, run_dir_for_pid

from attnc.errors import AttncError

__all__ = ["PyptoSimError", "SimResult", "run_in_subprocess", "pypto_available", "npu_available", "RUNNER"]

RUNNER = Path(__file__).resolve().with_name("runner.py")
_OK = ("PASS", "NO_COMPARE")
# pypto 0.2.0's runtime (workspace, slots, item pools) logs its failed assertions and goes on with a broken state
# (F74007 missing slot allocation, F7A008 item pool index out of range, F74001 stitch pool exhausted, ...): the
# simulated time and any outputs of such a run are not trustworthy
RUNTIME_ERROR_TAG = "[MACHINE]:ErrCode"


class PyptoSimError(AttncError, RuntimeError):
    """The child run failed (compile error, crash, timeout). The message is one line and ends with the tail of
    the child's stderr."""


@dataclass
class SimResult:
    outputs: dict  # name -> np.ndarray (bf16/fp16 as float32); empty for verify="none"
    aicore_us: float | None  # simulated AICore end-to-end time (None on NPU)
    verify: list = field(default_factory=list)  # [[pass_name, index, result], ...] from the pass verifier
    errors: list = field(default_factory=list)  # non-benign [ERROR] lines of pypto's log
    wall_s: float = 0.0  # the kernel call in the child (parse + passes + verify interpreter + cost model)
    process_s: float = 0.0  # the whole child process (imports, calculator load, call)
    tasks: dict | None = None  # tasks submitted by the cost model's scheduler: {"total", "cube", "vector"}
    failed_records: list = field(init=False)  # verify records that are not PASS / NO_COMPARE

    def __post_init__(self):
        self.failed_records = [r for r in self.verify if r[2] not in _OK]


def _tail(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    fail = [ln for ln in lines if ln.startswith("ATTNC_PYPTO_FAIL:")]
    if fail:  # the runner's own summary: pypto's last log errors, then the exception
        picked = [ln for ln in lines if ln.startswith("pypto:")][-2:] + fail[-1:]
    else:
        picked = lines[-n:]
    return " | ".join(ln[:300] for ln in picked) or "no output"


def _crash_notes(pid: int) -> str:
    """After a child died without cleaning up (signal, kill): the tail of its console log and pypto errors."""
    from .runner import parse_plog

    root = run_dir_for_pid(pid)
    notes = []
    try:
        console = root / "console.log"
        if console.exists():
            notes += [ln for ln in console.read_text(errors="replace").splitlines() if ln.strip()][-2:]
        notes += parse_plog(root)[1][-2:]
    except Exception:  # noqa: BLE001 - diagnostics only
        pass
    return " | ".join(n.strip()[:300] for n in notes)


# pypto 0.2.0's cost model hands paths under its output folder to a shell unquoted (system("python3 ...
# draw_swim_lane.py ... <path>")); a run folder with a space or a shell metacharacter makes the child exit 1 silently
_SHELL_PLAIN = re.compile(r"[A-Za-z0-9_./+,:@%=-]+")


def check_run_folder() -> None:
    """Refuse a pypto run folder whose path a shell would split or interpret (see _SHELL_PLAIN)."""
    base = run_dir_for_pid(0).parent
    if not _SHELL_PLAIN.fullmatch(str(base)):
        source = "ATTNC_PYPTO_TMP" if os.environ.get("ATTNC_PYPTO_TMP") else "the temp folder (TMPDIR)"
        raise PyptoSimError(f"pypto run folder {str(base)[:200]!r} (from {source}) has characters a shell splits or "
                            f"interprets, and pypto 0.2.0's cost model passes it to a shell unquoted: set "
                            f"ATTNC_PYPTO_TMP to a plain path")


_HELD_TEMP: list[str] = []  # temp folders of this process a SIM child's watchdog removes if this process is killed


@contextlib.contextmanager
def held_temp_folder(prefix: str):
    """tempfile.TemporaryDirectory, also removed by a running SIM child's watchdog (runner.watch_parent) when this
    process is killed by SIGKILL and cannot remove it itself."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        _HELD_TEMP.append(tmp)
        try:
            yield tmp
        finally:
            _HELD_TEMP.remove(tmp)


def sweep_stale_run_folders() -> int:
    """Remove the run folders (attnc-pypto-<pid>) of SIM children that are gone without their cleanup (killed with
    attnc by SIGKILL): they hold pypto's output in /dev/shm, i.e. memory. Only this user's, only dead pids."""
    removed = 0
    base = run_dir_for_pid(0).parent
    try:
        entries = list(base.glob("attnc-pypto-*"))
    except OSError:
        return 0
    for d in entries:
        pid = d.name.rsplit("-", 1)[1]
        try:
            if not pid.isdigit() or d.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
        except OSError:  # alive (another user's), or gone between the listing and the check
            continue
    return removed


def run_in_subprocess(kernel_py: str | Path, inputs: dict[str, np.ndarray], *, timeout_s: float = 600,
                      verify: str | list = "default", python: str = sys.executable, npu: bool = False,
                      env: dict | None = None, on_phase=None) -> SimResult:
    """Run `kernel_py` (module protocol: see runner.py) once on `inputs` in a fresh child process.

    verify: "default" (pypto's default pass filter), "tensor-graph" (tensor graph only, cheapest mode that still
    produces outputs), "all", "none" (time only: SIM writes no outputs, so `outputs` is empty), or a list of pass
    names. npu=True runs in NPU mode (needs torch_npu). Raises PyptoSimError on timeout, crash or compile error.
    `on_phase(text)` is called from a watcher thread when the child starts a phase (import, compile, simulate ...).
    """
    kernel_py = Path(kernel_py).resolve()
    check_run_folder()
    sweep_stale_run_folders()
    if isinstance(verify, (list, tuple)):
        verify = json.dumps(list(verify))
    elif verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {sorted(VERIFY_MODES)} or a list of pass names, not {verify!r}")
    child_env = dict(os.environ, **(env or {}))
    child_env.pop("ATTNC_PYPTO_NPU", None)
    child_env["ATTNC_PYPTO_PARENT"] = str(os.getpid())  # the child dies with this process (runner.die_with_parent)
    if npu:
        child_env["ATTNC_PYPTO_NPU"] = "1"
    with held_temp_folder("attnc-sim-io-") as tmp:
        child_env["ATTNC_PYPTO_PARENT_TMP"] = "\n".join(_HELD_TEMP)
        in_npz, out_npz = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(in_npz, **{k: np.ascontiguousarray(v) for k, v in inputs.items()})
        cmd = [python, str(RUNNER), str(kernel_py), in_npz, out_npz, verify]
        child_env["ATTNC_PYPTO_PHASE_FILE"] = os.path.join(tmp, "phase")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env,
                                cwd=tmp, start_new_session=True)  # own group: g++/cost-model children die with it
        watcher = None
        try:  # from here an interrupt reaches the `except BaseException` below, which ends the child's group
            watcher = _watch_phases(child_env["ATTNC_PYPTO_PHASE_FILE"], on_phase) if on_phase else None
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with_pg_kill(proc)
            out, err = proc.communicate()
            err = (err or out or "") + "\n" + _crash_notes(proc.pid)
            shutil.rmtree(run_dir_for_pid(proc.pid), ignore_errors=True)
            raise PyptoSimError(f"pypto run of {kernel_py.name} timed out after {timeout_s:g} s: "
                                f"{_tail(err)}") from None
        except BaseException:  # Ctrl-C, SIGTERM (raised by the CLI's handler): the child's group ends with us
            with_pg_kill(proc)
            proc.wait()
            shutil.rmtree(run_dir_for_pid(proc.pid), ignore_errors=True)
            raise
        finally:
            if watcher is not None:
                watcher()
        meta_path = Path(out_npz + ".json")
        if proc.returncode != 0 or not os.path.exists(out_npz):
            if proc.returncode < 0:
                err = (err or out or "") + "\n" + _crash_notes(proc.pid)
            shutil.rmtree(run_dir_for_pid(proc.pid), ignore_errors=True)  # if the child died before its cleanup
            how = f"exit {proc.returncode}"
            if proc.returncode < 0:
                try:
                    how = f"killed by {signal.Signals(-proc.returncode).name}"
                except ValueError:
                    how = f"killed by signal {-proc.returncode}"
            raise PyptoSimError(f"pypto run of {kernel_py.name} failed ({how}): {_tail(err or out)}")
        meta = json.loads(meta_path.read_text())
        runtime = [e for e in meta["errors"] if RUNTIME_ERROR_TAG in e]
        if runtime:
            raise PyptoSimError(f"pypto run of {kernel_py.name} hit runtime errors, its results are not trustworthy: "
                                f"{_tail(chr(10).join(runtime[:2]), 2)}")
        with np.load(out_npz) as data:
            outputs = {k: data[k] for k in data.files}
    return SimResult(outputs=outputs, aicore_us=meta["aicore_us"], verify=meta["verify"], errors=meta["errors"],
                     wall_s=meta["wall_s"] or 0.0, process_s=meta["process_s"] or 0.0, tasks=meta.get("tasks"))


def _watch_phases(path: str, on_phase):
    """Poll the child's phase file from a thread, calling on_phase on each change; returns a stop function."""
    import threading

    stop = threading.Event()

    def run():
        last = None
        while not stop.wait(0.2):
            try:
                text = Path(path).read_text()
            except OSError:
                continue
            if text and text != last:
                last = text
                on_phase(text)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def finish():
        stop.set()
        thread.join()

    return finish


def with_pg_kill(proc: subprocess.Popen) -> None:
    """Kill the child's process group (the child and whatever it spawned), only that group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@functools.lru_cache(maxsize=None)
def _importable_in_child(module: str, python: str) -> bool:
    if python == sys.executable and importlib.util.find_spec(module) is None:
        return False
    with tempfile.TemporaryDirectory(prefix="attnc-probe-") as tmp:  # keep pypto's import-time logs out of ~
        env = dict(os.environ, ASCEND_PROCESS_LOG_PATH=os.path.join(tmp, "plog"),
                   PYPTO_HOME=os.path.join(tmp, "home"), TILE_FWK_OUTPUT_DIR=os.path.join(tmp, "output"))
        try:
            r = subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=180, env=env, cwd=tmp)
        except (subprocess.TimeoutExpired, OSError):
            return False
    return r.returncode == 0


def pypto_available(python: str = sys.executable) -> bool:
    """pypto imports without error in a child process (cached per interpreter)."""
    return _importable_in_child("pypto", python)


def npu_available(python: str = sys.executable) -> bool:
    """torch_npu imports without error in a child process (cached per interpreter)."""
    return _importable_in_child("torch_npu", python)
