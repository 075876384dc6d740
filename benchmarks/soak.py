"""Soak and fault injection (issue 21): mixed `attnc` commands, several at a time, some killed (SIGKILL, SIGTERM at
a random moment) and some writing onto a full disk; afterwards every command is checked:

- its exit code is one of the documented set (0, 1, 2, 130, 143) or it was killed by the signal sent to it;
- stderr holds no traceback, and an error (exit 2) is one `attnc: error:` line (notes aside);
- every output is absent or complete: byte-identical to an undisturbed run of the same command (files whose bytes
  carry a measured time, a tuning file and its plot, are compared on their content instead);
- an undisturbed command exits as the undisturbed reference run did, with every output present;
- nothing else is left in its folder (no staged temp file or backup), in its TMPDIR or pypto run folder, and no
  process of it outlives it; the shared tune cache holds only entries that verify (or none), no temp file.

Commands run in their own folders (`out/cNNNN/`, outputs by relative path, so their bytes, which name the output
in a provenance header, equal the reference's); a full-disk command runs in a tmpfs mounted for the run (size
256 KiB, filled to a few KiB; needs root), else in a folder of its own with RLIMIT_FSIZE of 4 KiB on the command.

    python benchmarks/soak.py [--commands 1000] [--jobs 4] [--seed 0] [--json soak.json] [--markdown table.md]
    python benchmarks/soak.py --table-from soak.json    # the tables again, from a run's --json
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import dataclasses
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

ATTNC = os.path.join(os.path.dirname(sys.executable), "attnc")
DOCUMENTED_EXITS = {0, 1, 2, 130, 143}
PNG_END = b"IEND\xaeB`\x82"


@dataclasses.dataclass(frozen=True)
class Template:
    """One kind of command: argv with outputs named relative to its folder, and how each output is compared."""

    name: str
    argv: tuple[str, ...]
    outputs: tuple[str, ...] = ()  # files (or `DIR/` for a folder of files) relative to the command's folder
    weight: float = 1.0
    hostile: bool = False  # bad input: the reference exits 2 with one error line
    stdout_data: bool = False  # stdout carries the output (`--out -`)
    by_content: tuple[str, ...] = ()  # outputs compared on content, not bytes (they carry a measured time)


def templates(hostile_dir: str) -> list[Template]:
    h = lambda name: os.path.join(hostile_dir, name)  # noqa: E731
    tiny = ("--config", "tiny")
    return [
        Template("compile mlir", ("compile", "decode_swa", *tiny, "-o", "decode_swa.mlir"), ("decode_swa.mlir",), 2),
        Template("compile mlir (sparse_attn)", ("compile", "sparse_attn", *tiny, "-o", "sa.mlir"), ("sa.mlir",)),
        Template("compile pypto", ("compile", "decode_csa", *tiny, "--emit", "pypto", "-o", "csa.pypto.py"),
                 ("csa.pypto.py",), 2),
        Template("compile pto", ("compile", "qkv_proj_rope", *tiny, "--emit", "pto", "--pto-dtype", "f16", "-o", "pto/"),
                 ("pto/",), 1.5),
        Template("run interp", ("run", "decode_swa", *tiny, "--out", "swa.npz"), ("swa.npz",), 2),
        Template("run interp steps", ("run", "decode_hca", *tiny, "--steps", "2", "--out", "hca.npz"), ("hca.npz",)),
        Template("run --out -", ("run", "qkv_proj_rope", *tiny, "--out", "-"), (), 1, stdout_data=True),
        Template("run SIM", ("run", "qkv_proj_rope", *tiny, "--target", "pypto-sim", "--out", "sim.npz"), ("sim.npz",),
                 0.7),
        Template("inputs", ("inputs", "decode_csa", *tiny, "-o", "in.npz"), ("in.npz",), 1.5),
        Template("tune (cache)", ("tune", "qkv_proj_rope", *tiny, "--budget", "1", "-o", "tune.json"),
                 ("tune.json", "tune.png"), 1.5, by_content=("tune.json", "tune.png")),
        Template("plot schedule", ("plot", "schedule", "decode_swa", *tiny, "-o", "schedule.png"), ("schedule.png",)),
        Template("plot visibility", ("plot", "visibility", "decode_csa", *tiny, "-o", "vis.svg"), ("vis.svg",)),
        # hostile inputs
        Template("bad: --steps-file /dev/zero", ("run", "decode_swa", *tiny, "--steps-file", "/dev/zero"), (), 0.4,
                 hostile=True),
        Template("bad: IR syntax", ("compile", h("bad.mlir"), *tiny, "-o", "bad.out.mlir"), ("bad.out.mlir",), 0.4,
                 hostile=True),
        Template("bad: truncated .npz", ("run", "decode_swa", *tiny, "--inputs", h("truncated.npz"), "--out", "t.npz"),
                 ("t.npz",), 0.4, hostile=True),
        Template("bad: batch=100000", ("run", "decode_csa", *tiny, "--set", "batch=100000", "--out", "big.npz"),
                 ("big.npz",), 0.4, hostile=True),
        Template("bad: deep tuning JSON", ("compile", "decode_swa", *tiny, "--tuning", h("deep.json"), "-o", "d.mlir"),
                 ("d.mlir",), 0.4, hostile=True),
        Template("bad: link leaving -o folder", ("compile", "decode_swa", *tiny, "-o", "leaves.mlir"),
                 (), 0.4, hostile=True),
        Template("bad: state not .npy", ("inputs", "decode_swa", *tiny, "--state", h("notnpy.npz"), "-o", "s.npz"),
                 ("s.npz",), 0.4, hostile=True),
        Template("bad: --seqlens int32", ("run", "decode_swa", *tiny, "--seqlens", "2147483647,2147483647"), (), 0.4,
                 hostile=True),
    ]


def make_hostile(d: str) -> None:
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "bad.mlir"), "w") as f:
        f.write('builtin.module {\n  func.func @f(%a: tensor<2xf32>) -> tensor<2xf32> {\n    %b = "attn.nope"(\n')
    import numpy as np

    whole = os.path.join(d, "whole.npz")
    np.savez(whole, x=np.zeros((64, 64), np.float32))
    with open(whole, "rb") as f:
        data = f.read()
    with open(os.path.join(d, "truncated.npz"), "wb") as f:
        f.write(data[: len(data) // 2])
    os.unlink(whole)
    with open(os.path.join(d, "deep.json"), "w") as f:
        f.write("[" * 100_000 + "]" * 100_000)
    with zipfile.ZipFile(os.path.join(d, "notnpy.npz"), "w") as z:
        z.writestr("kv_ring.txt", "not an array")
    with open(os.path.join(d, "secret.txt"), "w") as f:
        f.write("outside the output folder\n")


def _prepare_folder(t: Template, folder: str, hostile_dir: str) -> None:
    os.makedirs(folder, exist_ok=True)
    if t.name == "bad: link leaving -o folder":
        os.symlink(os.path.join(hostile_dir, "secret.txt"), os.path.join(folder, "leaves.mlir"))


def _files(folder: str) -> dict[str, bytes]:
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            if os.path.islink(p):
                continue
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = f.read()
    return out


def _expected_names(t: Template, reference: dict[str, bytes]) -> set[str]:
    names = set()
    for o in t.outputs:
        if o.endswith("/"):
            names |= {n for n in reference if n.startswith(o)}
        else:
            names.add(o)
    return names


def _content_equal(name: str, got: bytes, ref: bytes) -> bool:
    """A tuning file: the same choice (stage, config, pipeline, options, time); a picture: a complete PNG."""
    if name.endswith(".png"):
        return got.startswith(b"\x89PNG\r\n\x1a\n") and got.endswith(PNG_END)
    try:
        a, b = json.loads(got), json.loads(ref)
    except ValueError:
        return False
    keys = ("attnc_tuning", "stage", "config", "set", "pipeline", "pypto_options", "aicore_us", "default_aicore_us")
    return all(a.get(k) == b.get(k) for k in keys)


def _tagged_pids(tag: str) -> list[int]:
    """Processes whose environment carries ATTNC_SOAK_TAG=tag (the command and everything it started)."""
    want = f"ATTNC_SOAK_TAG={tag}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if want in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


@dataclasses.dataclass
class Result:
    index: int
    template: str
    fault: str
    code: int | None
    seconds: float
    outcome: str = ""
    problems: list[str] = dataclasses.field(default_factory=list)
    signal_at: float | None = None  # seconds after the start when the signal was sent (None: not sent)


class Soak:
    def __init__(self, root: str, jobs: int, seed: int, disk: str, timeout: float, log=print):
        self.root, self.jobs, self.seed, self.timeout, self.log = root, jobs, seed, timeout, log
        self.hostile = os.path.join(root, "hostile")
        self.cache = os.path.join(root, "cache")
        self.full = os.path.join(root, "full")
        self.templates = templates(self.hostile)
        self.reference: dict[str, tuple[int, dict[str, bytes], bytes, float]] = {}
        self.disk = self._full_disk(disk)
        make_hostile(self.hostile)

    # ------------------------------------------------------------------ the full disk
    def _full_disk(self, how: str) -> str:
        os.makedirs(self.full, exist_ok=True)
        if how in ("auto", "tmpfs"):
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "soak-full", self.full],
                               capture_output=True, text=True)
            if r.returncode == 0:
                filler = os.path.join(self.full, "filler")
                fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    while True:
                        os.write(fd, b"\0" * 4096)
                except OSError:
                    pass
                finally:
                    os.close(fd)
                os.truncate(filler, os.path.getsize(filler) - 4096)  # a few KiB free: small files fit, not the rest
                return "tmpfs (256 KiB, 4 KiB free)"
            if how == "tmpfs":
                raise SystemExit(f"soak: cannot mount a tmpfs: {r.stderr.strip()}")
        return "RLIMIT_FSIZE 4 KiB"

    def close(self) -> None:
        if self.disk.startswith("tmpfs"):
            subprocess.run(["umount", self.full], check=False)

    # ------------------------------------------------------------------ one command
    def _spawn(self, t: Template, folder: str, tag: str, fsize: bool):
        tmp, shm = os.path.join(self.root, "tmp", tag), os.path.join(self.root, "shm", tag)
        os.makedirs(tmp, exist_ok=True)
        os.makedirs(shm, exist_ok=True)
        env = dict(os.environ, ATTNC_PROGRESS="0", ATTNC_TUNE_CACHE=self.cache, TMPDIR=tmp, ATTNC_PYPTO_TMP=shm,
                   ATTNC_SOAK_TAG=f"{os.getpid()}-{tag}")
        env.pop("ATTNC_TRACEBACK", None)

        def limit():
            if fsize:
                resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

        return subprocess.Popen([ATTNC, *t.argv], cwd=folder, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, preexec_fn=limit), tmp, shm

    def run_one(self, index: int, t: Template, fault: str, delay: float) -> Result:
        tag = f"c{index:04d}"  # its folders; the process tag is unique to this soak (another may run beside it)
        on_full = fault == "full disk"
        fsize = on_full and not self.disk.startswith("tmpfs")
        folder = os.path.join(self.full, tag) if on_full and not fsize else os.path.join(self.root, "out", tag)
        try:
            _prepare_folder(t, folder, self.hostile)
        except OSError as e:  # a folder on the full disk: the disk is full before the command starts
            return Result(index, t.name, fault, None, 0.0, "not started", [f"folder: {e.strerror}"])
        t0 = time.perf_counter()
        proc, tmp, shm = self._spawn(t, folder, tag, fsize)
        timer, sent = None, []
        if fault in ("SIGTERM", "SIGKILL"):
            sig = signal.SIGTERM if fault == "SIGTERM" else signal.SIGKILL

            def send():
                if proc.poll() is None:
                    sent.append(time.perf_counter() - t0)
                    proc.send_signal(sig)

            timer = threading.Timer(delay, send)
            timer.start()
        try:
            out, err = proc.communicate(timeout=self.timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            code = None
        if timer:
            timer.cancel()
            timer.join()
        res = Result(index, t.name, fault, code, time.perf_counter() - t0, signal_at=sent[0] if sent else None)
        self.check(res, t, folder, out, err.decode("utf-8", "replace"), tmp, shm, tag)
        return res

    # ------------------------------------------------------------------ the checks
    def check(self, res: Result, t: Template, folder: str, out: bytes, err: str, tmp: str, shm: str, tag: str):
        code, p = res.code, res.problems
        # what a killed command started ends within a few seconds (a SIM child's watchdog polls every second), and
        # removes its folders on the way: wait for it before looking
        deadline = time.time() + 5.0
        while (orphans := _tagged_pids(f"{os.getpid()}-{tag}")) and time.time() < deadline:
            time.sleep(0.2)
        res.outcome = ("hang" if code is None else f"killed ({signal.Signals(-code).name})" if code < 0
                       else {0: "0 ok", 1: "1 mismatch", 2: "2 error", 130: "130 interrupted",
                             143: "143 terminated"}.get(code, f"{code} undocumented"))
        if code is None:
            p.append(f"no exit within {self.timeout:g} s")
        elif code >= 0 and code not in DOCUMENTED_EXITS:
            p.append(f"exit {code}: {err.strip().splitlines()[-1:] }")
        elif code < 0 and signal.Signals(-code).name != res.fault:  # a crash (SIGABRT, SIGSEGV), not the signal sent
            p.append(f"killed by {signal.Signals(-code).name}, sent {res.fault}: {err.strip().splitlines()[-3:]}")
        if res.fault == "SIGTERM" and code == 0 and res.signal_at is not None and res.seconds - res.signal_at > 5:
            # after its work attnc ignores SIGTERM and exits within milliseconds: this one worked on, the signal lost
            p.append(f"SIGTERM lost: sent at {res.signal_at:.1f} s, exit 0 at {res.seconds:.1f} s")
        if "Traceback" in err:
            p.append("traceback on stderr")
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("attnc: note:", "tune:"))]
        if code == 2 and not (len([ln for ln in lines if ln.startswith("attnc: error:")]) == 1):
            p.append(f"exit 2 without exactly one error line: {lines[-3:]}")
        if code == 143 and lines[-1:] != ["attnc: terminated"]:
            p.append(f"exit 143 without 'attnc: terminated' last: {lines[-2:]}")
        ref_code, ref_files, ref_out, _ = self.reference[t.name]
        if code == 2 and any("may need up to" in ln and "available" in ln for ln in lines):
            res.outcome = "2 refused (memory)"  # the machine's available memory (other jobs), not the command
        if res.fault == "none" and code != ref_code and res.outcome != "2 refused (memory)":
            p.append(f"undisturbed exit {code} vs the reference's {ref_code}: {lines[-1:]}")
        if t.stdout_data and code == 0 and out != ref_out:
            p.append("stdout differs from the reference's")
        expected = _expected_names(t, ref_files)
        got = _files(folder)
        if res.fault == "full disk" and not self.disk.startswith("tmpfs"):
            pass
        for name, data in got.items():
            if name not in expected:
                p.append(f"left behind: {name}")
            elif name not in ref_files:
                p.append(f"written, but the reference run wrote no {name}")
            elif not (_content_equal(name, data, ref_files[name]) if name in t.by_content else data == ref_files[name]):
                p.append(f"{name}: differs from the reference ({len(data)} vs {len(ref_files[name])} bytes)")
        if res.fault == "none" and code == ref_code:
            missing = sorted(n for n in ref_files if n not in got and not n.startswith("hostile"))
            if missing:
                p.append(f"undisturbed run without {missing}")
        for d, what in ((tmp, "TMPDIR"), (shm, "pypto run folder")):
            left = os.listdir(d) if os.path.isdir(d) else []
            if left:
                p.append(f"left in its {what}: {sorted(left)[:3]}")
        if orphans:
            p.append(f"{len(orphans)} process(es) outlived it")
            for pid in orphans:  # ours: started by this command
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)

    def check_cache(self) -> list[str]:
        """Every file in the shared tune cache is an entry that verifies (format, key, checksum, verdict)."""
        from attnc.tune import Cache, is_recheck_verdict, is_timing_verdict

        problems = []
        ignored = []
        cache = Cache(self.cache, report=ignored.append)
        for name in sorted(os.listdir(self.cache)) if os.path.isdir(self.cache) else []:
            key = name[:-5] if name.endswith(".json") else None
            if key is None or len(key) != 64:
                problems.append(f"cache: left behind: {name}")
            elif cache.get(key, lambda v: is_timing_verdict(v) or is_recheck_verdict(v)) is None:
                problems.append(f"cache: {name} does not verify: {ignored[-1:]}")
        return problems

    # ------------------------------------------------------------------ the run
    def run_reference(self) -> None:
        """Every command once, undisturbed, `jobs` at a time (the tune fills the cache the soak then shares)."""
        def one(t: Template):
            folder = os.path.join(self.root, "ref", f"t{self.templates.index(t):02d}")
            _prepare_folder(t, folder, self.hostile)
            t0 = time.perf_counter()
            proc, tmp, shm = self._spawn(t, folder, "ref-" + os.path.basename(folder), False)
            out, err = proc.communicate(timeout=self.timeout)
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(shm, ignore_errors=True)
            return t, proc.returncode, _files(folder), out, err.decode("utf-8", "replace"), time.perf_counter() - t0

        with cf.ThreadPoolExecutor(self.jobs) as pool:
            for t, code, files, out, err, secs in pool.map(one, self.templates):
                self.reference[t.name] = (code, files, out, secs)
                err_lines = [ln for ln in err.splitlines() if ln.startswith("attnc: error:")]
                self.log(f"reference  {t.name:<30} exit {code}  {secs:6.1f} s  {len(files)} file(s)"
                         + (f"  {err_lines[0][:100]}" if err_lines else ""))
                if t.hostile and code != 2:
                    raise SystemExit(f"soak: the reference of {t.name!r} exits {code}, not 2: {err[-400:]!r}")
                if not t.hostile and code != 0:
                    raise SystemExit(f"soak: the reference of {t.name!r} exits {code}: {err[-400:]!r}")

    def plan(self, n: int) -> list[tuple[int, Template, str, float]]:
        rng = random.Random(self.seed)
        weights = [t.weight for t in self.templates]
        faults, fault_weights = ["none", "SIGTERM", "SIGKILL", "full disk"], [0.4, 0.25, 0.25, 0.1]
        plan = []
        for i in range(n):
            t = rng.choices(self.templates, weights)[0]
            fault = rng.choices(faults, fault_weights)[0]
            delay = rng.uniform(0.0, 1.1 * self.reference[t.name][3]) if fault.startswith("SIG") else 0.0
            plan.append((i, t, fault, delay))
        return plan

    def run(self, n: int, max_seconds: float | None = None) -> list[Result]:
        results: list[Result] = []
        t_end = time.time() + max_seconds if max_seconds else None
        with cf.ThreadPoolExecutor(self.jobs) as pool:
            pending = collections.deque(self.plan(n))
            running = set()
            while pending or running:
                while pending and len(running) < self.jobs and (t_end is None or time.time() < t_end):
                    running.add(pool.submit(self.run_one, *pending.popleft()))
                if not running:
                    break
                done, running = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for f in done:
                    r = f.result()
                    results.append(r)
                    self.log(f"{r.index:5d} {r.template:<30} {r.fault:<9} {r.outcome:<20} {r.seconds:6.1f} s"
                             + (f"  PROBLEM: {'; '.join(r.problems)}" if r.problems else ""))
        return sorted(results, key=lambda r: r.index)

    def final_checks(self) -> list[str]:
        problems = self.check_cache()
        if self.disk.startswith("tmpfs") and os.path.isdir(self.full):
            for root, _, names in os.walk(self.full):
                for n in names:
                    if n.startswith(".attnc-") or n.endswith((".tmp", ".bak")):
                        problems.append(f"full disk: left behind: {os.path.relpath(os.path.join(root, n), self.full)}")
        return problems


# what each problem line means for the counts (first match); the rest are exit-code and stderr problems
KINDS = (("partial or temp files", ("left behind:", "left in its", "full disk: left behind:", "cache: left behind:")),
         ("divergent outputs", ("differs from the reference", "written, but the reference")),
         ("cache entries that do not verify", ("does not verify",)),
         ("lost outputs", ("undisturbed run without",)),
         ("orphan processes", ("outlived it",)),
         ("crashes", ("killed by",)),
         ("lost signals", ("SIGTERM lost",)),
         ("tracebacks", ("traceback on stderr",)),
         ("hangs", ("no exit within",)))


def kind(problem: str) -> str:
    return next((k for k, marks in KINDS if any(m in problem for m in marks)), "exit code or error line")


def counts(results: list[Result], final: list[str]) -> collections.Counter:
    """Problems by kind over every command and the final checks (a process counts once per process)."""
    c = collections.Counter({k: 0 for k, _ in KINDS} | {"exit code or error line": 0})
    for p in [p for r in results for p in r.problems] + final:
        c[kind(p)] += int(p.split()[0]) if kind(p) == "orphan processes" else 1
    return c


def table(results: list[Result], final: list[str], disk: str, seconds: float, jobs: int, seed: int) -> str:
    outcomes = sorted({r.outcome for r in results})
    rows = ["| command | " + " | ".join(outcomes) + " | problems |", "|---" * (len(outcomes) + 2) + "|"]
    by = collections.defaultdict(collections.Counter)
    bad = collections.Counter()
    for r in results:
        by[r.template][r.outcome] += 1
        bad[r.template] += bool(r.problems)
    for name in sorted(by):
        rows.append(f"| {name} | " + " | ".join(str(by[name][o] or "") for o in outcomes) + f" | {bad[name]} |")
    rows += ["", "| fault | commands | " + " | ".join(outcomes) + " | problems |", "|---" * (len(outcomes) + 3) + "|"]
    byf = collections.defaultdict(collections.Counter)
    badf = collections.Counter()
    for r in results:
        byf[r.fault][r.outcome] += 1
        badf[r.fault] += bool(r.problems)
    for fault in ("none", "SIGTERM", "SIGKILL", "full disk"):
        if fault in byf:
            rows.append(f"| {fault} | {sum(byf[fault].values())} | " + " | ".join(str(byf[fault][o] or "")
                                                                             for o in outcomes) + f" | {badf[fault]} |")
    problems = sum(bool(r.problems) for r in results)
    c = counts(results, final)
    rows += ["", f"{len(results)} commands, {jobs} at a time, seed {seed}, {seconds / 60:.0f} min; full disk: {disk}; "
             f"{problems} command(s) with a problem, {len(final)} problem(s) in the shared cache and full disk.",
             "", "| " + " | ".join(c) + " |", "|---" * len(c) + "|",
             "| " + " | ".join(str(v) for v in c.values()) + " |"]
    return "\n".join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commands", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--disk", choices=("auto", "tmpfs", "fsize"), default="auto",
                    help="the full disk: a small tmpfs (root) or RLIMIT_FSIZE on the command (default: tmpfs if it mounts)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per command before it counts as a hang")
    ap.add_argument("--max-minutes", type=float, default=None, help="start no command after this many minutes")
    ap.add_argument("--root", default=None, help="work folder (default: a new temp folder, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--json", help="write every command's result here")
    ap.add_argument("--markdown", help="write the tables here")
    ap.add_argument("--table-from", metavar="JSON", help="print the tables of an earlier run's --json and stop")
    args = ap.parse_args(argv)
    if args.table_from:
        with open(args.table_from) as f:
            d = json.load(f)
        results = [Result(**r) for r in d["results"]]
        print(table(results, d["final"], d["disk"], d.get("seconds", 0.0), d.get("jobs", args.jobs),
                    d.get("seed", args.seed)))
        return 0
    root = args.root or tempfile.mkdtemp(prefix="attnc-soak-")
    os.makedirs(root, exist_ok=True)
    t0 = time.perf_counter()
    soak = Soak(root, args.jobs, args.seed, args.disk, args.timeout, log=lambda m: print(m, flush=True))
    try:
        soak.run_reference()
        results = soak.run(args.commands, args.max_minutes * 60 if args.max_minutes else None)
        final = soak.final_checks()
    finally:
        soak.close()
        if not args.keep and not args.root:
            shutil.rmtree(root, ignore_errors=True)
    seconds = time.perf_counter() - t0
    text = table(results, final, soak.disk, seconds, args.jobs, args.seed)
    for p in final:
        print("PROBLEM:", p)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"disk": soak.disk, "seed": args.seed, "jobs": args.jobs, "seconds": seconds, "final": final,
                       "results": [dataclasses.asdict(r) for r in results]}, f, indent=1)
    return 1 if final or any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
