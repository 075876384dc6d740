"""Nothing lost, nothing leaked, nothing poisoned (issue 21): output paths written through what is there, locations
that never open files, bounded input readers, a verified tuner cache, signals. Each test fails on the code before
its fix; all are fast (no SIM run)."""
import os
import stat
import threading
import time

import pytest

from attnc.cli import main

from test_hostile_inputs import cli, one_error_line, snapshot

TINY = ["--config", "tiny"]


def _sim_run_with_fake_child(fake, prelude: str = "") -> str:
    """Python source of a child process that runs `attnc run qkv_proj_rope --target pypto-sim` with the SIM child
    started by the executable `fake` instead of the real runner (after `prelude`)."""
    return ("import sys\n" + prelude
            + "import attnc.codegen.pypto.target as target\n"
            "from attnc.codegen.pypto import sim as pypto_sim\n"
            "real = pypto_sim.run_in_subprocess\n"
            f"target.run_in_subprocess = lambda kernel, inputs, **kw: real(kernel, inputs, **{{**kw, 'python': {str(fake)!r}}})\n"
            "from attnc.cli import main\n"
            "sys.exit(main(['run', 'qkv_proj_rope', '--config', 'tiny', '--target', 'pypto-sim']))\n")


# -------------------------------------------------------------------------------------------------- output paths


def _reader(path, into: list):
    """Read a FIFO to its end in a thread (the writer's open blocks until a reader is there)."""
    def run():
        with open(path, "rb") as f:
            into.append(f.read())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_output_onto_a_fifo_writes_through_it(tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list = []
    reader = _reader(fifo, got)
    code, _, err = cli(capsys, "compile", "qkv_proj_rope", *TINY, "-o", fifo)
    reader.join(30)
    assert code == 0, err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a regular file"
    assert got and got[0].startswith(b"// made by attnc") and b"func.func @qkv_proj_rope" in got[0]
    assert sorted(os.listdir(tmp_path)) == ["pipe"]  # no temp file left next to it


def _char_device(path) -> bool:
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a second null device, private to the test
    except (PermissionError, OSError):
        return False
    return True


@pytest.mark.parametrize("argv", [["compile", "qkv_proj_rope", *TINY, "-o"],
                                  ["run", "qkv_proj_rope", *TINY, "--out"],
                                  ["inputs", "qkv_proj_rope", *TINY, "-o"]], ids=["compile", "run", "inputs"])
def test_output_onto_a_character_device_leaves_it_a_device(tmp_path, capsys, argv):
    dev = tmp_path / "null"
    if not _char_device(dev):
        pytest.skip("mknod not permitted here")
    code, _, err = cli(capsys, *argv, dev)
    assert code == 0, err
    st = os.lstat(dev)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert sorted(os.listdir(tmp_path)) == ["null"]


def test_output_onto_dev_null_leaves_it_a_device(capsys):
    from attnc.io import resolve_output

    # asked first, so that code which would replace /dev/null never gets to run this test's command
    assert resolve_output("/dev/null")[0] == "stream"
    before = os.stat("/dev/null")
    code, _, err = cli(capsys, "compile", "qkv_proj_rope", *TINY, "-o", "/dev/null")
    assert code == 0, err
    after = os.lstat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino


def test_replaced_file_keeps_its_mode(tmp_path, capsys):
    out = tmp_path / "k.mlir"
    out.write_text("old")
    os.chmod(out, 0o600)
    code, _, err = cli(capsys, "compile", "qkv_proj_rope", *TINY, "-o", out)
    assert code == 0, err
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert out.read_text().startswith("// made by attnc")


def test_symlink_inside_its_folder_is_written_through(tmp_path, capsys):
    (tmp_path / "real.mlir").write_text("old")
    os.symlink("real.mlir", tmp_path / "link.mlir")
    code, _, err = cli(capsys, "compile", "qkv_proj_rope", *TINY, "-o", tmp_path / "link.mlir")
    assert code == 0, err
    assert os.path.islink(tmp_path / "link.mlir")
    assert (tmp_path / "real.mlir").read_text().startswith("// made by attnc")


def test_symlink_leaving_its_folder_is_refused(tmp_path, capsys):
    outside = tmp_path / "secret.txt"
    outside.write_text("keep")
    (tmp_path / "out").mkdir()
    os.symlink(outside, tmp_path / "out" / "k.mlir")
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "compile", "qkv_proj_rope", *TINY, "-o", tmp_path / "out" / "k.mlir")
    one_error_line(code, err, r"k\.mlir: cannot write \(a symbolic link that leaves its folder")
    assert snapshot(tmp_path) == before and os.path.islink(tmp_path / "out" / "k.mlir")


@pytest.mark.parametrize("argv", [["compile", "qkv_proj_rope", "-o", ""],
                                  ["compile", "qkv_proj_rope", "--dump-dir", ""],
                                  ["run", "qkv_proj_rope", "--out", ""],
                                  ["inputs", "qkv_proj_rope", "-o", ""],
                                  ["plot", "schedule", "qkv_proj_rope", "-o", ""]],
                         ids=["compile-o", "dump-dir", "run-out", "inputs-o", "plot-o"])
def test_empty_output_path_is_refused(capsys, argv):
    code, out, err = cli(capsys, *argv)
    one_error_line(code, err, r"'': cannot write \(empty output path\)")
    assert out == ""


def test_every_output_path_is_checked_before_any_work(tmp_path, capsys, monkeypatch):
    """tune's -o and --plot (and run's --trace-dir, plot's -o) are refused before the stage is built or tuned."""
    from attnc import cli as driver, tune

    def no_work(*a, **k):
        raise AssertionError("work started before the output paths were checked")

    monkeypatch.setattr(tune, "tune", no_work)
    monkeypatch.setattr(driver, "load_source", no_work)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    before = snapshot(tmp_path)
    for argv, pattern in (
            (["tune", "qkv_proj_rope", "-o", tmp_path / "t.json", "--plot", "/proc/attnc-plot.png"],
             r"/proc/attnc-plot\.png: cannot write"),
            (["tune", "qkv_proj_rope", "-o", not_a_dir / "t.json"], r"file is not a directory"),
            (["tune", "qkv_proj_rope", "-o", "/proc/attnc.json"], r"/proc/attnc\.json: cannot write"),
            (["run", "qkv_proj_rope", "--target", "pypto-sim", "--trace-dir", not_a_dir],
             r"exists and is not a directory"),
            (["plot", "schedule", "qkv_proj_rope", "-o", "/proc/attnc.png"], r"/proc/attnc\.png: cannot write"),
            (["inputs", "qkv_proj_rope", "-o", "/proc/attnc.npz"], r"/proc/attnc\.npz: cannot write")):
        code, _, err = cli(capsys, *argv)
        one_error_line(code, err, pattern)
    assert snapshot(tmp_path) == before


def test_tune_writes_the_tuning_file_and_plot_all_or_nothing(tmp_path, monkeypatch):
    """The plot failing to be written leaves no tuning file (and the reverse): one Outputs commit."""
    from attnc import io as aio
    from attnc import tune

    result = tune.TuneResult({"stage": "qkv_proj_rope", "aicore_us": 1.0, "default_aicore_us": 1.0}, [])
    monkeypatch.setattr(tune, "tune", lambda req: result)
    monkeypatch.setattr(tune, "plot_trials_bytes", lambda trials, title: b"\x89PNG fake")
    real_replace = os.replace

    def fail_png(src, dst):
        if str(dst).endswith(".png"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(aio.os, "replace", fail_png)
    code = main(["tune", "qkv_proj_rope", "-o", str(tmp_path / "t.json")])
    assert code == 2
    assert os.listdir(tmp_path) == []


# -------------------------------------------------------------------------------------------------- locations


def _module_at(loc_file: str) -> str:
    return ("builtin.module {\n  func.func @k(%0: tensor<16x16xf32>) -> tensor<16x16xf32> attributes "
            '{arg_names = ["x"], result_names = ["y"]} {\n'
            f'    %1 = "tile.exp"(%0) {{loc = "{loc_file}:1"}} : (tensor<16x16xf32>) -> tensor<16x16xf32>\n'
            "    func.return %1 : tensor<16x16xf32>\n  }\n}\n")


def test_a_location_naming_a_file_never_reads_it(tmp_path, capsys):
    """`loc("/tmp/creds.txt":1:1)` used to put the first identifier of that file into the output as an SSA name."""
    secret = tmp_path / "creds.txt"
    secret.write_text("hunter2 = 1\n")
    src = tmp_path / "in.mlir"
    src.write_text(_module_at(str(secret)))
    code, out, err = cli(capsys, "compile", src)
    assert code == 0, err
    assert "hunter2" not in out and "%0 = tile.exp %x" in out


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_location_naming_a_fifo_or_device_never_opens_it(tmp_path, capsys, monkeypatch, kind):
    """A FIFO used to hang the printer, /dev/zero to be read without bound; any open() of the path fails here."""
    import builtins
    import io as _io

    target = "/dev/zero"
    if kind == "fifo":
        target = str(tmp_path / "fifo")
        os.mkfifo(target)
    src = tmp_path / "in.mlir"
    src.write_text(_module_at(target))
    real_open, real_io_open = builtins.open, _io.open

    def guarded(file, *a, **k):
        assert str(file) != target, f"opened {file} named by a location"
        return real_open(file, *a, **k)

    import tokenize

    real_tokenize_open = tokenize.open

    def guarded_tokenize(file):
        assert str(file) != target, f"opened {file} named by a location"
        return real_tokenize_open(file)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(_io, "open", guarded)
    monkeypatch.setattr(tokenize, "open", guarded_tokenize)  # what linecache reads a file with
    t0 = time.perf_counter()
    code, out, err = cli(capsys, "compile", src, "--print-debuginfo")
    assert code == 0, err
    assert f'loc("{target}":1:1)' in out
    assert time.perf_counter() - t0 < 30


def test_value_names_of_the_dsl_are_kept():
    """Names still come from attnc's own DSL files (by their relative path, a key into the package's table)."""
    from attnc.ir.printing import dsl_sources, variable_name
    from attnc.kernels_src import STAGES, build_stage, resolve_config
    from attnc.ir.printing import render_ir

    assert any(p.startswith("kernels_src/") for p in dsl_sources())
    text = render_ir(build_stage(STAGES["qkv_proj_rope"], resolve_config("tiny")))
    assert "%q" in text or "%kv" in text
    assert variable_name("/etc/passwd:1") is None


# -------------------------------------------------------------------------------------------------- bounded readers


@pytest.mark.parametrize("option", ["--steps-file", "--tuning"])
def test_a_device_as_an_input_file_is_read_to_a_cap(capsys, option):
    """getsize() is 0 for /dev/zero: the readers count bytes while reading and stop one past their cap."""
    from attnc.io import read_bounded  # noqa: F401 - asked first: unbounded code never reads /dev/zero here

    t0 = time.perf_counter()
    code, _, err = cli(capsys, "run", "decode_swa", *TINY, option, "/dev/zero")
    one_error_line(code, err, r"/dev/zero: (the steps file|tuning file) is larger than \d+ bytes")
    assert time.perf_counter() - t0 < 20


@pytest.mark.parametrize("option", ["--steps-file", "--tuning"])
def test_a_fifo_as_an_input_file_is_read_to_a_cap(tmp_path, capsys, option):
    """A FIFO streaming 64 MiB (more than any cap) is refused once the cap is passed, not read to its end."""
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    written = []

    def feed():
        try:
            with open(fifo, "wb") as f:
                for _ in range(64):
                    f.write(b"1\n" * (1 << 19))
                    written.append(1)
        except BrokenPipeError:
            pass

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    code, _, err = cli(capsys, "run", "decode_swa", *TINY, option, fifo)
    t.join(30)
    one_error_line(code, err, r"f: (the steps file|tuning file) is larger than \d+ bytes")
    assert len(written) < 64


@pytest.mark.parametrize("option, text", [("--steps-file", "[" * 100000 + "]" * 100000),
                                          ("--tuning", '{"a": ' * 100000 + "1" + "}" * 100000)])
def test_deeply_nested_json_is_one_error_line(tmp_path, capsys, option, text):
    f = tmp_path / "f.json"
    f.write_text(text)
    code, _, err = cli(capsys, "run", "decode_swa", *TINY, option, f)
    one_error_line(code, err, r"f\.json: not a JSON .*nested deeper than 32 levels")


def test_state_file_reads_only_the_carried_arrays(tmp_path, capsys, monkeypatch):
    """--state used to decompress every member of the file: a 64 MiB bzip2 member (a few hundred bytes on disk)
    that is not a carried array is now never opened."""
    import io
    import zipfile

    import numpy as np

    state = tmp_path / "o.npz"
    code, _, err = cli(capsys, "run", "decode_swa", *TINY, "--start-pos", "0", "--out", state)
    assert code == 0, err
    size = 64 << 20
    with zipfile.ZipFile(state, "a", compression=zipfile.ZIP_BZIP2) as zf:
        with zf.open("zzz.npy", "w", force_zip64=True) as f:
            head = io.BytesIO()
            np.lib.format.write_array_header_1_0(head, {"descr": "|u1", "fortran_order": False, "shape": (size,)})
            f.write(head.getvalue())
            for _ in range(size // (8 << 20)):
                f.write(bytes(8 << 20))
    assert os.path.getsize(state) < 1 << 20
    opened = []
    real_open = zipfile.ZipFile.open

    def recording(self, name, *a, **k):
        opened.append(getattr(name, "filename", name))
        return real_open(self, name, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "open", recording)
    code, _, err = cli(capsys, "run", "decode_swa", *TINY, "--start-pos", "1", "--state", state)
    assert code == 0, err
    assert "zzz.npy" not in opened and "kv_ring.npy" in opened


# -------------------------------------------------------------------------------------------------- tuner cache


def _tune_fakes(monkeypatch, calls, rechecks, sim=None):
    from attnc import tune as T
    from test_tune import _fake_sim

    monkeypatch.setattr(T, "sim_trial", sim or _fake_sim(calls))

    def recheck(req, pipeline, dims, params, cache, log, fresh=False):
        rechecks.append((params, fresh))
        return {"ok": True, "note": "", "max_error": 0.0, "differing": 0, "failed_records": 0}

    monkeypatch.setattr(T, "recheck", recheck)
    return T


def test_an_edited_or_malformed_cache_entry_is_ignored_and_reported_once(tmp_path, monkeypatch):
    import json

    from test_tune import _request

    calls, rechecks, notes = [], [], []
    T = _tune_fakes(monkeypatch, calls, rechecks)
    first = T.tune(_request(tmp_path, budget=4), log=lambda m: None)
    assert len(calls) == 4 and first.tuning["aicore_us"] == 85.0
    entries = sorted((tmp_path / "cache").glob("*.json"))
    assert len(entries) == 4
    # make the slowest candidate look fastest: an edited timing, the checksum left as it was
    slowest = max(entries, key=lambda p: json.loads(p.read_text())["value"]["aicore_us"])
    record = json.loads(slowest.read_text())
    record["value"]["aicore_us"] = 1.0
    slowest.write_text(json.dumps(record))
    entries.remove(slowest)
    entries[0].write_text("{broken")
    entries[1].write_text(json.dumps([1, 2]))
    again = T.tune(_request(tmp_path, budget=4), log=notes.append)
    assert again.tuning["aicore_us"] == 85.0  # the edit changed nothing
    assert len(calls) == 7  # the three bad entries were timed again, the good one came from the cache
    ignored = [n for n in notes if "cache entry" in n]
    assert len(ignored) == 3 and all("ignored" in n for n in ignored)


def test_a_killed_child_is_retried_and_never_cached(tmp_path, monkeypatch):
    from test_tune import _fake_sim, _request

    calls, rechecks = [], []
    fine = _fake_sim(calls)
    killed = set()

    def sim(program, name, inputs, timeout_s, verify=None):
        if "'device_sched_mode': 1" in program and program not in killed:  # the OOM killer, once per program
            killed.add(program)
            calls.append(program)
            return {"aicore_us": None, "error": "pypto run of k.py failed (killed by SIGKILL): no output",
                    "timeout": False, "transient": True}
        return fine(program, name, inputs, timeout_s)

    T = _tune_fakes(monkeypatch, calls, rechecks, sim)
    res = T.tune(_request(tmp_path, budget=4), log=lambda m: None)
    assert res.tuning["aicore_us"] == 85.0  # the killed candidates were run again and timed
    assert len(calls) == 6
    always_killed = lambda program, *a, **k: {"aicore_us": None, "error": "failed (killed by SIGKILL)",  # noqa: E731
                                              "timeout": False, "transient": True}
    T = _tune_fakes(monkeypatch, calls, rechecks, always_killed)
    cache = tmp_path / "cache2"
    with pytest.raises(T.TuneError):
        T.tune(_request(tmp_path, budget=2, cache_dir=str(cache)), log=lambda m: None)
    assert not list(cache.glob("*.json"))  # nothing cached for a transient failure


def test_no_cache_neither_reads_nor_writes(tmp_path, monkeypatch):
    from test_tune import _request

    calls, rechecks = [], []
    T = _tune_fakes(monkeypatch, calls, rechecks)
    T.tune(_request(tmp_path, budget=2), log=lambda m: None)
    before = snapshot(tmp_path / "cache")
    T.tune(_request(tmp_path, budget=2, use_cache=False, cache_dir=str(tmp_path / "cache")), log=lambda m: None)
    assert len(calls) == 4 and snapshot(tmp_path / "cache") == before


def test_the_true_default_is_timed_and_named_default_with_a_narrowed_space(tmp_path, monkeypatch):
    """--space narrowing vec_nbuffer_setting away from its default {-1: 4}: the file's default_aicore_us is the
    true default's time (100 µs here), not the first narrowed candidate's."""
    from test_tune import _request

    calls, rechecks = [], []
    T = _tune_fakes(monkeypatch, calls, rechecks)
    req = _request(tmp_path, budget=4)
    req.space = [s for s in req.space if not s.startswith("vec_nbuffer_setting")] + ["vec_nbuffer_setting={-1: 2}"]
    res = T.tune(req, log=lambda m: None)
    from attnc.passes import PYPTO_PIPELINE

    baseline = T.baseline_params(T.build_space(PYPTO_PIPELINE, req.space))
    assert baseline["vec_nbuffer_setting"] == "{-1: 4}"
    assert res.trials[0].params == baseline and res.tuning["default_aicore_us"] == 100.0
    assert res.tuning["aicore_us"] == 85.0


def test_the_winner_is_rechecked_fresh_before_the_file_is_written(tmp_path, monkeypatch):
    from test_tune import _request

    calls, rechecks = [], []
    T = _tune_fakes(monkeypatch, calls, rechecks)
    res = T.tune(_request(tmp_path, budget=4), log=lambda m: None)
    winner = [params for params, fresh in rechecks if params != res.trials[0].params]
    assert winner and all(fresh for params, fresh in rechecks if params != res.trials[0].params)


# -------------------------------------------------------------------------------------------------- signals


@pytest.mark.parametrize("sig, code, line", [("SIGTERM", 143, "attnc: terminated"),
                                             ("SIGINT", 130, "attnc: interrupted")])
def test_a_signal_during_a_sim_run_ends_the_child_group_and_temp_folders(tmp_path, sig, code, line):
    """The SIM child runs in its own session (so a Ctrl-C at the terminal never reaches it): attnc itself must end
    its process group. A stand-in child (and a grandchild) sleeps where pypto would simulate."""
    import signal
    import subprocess
    import sys

    tmp, shm = tmp_path / "tmp", tmp_path / "shm"
    tmp.mkdir()
    shm.mkdir()
    pidfile = tmp_path / "child.pid"
    fake = tmp_path / "fake_python"
    fake.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nsleep 300 &\nsleep 300\n")
    fake.chmod(0o755)
    # SIGINT as a terminal delivers it: a shell's background job (CI) starts with SIGINT ignored
    script = _sim_run_with_fake_child(fake, "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n")
    env = dict(os.environ, TMPDIR=str(tmp), ATTNC_PYPTO_TMP=str(shm), ATTNC_PROGRESS="0")
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 120
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "no child"
            time.sleep(0.1)
        group = int(pidfile.read_text())
        proc.send_signal(getattr(signal, sig))
        assert proc.wait(120) == code  # generous: a loaded 2-core machine
        err = [ln for ln in proc.stderr.read().splitlines() if ln.strip() and not ln.startswith("attnc: note:")]
        assert err == [line]
        for _ in range(50):  # the group is gone (killed, reaped)
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.killpg(group, signal.SIGKILL)
            pytest.fail("the SIM child's process group outlived attnc")
        assert os.listdir(tmp) == [] and os.listdir(shm) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        if pidfile.exists() and pidfile.read_text().strip():  # never leave the stand-in behind, pass or fail
            try:
                os.killpg(int(pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


# -------------------------------------------------------------------------------------------------- exit 3 -> one line


def test_closed_stdin_and_stdout_are_one_error_line(capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "stdin", None)  # what Python sets for `attnc compile - <&-`
    code, _, err = cli(capsys, "compile", "-")
    one_error_line(code, err, r"-: cannot read \(stdin is closed\)")
    monkeypatch.undo()
    monkeypatch.setattr(sys, "stdout", None)  # `attnc compile qkv_proj_rope >&-`
    code, _, err = cli(capsys, "compile", "qkv_proj_rope", *TINY)
    one_error_line(code, err, r"-: cannot write \(stdout is closed\)")


def test_an_allocation_failure_is_one_error_line(capsys, monkeypatch):
    from attnc import cli as driver

    def fail(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 17179869184 bytes.")

    monkeypatch.setattr(driver, "load_source", fail)
    code, _, err = cli(capsys, "inputs", "decode_csa", "-o", "/dev/null")
    one_error_line(code, err, r"out of memory")
    monkeypatch.setattr(driver, "load_source", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    code, _, err = cli(capsys, "inputs", "decode_csa", "-o", "/dev/null")
    one_error_line(code, err, r"out of memory")


def test_an_escape_sequence_from_a_file_is_never_echoed_raw(tmp_path, capsys):
    steps = tmp_path / "steps.txt"
    steps.write_bytes(b"1\n\x1b]0;owned\x07\n")
    code, _, err = cli(capsys, "run", "decode_swa", *TINY, "--steps-file", steps)
    one_error_line(code, err, r"steps\.txt:2: .*x1b.*is not a token count")
    assert "\x1b" not in err and "\x07" not in err
    src = tmp_path / "in.mlir"
    src.write_bytes(b"builtin.module {\x1b[2J\n}\n")
    code, _, err = cli(capsys, "compile", src)
    one_error_line(code, err, r"Unexpected character")
    assert "\x1b" not in err


def test_a_reader_that_leaves_is_one_error_line():
    """`attnc list | head -1`: stdout's reader is gone before attnc writes."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import sys; from attnc.cli import main; "
                             "sys.exit(main(['list']))"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(60) == 2
    assert err.splitlines() == ["attnc: error: -: cannot write (Broken pipe)"], err


# -------------------------------------------------------------------------------------------------- memory


def test_the_memory_estimate_is_an_upper_bound_of_the_measured_peaks():
    """benchmarks/memory_bound.json: peak RSS that `attnc run` added, measured per stage at three batch sizes (and
    decode_csa at flash). The estimate `attnc run/inputs/plot/tune` refuse on must stay above every one of them
    (the old lower bound was 1.5-8x below)."""
    import json

    from attnc.cli import load_source
    from attnc.memory import interpreter_upper_bytes

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "memory_bound.json")
    with open(path) as f:
        rows = [r for r in json.load(f) if "measured" in r]
    assert len({r["stage"] for r in rows}) >= 10 and len(rows) >= 30
    below = []
    for r in rows:
        src = load_source(r["stage"], r["config"], [f"batch={r['batch']}"])
        upper = interpreter_upper_bytes(src.module)
        if upper < r["measured"]:
            below.append((r["stage"], r["config"], r["batch"], upper, r["measured"]))
    assert not below, below


def test_the_reported_batch_100000_run_is_refused_before_allocating(capsys, monkeypatch):
    """The report's reproducer on its 21.7 GB machine: `run decode_csa --config tiny --set batch=100000` was accepted
    (the old estimate 14.0 GB; measured peaks, linear in the batch, reach ~25 GB there from 0.29 GB at 1024). Any
    upper bound refuses it, naming its estimate, before an input is made."""
    import resource

    monkeypatch.setenv("ATTNC_MEMORY_LIMIT_BYTES", str(21_700_000_000))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, _, err = cli(capsys, "run", "decode_csa", *TINY, "--set", "batch=100000")
    one_error_line(code, err, r"run decode_csa may need up to [0-9.]+ GB of memory .* 21\.7 GB available")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 512 << 10  # KiB


# -------------------------------------------------------------------------------------------------- --out - carries data


@pytest.mark.parametrize("target", ["interp", "pypto-sim"])
def test_run_out_stdout_carries_only_the_npz(tmp_path, capsysbinary, monkeypatch, target):
    """`run --out -`: stdout is the .npz, byte for byte what `--out FILE` writes; the summary lines (and a pypto
    run's check lines) go to stderr. The SIM run is a stand-in returning the interpreter's outputs on the compiled
    module (this checks where lines go, not pypto)."""
    import io

    import numpy as np

    if target == "pypto-sim":
        import attnc.codegen.pypto.target as pypto_target
        from attnc.ir.interpreter import entry_function, run_module

        from attnc.cli import _names

        def fake_sim(module, inputs, **kw):
            fn = entry_function(module)
            names = _names(fn, "result_names", len(fn.function_type.outputs.data), "out")
            return pypto_target.PyptoRun(dict(zip(names, run_module(module, list(inputs.values())))), 1.0, [], [],
                                         0.1, "")

        monkeypatch.setattr(pypto_target, "run_pypto_sim", fake_sim)
    argv = ["run", "qkv_proj_rope", *TINY, "--target", target]
    assert main([*argv, "--out", str(tmp_path / "o.npz")]) == 0
    capsysbinary.readouterr()
    assert main([*argv, "--out", "-"]) == 0
    out, err = capsysbinary.readouterr()
    assert out == (tmp_path / "o.npz").read_bytes()
    with np.load(io.BytesIO(out)) as data:
        assert sorted(data.files) == ["kv", "q", "qr"]
    err = err.decode()
    assert "wall_s:" in err and "mean_abs=" in err
    if target == "pypto-sim":
        assert err.count("check ") == 3 and "max_error=" in err


def test_run_out_stdout_refuses_a_terminal(capsys, monkeypatch):
    import io
    import sys

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", Tty())
    code, _, err = cli(capsys, "run", "qkv_proj_rope", *TINY, "--out", "-")
    one_error_line(code, err, r"--out -: stdout is a terminal")


# -------------------------------------------------------------------------------------------------- found by the soak


@pytest.mark.parametrize("msg, transient", [
    ("pypto run of k.py failed (exit 1): no output", True),  # died before the runner reported (e.g. the folder below)
    ("pypto run of k.py failed (exit 1): pypto: F74007 | ATTNC_PYPTO_FAIL: RuntimeError: compile", False),
    ("pypto run of k.py failed (killed by SIGKILL): no output", True),
    ("pypto run of k.py failed (killed by SIGSEGV): no output", False),
])
def test_only_the_programs_own_failure_is_a_cached_verdict(monkeypatch, msg, transient):
    """benchmarks/soak.py found a SIM child that exited 1 with no output (a run folder pypto's shell could not take)
    cached as the candidate's failure: the program was never run. Only a failure the runner reported is one."""
    from attnc.codegen.pypto import sim as pypto_sim
    from attnc import tune as T

    def fail(*a, **k):
        raise pypto_sim.PyptoSimError(msg)

    monkeypatch.setattr(pypto_sim, "run_in_subprocess", fail)
    res = T.sim_trial("program", "k", {}, 10.0)
    assert bool(res.get("transient")) == transient and T.is_timing_verdict(res) == (not transient)


@pytest.mark.parametrize("folder", ["a(b)", "a b", "a;b"])
def test_a_run_folder_a_shell_would_split_is_one_error_line(tmp_path, capsys, monkeypatch, folder):
    """pypto 0.2.0's cost model hands its output folder to a shell unquoted: under `x(y)` the child exits 1 with no
    output (seen in the soak). Refused before the child starts, with the cause."""
    (tmp_path / folder).mkdir()
    monkeypatch.setenv("ATTNC_PYPTO_TMP", str(tmp_path / folder))
    code, _, err = cli(capsys, "run", "qkv_proj_rope", *TINY, "--target", "pypto-sim")
    one_error_line(code, err, r"passes it to a shell unquoted: set ATTNC_PYPTO_TMP")


def test_a_sim_child_dies_with_attnc_killed_by_sigkill(tmp_path):
    """SIGKILL (the OOM killer, `kill -9`) gives attnc no chance to end the SIM child, which runs in its own session,
    nor what the child started, nor to remove its temp folders: the soak found 12 processes and 4 folders left per
    killed SIM run. The runner dies with its parent (PR_SET_PDEATHSIG) and a watchdog in its process group removes
    the folders and kills the group. A stand-in runner takes the same first steps, starts a grandchild, sleeps."""
    import signal
    import subprocess
    import sys

    tmp, shm = tmp_path / "tmp", tmp_path / "shm"
    tmp.mkdir()
    shm.mkdir()
    pidfile = tmp_path / "child.pid"
    fake = tmp_path / "fake_python"
    fake.write_text(f"#!{sys.executable}\n"
                    "import os, subprocess, time\n"
                    "from attnc.codegen.pypto.sim.runner import die_with_parent, run_dir_for_pid, watch_parent\n"
                    "parent = int(os.environ['ATTNC_PYPTO_PARENT'])\n"
                    "die_with_parent(9, parent)\n"
                    "root = run_dir_for_pid(os.getpid())\n"
                    "root.mkdir()\n"
                    "watch_parent(parent, [str(root), *os.environ['ATTNC_PYPTO_PARENT_TMP'].split(chr(10))])\n"
                    "grandchild = subprocess.Popen(['sleep', '300'])\n"
                    f"open({str(pidfile)!r}, 'w').write(f'{{os.getpid()}} {{grandchild.pid}}')\n"
                    "time.sleep(300)\n")
    fake.chmod(0o755)
    script = _sim_run_with_fake_child(fake)
    env = dict(os.environ, TMPDIR=str(tmp), ATTNC_PYPTO_TMP=str(shm), ATTNC_PROGRESS="0")
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL, env=env)
    pids = []
    try:
        deadline = time.time() + 120
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert proc.poll() is None and time.time() < deadline, "no child"
            time.sleep(0.1)
        pids = [int(p) for p in pidfile.read_text().split()]
        assert os.listdir(tmp) and os.listdir(shm)
        proc.kill()
        proc.wait(30)
        for _ in range(100):
            alive = []
            for pid in pids:
                try:
                    os.kill(pid, 0)
                    alive.append(pid)
                except ProcessLookupError:
                    pass
            if not alive:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"{len(alive)} SIM process(es) outlived attnc killed by SIGKILL")
        assert os.listdir(tmp) == [] and os.listdir(shm) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_run_folders_of_dead_children_are_swept(tmp_path, monkeypatch):
    import subprocess

    from attnc.codegen.pypto.sim import sweep_stale_run_folders

    gone = subprocess.Popen(["true"])
    gone.wait()
    monkeypatch.setenv("ATTNC_PYPTO_TMP", str(tmp_path))
    (tmp_path / f"attnc-pypto-{gone.pid}" / "output").mkdir(parents=True)
    (tmp_path / f"attnc-pypto-{os.getpid()}").mkdir()  # alive: kept
    (tmp_path / "attnc-pypto-x").mkdir()  # not a run folder: kept
    assert sweep_stale_run_folders() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"attnc-pypto-{os.getpid()}", "attnc-pypto-x"]


def test_an_svg_picture_is_byte_identical_run_to_run(tmp_path, capsys):
    """matplotlib salts an SVG's ids with a random uuid: two undisturbed plots differed (the soak's first find)."""
    for name in ("a.svg", "b.svg"):
        code, _, err = cli(capsys, "plot", "visibility", "decode_csa", *TINY, "-o", tmp_path / name)
        assert code == 0, err
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()


def test_the_sim_child_estimate_is_an_upper_bound_of_its_measured_peaks():
    """benchmarks/memory_bound_sim.json: the pypto SIM child's peak RSS (`memory_bound.py --target pypto-sim`) for
    every stage and layer kind at tiny B = 2, at flash B = 2 and the attention cores at flash B = 8 and 16, where
    the child grows with the square of the batch; `sim_child_upper_bytes` of the compiled module (what run
    --target pypto-sim and tune add to their check) stays above every one, with the files pypto wrote into the
    child's run folder on /dev/shm (memory too) added to its RSS."""
    import json

    from attnc.cli import load_source
    from attnc.kernels_src import STAGES
    from attnc.memory import sim_child_upper_bytes
    from attnc.passes import PYPTO_PIPELINE
    from attnc.passes.verify import run_pipeline

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "memory_bound_sim.json")
    with open(path) as f:
        rows = [r for r in json.load(f) if "measured" in r]
    project = {name for name, st in STAGES.items() if st.fn.__module__.startswith("attnc.kernels_src")}  # not plugins other tests load
    assert {r["stage"] for r in rows if r["config"] == "tiny"} == project
    cores = {(r["stage"], r["batch"]) for r in rows if r["config"] == "flash"}
    assert {(core, b) for core in ("sparse_attn_core", "hca_attn_core") for b in (2, 8, 16)} <= cores
    below = []
    for r in rows:
        src = load_source(r["stage"], r["config"], [f"batch={r['batch']}"])
        run_pipeline(src.module, PYPTO_PIPELINE, output_names=src.output_names)
        upper = sim_child_upper_bytes(src.module)
        if upper < r["measured"] + r["files_peak"]:
            below.append((r["stage"], r["config"], r["batch"], upper, r["measured"], r["files_peak"]))
    assert not below, below


def test_the_sim_child_estimate_counts_each_loop_call_reading_whole_tensors():
    """pypto's verifier captures the tensors a loop body reads, whole, at every call: 4 calls (8 rows, 2 a call)
    of a body reading x (8 x 16 f32) and carrying y (the same): 4 x 1,024 bytes, times SIM_CHILD_PER_LOOP_BYTE in
    the estimate; in a batch loop over a cache that is the square of the batch."""
    from attnc.cli import load_source
    from attnc.ir import parse_ir
    from attnc.memory import SIM_CHILD_PER_LOOP_BYTE, loop_call_bytes, sim_child_upper_bytes
    from attnc.passes import PYPTO_PIPELINE
    from attnc.passes.verify import run_pipeline

    body = "{pad = \"zero\"}"
    module = parse_ir(f"""builtin.module {{
  func.func @f(%0: tensor<8x16xf32>) -> tensor<8x16xf32> attributes {{arg_names = ["x"], result_names = ["y"]}} {{
    %1 = tile.full {{value = 0.000000e+00 : f64}} : tensor<8x16xf32>
    %2 = arith.constant 0 : index
    %3 = arith.constant 8 : index
    %4 = tile.parallel %2 to %3 inits(%1 : tensor<8x16xf32>) attributes {{carry = ["same"], rows = 2 : i64}} {{
    ^bb0(%5: index, %6: tensor<8x16xf32>):
      %7 = tile.view %0[%5, %2] {body} : tensor<8x16xf32> -> tensor<2x16xf32>
      %8 = tile.assemble %7 into %6[%5, %2] : tensor<2x16xf32>, tensor<8x16xf32> -> tensor<8x16xf32>
      tile.yield %8 : tensor<8x16xf32>
    }} -> tensor<8x16xf32>
    func.return %4 : tensor<8x16xf32>
  }}
}}""", "loop.mlir")
    assert loop_call_bytes(module) == 4 * (512 + 512)
    loops = {}
    for batch in (4, 8):
        src = load_source("sparse_attn_core", "flash", [f"batch={batch}"])
        run_pipeline(src.module, PYPTO_PIPELINE, output_names=src.output_names)
        loops[batch] = loop_call_bytes(src.module)
        assert sim_child_upper_bytes(src.module) > SIM_CHILD_PER_LOOP_BYTE * loops[batch]
    assert loops[8] > 3.9 * loops[4]  # B calls reading B rows of the caches


def test_a_sim_run_counts_its_child_in_the_memory_check(capsys, monkeypatch):
    """A limit between the interpreter's estimate and the same plus the SIM child's: the interpreter runs, the SIM
    run is refused before any child starts."""
    from attnc.cli import load_source
    from attnc.memory import interpreter_upper_bytes, sim_child_upper_bytes

    from attnc.passes import PYPTO_PIPELINE
    from attnc.passes.verify import run_pipeline

    src = load_source("qkv_proj_rope", "tiny", [])
    child = sim_child_upper_bytes(src.module)
    run_pipeline(src.module, PYPTO_PIPELINE, output_names=src.output_names)  # the SIM check is on the compiled IR
    limit = interpreter_upper_bytes(src.module, 3) + child // 2
    monkeypatch.setenv("ATTNC_MEMORY_LIMIT_BYTES", str(limit))
    code, _, err = cli(capsys, "run", "qkv_proj_rope", *TINY)
    assert code == 0, err
    code, _, err = cli(capsys, "run", "qkv_proj_rope", *TINY, "--target", "pypto-sim")
    one_error_line(code, err, r"may need up to .* the pypto SIM child included")


def test_a_signal_swallowed_in_a_destructor_still_ends_the_command(capsys, monkeypatch):
    """A SIGTERM whose exception is raised inside a __del__ is swallowed by Python ('Exception ignored ...' and a
    traceback) and the command went on to exit 0 (the soak: `plot visibility` under SIGTERM). It ends 143, one
    line, no traceback."""
    import attnc.cli as driver

    real = driver.apply_tuning

    class Dying:
        def __del__(self):
            raise driver.Terminated()

    def apply_tuning(*a, **k):
        Dying()  # collected at once: the signal "arrives" in its destructor
        return real(*a, **k)

    monkeypatch.setattr(driver, "apply_tuning", apply_tuning)
    code, _, err = cli(capsys, "compile", "qkv_proj_rope", *TINY)
    assert code == 143 and err.strip().splitlines() == ["attnc: terminated"], err


def _python_child(script: str):
    """`python -c script` (attnc's signal handlers live in a process of their own), its exit and stderr."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, ATTNC_PROGRESS="0"))


@pytest.mark.parametrize("sig, code, line", [("SIGTERM", 143, "attnc: terminated"),
                                             ("SIGINT", 130, "attnc: interrupted")])
@pytest.mark.parametrize("module_does", ["clears the error", "fails its init"])
def test_a_signal_inside_an_import_is_raised_once_the_import_is_done(tmp_path, sig, code, line, module_does):
    """A SIGTERM inside `import torch` aborted attnc ('Fatal Python error: Aborted' from torch's C++ init), turned
    into 'ImportError: initialization failed' (exit 3) or was cleared by C code (the command went on to exit 0):
    the soak and a SIGTERM loop over `plot schedule` saw all three. A module that does what that C code did (clear
    the exception, or report a failed init) with the signal arriving in its body: the command ends with the
    signal's code and line, no output written."""
    handling = ("    pass\n" if module_does == "clears the error"
                else "    raise ImportError('initialization failed')\n")
    (tmp_path / "held_mod.py").write_text(
        "import os, signal\n"
        "try:\n"
        f"    os.kill(os.getpid(), signal.{sig})\n"
        "    for _ in range(10000):\n"
        "        pass\n"
        "except BaseException:\n" + handling)
    out = tmp_path / "out.mlir"
    script = ("import signal, sys\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # as at a terminal
              f"sys.path.insert(0, {str(tmp_path)!r})\n"
              "import attnc.cli as cli\n"
              "real = cli.load_source\n"
              "def load_source(*a, **k):\n"
              "    import held_mod\n"
              "    return real(*a, **k)\n"
              "cli.load_source = load_source\n"
              f"sys.exit(cli.main(['compile', 'qkv_proj_rope', '--config', 'tiny', '-o', {str(out)!r}]))\n")
    r = _python_child(script)
    assert (r.returncode, r.stderr.strip().splitlines()) == (code, [line])
    assert not out.exists()


def test_a_sigterm_while_the_error_line_is_written_leaves_it_whole(tmp_path):
    """The soak: `attnc: error: ...bad.mlir:3:21: Operation attn.nope is not registeredattnc: terminated`, a SIGTERM
    between print's two writes (the line, then its end). A stderr that lets the signal in right after the error
    text: the error line stays whole, then `attnc: terminated`, exit 143."""
    bad = tmp_path / "bad.mlir"
    bad.write_text('builtin.module {\n  %b = "attn.nope"() : () -> ()\n}\n')
    script = ("import os, signal, sys\n"
              "class Err:\n"
              "    def __init__(self, real):\n"
              "        self.real, self.sent = real, False\n"
              "    def write(self, s):\n"
              "        n = self.real.write(s)\n"
              "        if not self.sent and s.startswith('attnc: error'):\n"
              "            self.sent = True\n"
              "            os.kill(os.getpid(), signal.SIGTERM)\n"
              "        return n\n"
              "    def __getattr__(self, name):\n"
              "        return getattr(self.real, name)\n"
              "sys.stderr = Err(sys.stderr)\n"
              "from attnc.cli import main\n"
              f"sys.exit(main(['compile', {str(bad)!r}]))\n")
    r = _python_child(script)
    lines = r.stderr.splitlines()
    assert r.returncode == 143 and len(lines) == 2, (r.returncode, r.stderr)
    assert lines[0].startswith("attnc: error: ") and lines[0].endswith("is not registered"), lines
    assert lines[1] == "attnc: terminated"


def test_a_sigterm_while_python_exits_keeps_the_commands_code():
    """After the work is done, Python's finalization sets SIGTERM back to its default and takes seconds with torch
    loaded: a SIGTERM there killed the finished command (18 of 107 SIGTERMs in the soak). The `attnc` process
    flushes and ends with the command's code, skipping finalization (an atexit handler never runs); a caller in
    Python gets its handler back."""
    import signal
    import subprocess
    import sys

    script = ("import atexit, sys\n"
              "atexit.register(lambda: print('FINALIZED'))\n"
              "sys.argv = ['attnc', 'list', 'configs']\n"
              "from attnc.cli import main\n"
              "sys.exit(main())\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "config" in r.stdout and "FINALIZED" not in r.stdout, (r.returncode, r.stderr)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["list", "configs"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_bench_aicore_refuses_the_checked_sim_run_by_the_memory_check(monkeypatch):
    """benchmarks/run_all.py's bench_aicore asks attnc.memory.check_memory (one mechanism with `attnc run`): where
    the SIM child with outputs and the interpreter do not fit, it times without outputs (verify "none") and says
    why with the check's estimate; where they fit, it runs with the tensor graph verified and checks the values."""
    import importlib.util

    import attnc.codegen.pypto.target as target
    from attnc.ir.interpreter import run_module
    from attnc.kernels_src import STAGES, build_stage, resolve_config
    from attnc.kernels_src.inputs import make_inputs
    from attnc.passes import PYPTO_PIPELINE
    from attnc.passes.verify import run_pipeline

    spec = importlib.util.spec_from_file_location(
        "run_all", os.path.join(os.path.dirname(__file__), "..", "benchmarks", "run_all.py"))
    run_all = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_all)
    st, cfg = STAGES["qkv_proj_rope"], resolve_config("tiny")
    module = build_stage(st, cfg)
    run_pipeline(module, PYPTO_PIPELINE)
    inputs = make_inputs(st, cfg, 0)
    outs = dict(zip(st.outputs, run_module(module, list(inputs.values()))))
    modes = []

    def fake_sim(module, inputs, *, verify, timeout_s):
        modes.append(verify)
        return target.PyptoRun({} if verify == "none" else outs, 1.0, [], [], 0.5, "", {"total": 3})

    monkeypatch.setattr(target, "run_pypto_sim", fake_sim)
    monkeypatch.setenv("ATTNC_MEMORY_LIMIT_BYTES", "1000")
    r = run_all.bench_aicore("tiny", "qkv_proj_rope", 60)
    assert modes == ["none"] and r["values"].startswith("not checked (qkv_proj_rope") and "may need up to" in r["values"]
    monkeypatch.setenv("ATTNC_MEMORY_LIMIT_BYTES", str(1 << 50))
    r = run_all.bench_aicore("tiny", "qkv_proj_rope", 60)
    assert modes == ["none", "tensor-graph"] and r["values"] == "equal to the interpreter"
