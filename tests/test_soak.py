"""benchmarks/soak.py (issue 21): its checks catch what they are for (fast, no attnc command run), and a short seeded
sample of the soak itself behind `-m slow` (each command starts torch: ~10-25 s on a loaded 2-core machine)."""
import importlib.util
import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _soak_module():
    spec = importlib.util.spec_from_file_location("soak", os.path.join(ROOT, "benchmarks", "soak.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def soak(tmp_path):
    mod = _soak_module()
    s = mod.Soak.__new__(mod.Soak)  # no tmpfs, no reference runs: the checks alone
    s.root, s.timeout, s.log, s.disk = str(tmp_path), 10.0, lambda m: None, "RLIMIT_FSIZE 4 KiB"
    s.hostile = str(tmp_path / "hostile")
    s.templates = mod.templates(s.hostile)
    t = next(t for t in s.templates if t.name == "compile mlir")
    s.reference = {t.name: (0, {"decode_swa.mlir": b"IR\n"}, b"", 1.0)}
    return mod, s, t


def _check(mod, s, t, tmp_path, files, code=0, err="", fault="none", seconds=1.0, signal_at=None):
    folder, tmp, shm = tmp_path / "c", tmp_path / "t", tmp_path / "s"
    for d in (folder, tmp, shm):
        d.mkdir(exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    res = mod.Result(0, t.name, fault, code, seconds, signal_at=signal_at)
    s.check(res, t, str(folder), b"", err, str(tmp), str(shm), "no-such-tag")
    return res.problems


def test_a_clean_command_has_no_problem(soak, tmp_path):
    mod, s, t = soak
    assert _check(mod, s, t, tmp_path, {"decode_swa.mlir": b"IR\n"}) == []


@pytest.mark.parametrize("files, code, err, fault, problem", [
    ({"decode_swa.mlir": b"IR\n", ".attnc-x.tmp": b"I"}, 0, "", "none", "left behind: .attnc-x.tmp"),
    ({"decode_swa.mlir": b"I"}, -9, "", "SIGKILL", "differs from the reference"),
    ({}, 0, "", "none", "undisturbed run without"),
    ({}, 3, "attnc: internal error: KeyError: x\n", "SIGTERM", "exit 3"),
    ({}, 2, "Traceback (most recent call last):\nattnc: error: x\n", "full disk", "traceback on stderr"),
    ({}, 2, "attnc: error: x\nattnc: error: y\n", "full disk", "without exactly one error line"),
    ({}, 143, "attnc: error: x\n", "SIGTERM", "without 'attnc: terminated'"),
    ({}, None, "", "none", "no exit within"),
    ({}, -6, "Fatal Python error: Aborted\n", "SIGTERM", "killed by SIGABRT, sent SIGTERM"),
    ({}, -9, "", "none", "killed by SIGKILL, sent none"),
])
def test_each_check_catches_its_problem(soak, tmp_path, files, code, err, fault, problem):
    mod, s, t = soak
    assert any(problem in p for p in _check(mod, s, t, tmp_path, files, code, err, fault))


def test_a_sigterm_the_command_worked_on_after_is_lost(soak, tmp_path):
    """Exit 0 long after a SIGTERM was sent: the signal was lost (a loop over `plot schedule` saw one, 16 s of work
    after it); exit 0 right after it is a command that had finished its work."""
    mod, s, t = soak
    files = {"decode_swa.mlir": b"IR\n"}
    assert any("SIGTERM lost" in p for p in _check(mod, s, t, tmp_path, files, 0, "", "SIGTERM", 20.0, 3.8))
    assert _check(mod, s, t, tmp_path, files, 0, "", "SIGTERM", 4.0, 3.8) == []


def test_a_process_left_behind_is_found_and_ended(soak, tmp_path):
    mod, s, t = soak
    tag = "soak-test-orphan"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             env=dict(os.environ, ATTNC_SOAK_TAG=f"{os.getpid()}-{tag}"))
    try:
        folder = tmp_path / "c"
        folder.mkdir()
        (folder / "decode_swa.mlir").write_bytes(b"IR\n")
        res = mod.Result(0, t.name, "SIGKILL", -9, 1.0)
        s.check(res, t, str(folder), b"", "", str(tmp_path / "t"), str(tmp_path / "s"), tag)
        assert res.problems == ["1 process(es) outlived it"]
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()


@pytest.mark.slow
def test_a_seeded_soak_sample_finds_nothing(tmp_path):
    """A short soak: 12 commands of every kind, 4 at a time, killed and on a full disk (~5 min here)."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "soak.py"), "--commands", "12",
                          "--seed", "3", "--root", str(tmp_path / "soak")], capture_output=True, text=True,
                         timeout=3600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def test_a_memory_refusal_is_its_own_outcome(soak, tmp_path):
    """The memory check refuses when other jobs hold the machine's memory: an outcome of the machine, not a
    divergence from the reference."""
    mod, s, t = soak
    folder, tmp, shm = tmp_path / "c", tmp_path / "t", tmp_path / "s"
    folder.mkdir()
    res = mod.Result(0, t.name, "none", 2, 1.0)
    s.check(res, t, str(folder), b"", "attnc: error: run x may need up to 0.9 GB of memory (...), the machine has "
            "0.5 GB available\n", str(tmp), str(shm), "no-such-tag")
    assert res.outcome == "2 refused (memory)" and res.problems == []


def test_the_table_counts_each_kind_of_problem_and_states_the_run():
    """The issue's counts (partial files, divergent outputs, orphans, ...) come from the problem lines, a process
    counted per process; the run line names its own job count and seed (it said '4 at a time' for any --jobs)."""
    mod = _soak_module()
    R = mod.Result
    results = [R(0, "compile mlir", "SIGKILL", -9, 1.0, "killed (SIGKILL)", ["left behind: .attnc-x.tmp"]),
               R(1, "compile mlir", "SIGKILL", -9, 1.0, "killed (SIGKILL)", ["3 process(es) outlived it",
                                                                             "left in its TMPDIR: ['a']"]),
               R(2, "run interp", "none", 0, 1.0, "0 ok", ["swa.npz: differs from the reference (1 vs 2 bytes)"]),
               R(3, "run interp", "SIGTERM", 143, 1.0, "143 terminated", [])]
    c = mod.counts(results, ["cache: ab.json does not verify: []"])
    assert (c["partial or temp files"], c["divergent outputs"], c["orphan processes"],
            c["cache entries that do not verify"], c["lost outputs"]) == (2, 1, 3, 1, 0)
    text = mod.table(results, [], "tmpfs", 600.0, 3, 7)
    assert "4 commands, 3 at a time, seed 7, 10 min" in text
    head, _, row = text.splitlines()[-3:]
    assert dict(zip(head.strip("| ").split(" | "), row.strip("| ").split(" | "))) == {
        "partial or temp files": "2", "divergent outputs": "1", "cache entries that do not verify": "0",
        "lost outputs": "0", "orphan processes": "3", "crashes": "0", "lost signals": "0", "tracebacks": "0",
        "hangs": "0", "exit code or error line": "0"}
