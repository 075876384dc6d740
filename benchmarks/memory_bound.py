"""Memory estimate vs measured peak (issue 21 #2): for each stage and batch size, the estimate `attnc run` checks
(api/memory.py `interpreter_upper_bytes`) and the peak RSS the run adds, measured in a fresh child process (peak RSS
at the end minus peak RSS once torch, xDSL and the stage are loaded); `estimate` is the old lower estimate
(`interpreter_bytes`), `upper` the upper bound the commands check (`interpreter_upper_bytes`), each / measured:
>= 1 is a bound that held. `--target pypto-sim`: the SIM child's peak RSS against `sim_child_upper_bytes` (issue 21).

    python benchmarks/memory_bound.py [--config tiny] [--batches 16 64 256] [--stages decode_csa ...] [--json out]
    python benchmarks/memory_bound.py --target pypto-sim --batches 2 --stages qkv_proj_rope ... [--json out]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys
stage, config, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
from attnc.cli import load_source, main
from attnc.memory import interpreter_bytes, interpreter_upper_bytes
import attnc.passes.verify  # noqa: F401 - what `attnc run` imports before the work
src = load_source(stage, config, [f"batch={batch}"])
estimate = interpreter_bytes(src.module)
upper = interpreter_upper_bytes(src.module)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
code = main(["run", stage, "--config", config, "--set", f"batch={batch}"])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"code": code, "estimate": estimate, "upper": upper, "base": base, "peak": peak}))
"""


# --target pypto-sim: the SIM child's own peak RSS (the largest reaped descendant: the runner, pypto's compile and
# cost model) against `sim_child_upper_bytes` of the compiled module (what `attnc run --target pypto-sim` and `tune`
# add to their check), and the peak of the files the child writes into its run folder (pypto's verify dumps: on
# /dev/shm, memory too, though not in the RSS), sampled every 0.2 s in a run folder of its own
CHILD_SIM = r"""
import json, os, resource, sys, tempfile, threading, time
stage, config, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
from attnc.cli import load_source, main
from attnc.memory import loop_call_bytes, sim_child_upper_bytes
from attnc.passes import PYPTO_PIPELINE
from attnc.passes.verify import run_pipeline
src = load_source(stage, config, [f"batch={batch}"])
run_pipeline(src.module, PYPTO_PIPELINE, output_names=src.output_names)  # the check of `run` is on the compiled IR
upper, loops = sim_child_upper_bytes(src.module), loop_call_bytes(src.module)
base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
tmp = tempfile.mkdtemp(prefix="attnc-membound-", dir=base)
os.environ["ATTNC_PYPTO_TMP"] = tmp
files, done = [0], threading.Event()
def sample():
    while not done.wait(0.2):
        total = 0
        for root, _, names in os.walk(tmp):
            for n in names:
                try:
                    total += os.lstat(os.path.join(root, n)).st_blocks * 512
                except OSError:
                    pass
        files[0] = max(files[0], total)
threading.Thread(target=sample, daemon=True).start()
code = main(["run", stage, "--config", config, "--set", f"batch={batch}", "--target", "pypto-sim", "--no-check"])
done.set()
os.rmdir(tmp) if not os.listdir(tmp) else None
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"code": code, "estimate": upper, "upper": upper, "base": 0, "peak": peak, "loop_bytes": loops,
                  "files_peak": files[0]}))
"""


def measure(stage: str, config: str, batch: int, timeout: int, target: str = "interp") -> dict:
    child = CHILD if target == "interp" else CHILD_SIM
    out = subprocess.run([sys.executable, "-c", child, stage, config, str(batch)], capture_output=True, text=True,
                         timeout=timeout, env={"ATTNC_PROGRESS": "0", **__import__("os").environ})
    if out.returncode != 0 or not out.stdout.strip():
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    from attnc.kernels_src import STAGES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--batches", nargs="+", type=int, default=[16, 64, 256])
    ap.add_argument("--stages", nargs="+", default=list(STAGES))
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--target", choices=("interp", "pypto-sim"), default="interp",
                    help="pypto-sim: the SIM child's peak RSS vs sim_child_upper_bytes (default: the interpreter)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    rows = []
    print(f"{'stage':<22} {'batch':>6} {'lower MB':>9} {'upper MB':>9} {'measured MB':>12} {'lower/meas':>10} "
          f"{'upper/meas':>10}")
    for stage in args.stages:
        for batch in args.batches:
            r = measure(stage, args.config, batch, args.timeout, args.target)
            r.update(stage=stage, batch=batch, config=args.config, target=args.target)
            rows.append(r)
            # a SIM run that ran but failed its check afterwards (exit 1/2) still measured the child's peak
            if "error" in r or (r.get("code") and args.target == "interp"):
                print(f"{stage:<22} {batch:>6} {'':>12} {'':>12}   n/a  {r.get('error') or r.get('code')}", flush=True)
                continue
            added = max(r["peak"] - r["base"], 1)
            r["measured"], r["ratio"], r["upper_ratio"] = added, r["estimate"] / added, r["upper"] / added
            print(f"{stage:<22} {batch:>6} {r['estimate'] / 1e6:9.1f} {r['upper'] / 1e6:9.1f} {added / 1e6:12.1f} "
                  f"{r['ratio']:10.2f} {r['upper_ratio']:10.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
