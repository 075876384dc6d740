"""Where a pypto 0.2.0 SIM run's µs go: the cost model's Perfetto trace (`attnc run ... --target pypto-sim
--trace-dir D` keeps it as D/<stage>.perfetto.json) grouped by subgraph, with each group's pipe busy time.

    python benchmarks/trace_breakdown.py D/indexer.perfetto.json            # one line per (core kind, root, subgraph)
    python benchmarks/trace_breakdown.py D/indexer.perfetto.json --pipes    # + the busy µs per pipe and op of its first task

A task's name in the trace is `<seq>-<root function>-<index>-<root>-<subgraph>`; tasks of one root function and
subgraph are copies of one leaf function (a tile of one op chain), so a group is one step of the program. Columns:
core kind (AIC cube / AIV vector), root function, subgraph, tasks, first start - last end (µs from the first
task), summed task µs over cores, µs per task. Cycles are at 1.8 GHz, as the SIM's AICore end-to-end time.
"""
from __future__ import annotations

import argparse
import bisect
import json
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field

CYCLES_PER_US = 1800
_TASK = re.compile(r"\d+-(\d+)-\d+-\d+-(\d+)")


@dataclass
class Group:
    kind: str  # AIC or AIV
    root: int
    subgraph: int
    spans: list = field(default_factory=list)  # (core pid, start, end) in cycles

    @property
    def start(self) -> int:
        return min(s for _, s, _ in self.spans)

    @property
    def end(self) -> int:
        return max(e for _, _, e in self.spans)

    @property
    def busy(self) -> int:
        return sum(e - s for _, s, e in self.spans)


def read_trace(events: list) -> tuple[list[Group], dict]:
    """The task groups (by start) and, per core, its pipe events [(start, end, pipe, op)] sorted by start."""
    procs = {e["pid"]: e["args"].get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e.get("tid")): e["args"].get("name", "") for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    groups: dict = {}
    pipes: dict = defaultdict(list)
    for e in events:
        kind = procs.get(e.get("pid"), "")[:3]
        if e.get("ph") != "X" or kind not in ("AIC", "AIV"):
            continue
        if e.get("tid") == 1:  # the core's task lane
            m = _TASK.match(e["name"])
            if m:
                key = (kind, int(m.group(1)), int(m.group(2)))
                groups.setdefault(key, Group(*key)).spans.append((e["pid"], e["ts"], e["ts"] + e["dur"]))
        else:  # a pipe lane: "<id> <OP> <operands>"
            words, pipe = e["name"].split(), threads.get((e["pid"], e.get("tid")), "")
            if len(words) > 1 and "BMU" not in pipe and "ALLOC" not in pipe:  # buffer lanes are not work
                pipes[e["pid"]].append((e["ts"], e["ts"] + e["dur"], pipe, words[1]))
    for lane in pipes.values():
        lane.sort()
    return sorted(groups.values(), key=lambda g: (g.start, g.kind, g.root, g.subgraph)), pipes


def pipe_busy(group: Group, pipes: dict) -> Counter:
    """Busy cycles per (pipe, op) inside the group's first task (its tasks are copies of one leaf function)."""
    pid, start, end = min(group.spans, key=lambda s: (s[1], s[0]))
    lane = pipes.get(pid, [])
    busy: Counter = Counter()
    for s, e, pipe, op in lane[bisect.bisect_left(lane, (start,)):]:
        if s >= end:
            break
        busy[(pipe, op)] += e - s
    return busy


def lines(events: list, with_pipes: bool = False) -> list[str]:
    groups, pipes = read_trace(events)
    if not groups:
        return ["no AIC/AIV tasks in the trace"]
    t0 = min(g.start for g in groups)
    out = []
    for g in groups:
        n = len(g.spans)
        out.append(f"{g.kind} root {g.root:<2} sg {g.subgraph:<3} tasks {n:<4} "
                   f"{(g.start - t0) / CYCLES_PER_US:7.1f} - {(g.end - t0) / CYCLES_PER_US:7.1f} us  "
                   f"core-us {g.busy / CYCLES_PER_US:8.1f}  per task {g.busy / n / CYCLES_PER_US:6.2f}")
        if with_pipes:
            for (pipe, op), cyc in pipe_busy(g, pipes).most_common(5):
                out.append(f"    {pipe:<12} {op:<14} {cyc / CYCLES_PER_US:7.2f} us")
    end = max(g.end for g in groups)
    out.append(f"end to end {(end - t0) / CYCLES_PER_US:.1f} us, {sum(len(g.spans) for g in groups)} tasks")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", help="a cost-model Perfetto trace (<stage>.perfetto.json of --trace-dir)")
    ap.add_argument("--pipes", action="store_true", help="busy µs per pipe and op of each group's first task")
    args = ap.parse_args(argv)
    try:
        with open(args.trace) as f:
            events = json.load(f)["traceEvents"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"trace_breakdown: {args.trace}: not a readable Perfetto trace ({e})", file=sys.stderr)
        return 2
    print("\n".join(lines(events, args.pipes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
