"""Compile time of `attnc compile` (issue 18: every layer at seq = 16 under 10 s): each stage and layer kind as its
own `attnc compile STAGE --config CONFIG --set seq=S --emit pypto` process, so the figure includes the process's
start-up (Python, imports) as a user sees it. Wall time depends on the machine's load (printed); CPU time (user +
sys of the process) much less. Best of --repeat runs per cell (each column its minimum).

    python benchmarks/compile_time.py [--config tiny] [--seqs 1 16] [--stages decode_csa ...] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from attnc.kernels_src import STAGES


def attnc_command() -> list[str]:
    """The installed `attnc` script next to this Python (the command a user runs)."""
    script = os.path.join(os.path.dirname(sys.executable), "attnc")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "attnc.cli"]


def _cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def compile_once(stage: str, config: str, seq: int, emit: str, folder: str) -> dict:
    """One `attnc compile` process: wall and CPU seconds, and its own --timing split (start-up imports vs the rest)."""
    out = os.path.join(folder, f"{stage}-{seq}.{emit}")
    cmd = [*attnc_command(), "compile", stage, "--config", config, "--set", f"seq={seq}", "--emit", emit,
           "--timing", "-o", out]
    cpu0, t0 = _cpu_children(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "ATTNC_PROGRESS": "0"})
    wall, cpu = time.perf_counter() - t0, _cpu_children() - cpu0
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    phases = {}
    for line in proc.stderr.splitlines():
        if line.startswith("timing ") and not line.startswith("timing phase"):
            words = line[len("timing "):].rsplit(None, 2)
            phases[words[0]] = float(words[1]) / 1000
    imports = sum(secs for name, secs in phases.items() if name.startswith("imports"))
    return {"wall_s": wall, "cpu_s": cpu, "imports_s": imports}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--seqs", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES), metavar="STAGE")
    ap.add_argument("--emit", default="pypto", choices=["mlir", "pypto", "pto"])
    ap.add_argument("--repeat", type=int, default=3, help="runs per cell; the best is reported (default: 3)")
    ap.add_argument("--json", action="store_true", help="one JSON line per cell instead of the table")
    args = ap.parse_args(argv)
    print(f"# attnc compile --config {args.config} --emit {args.emit}, best of {args.repeat}; "
          f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    if not args.json:
        print("| stage | " + " | ".join(f"seq {s}: wall / CPU / start-up s" for s in args.seqs) + " |")
        print("|---|" + "---|" * len(args.seqs), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for stage in args.stages:
            cells = []
            for seq in args.seqs:
                runs = [compile_once(stage, args.config, seq, args.emit, folder) for _ in range(args.repeat)]
                ok = [r for r in runs if "error" not in r]
                best = {k: min(r[k] for r in ok) for k in ("wall_s", "cpu_s", "imports_s")} if ok else runs[0]
                if args.json:
                    print(json.dumps({"stage": stage, "config": args.config, "seq": seq, **best}), flush=True)
                cells.append(f"refused: {best['error']}" if "error" in best else
                             f"{best['wall_s']:.2f} / {best['cpu_s']:.2f} / {best['imports_s']:.2f}")
            if not args.json:
                print(f"| {stage} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
