"""benchmarks/trace_breakdown.py: the cost model's tasks are grouped by (core kind, root function, subgraph) with
their span and summed time, a group's pipe busy time is read inside its first task only, and an unreadable trace
is one error line with exit 2."""
from __future__ import annotations

import importlib.util
import json
import os
import sys

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "trace_breakdown.py")
_spec = importlib.util.spec_from_file_location("trace_breakdown", _PATH)
tb = importlib.util.module_from_spec(_spec)
sys.modules["trace_breakdown"] = tb  # its dataclass looks its module up there
_spec.loader.exec_module(tb)


def _trace():
    meta = [{"ph": "M", "name": "process_name", "pid": p, "args": {"name": n}}
            for p, n in ((30000, "AIC_0"), (40000, "AIV_0"), (40001, "AIV_1"), (20073, "AICPU_0"))]
    meta += [{"ph": "M", "name": "thread_name", "pid": p, "tid": t, "args": {"name": n}}
             for p in (30000, 40000, 40001) for t, n in ((106, "MTE_IN"), (108, "VECTOR_ALU"), (101, "VECTOR_BMU"))]
    task = lambda pid, ts, dur, root, sg: {"ph": "X", "pid": pid, "tid": 1, "ts": ts, "dur": dur,  # noqa: E731
                                           "name": f"0-{root}-7-{root}-{sg} (e)"}
    pipe = lambda pid, tid, ts, dur, op: {"ph": "X", "pid": pid, "tid": tid, "ts": ts, "dur": dur,  # noqa: E731
                                          "name": f"11 {op} DDR_[0,0][8,8]"}
    return meta + [
        task(30000, 1800, 3600, 1, 4),                       # one cube task, 1-3 us
        task(40000, 3600, 1800, 2, 6), task(40001, 5400, 3600, 2, 6),  # two vector tasks of one leaf function
        pipe(40000, 106, 3600, 900, "COPY_IN"), pipe(40000, 108, 4500, 450, "RELU"),
        pipe(40000, 101, 3600, 1800, "UB_[0,0]"),             # a buffer lane: not work
        pipe(40001, 106, 5400, 3600, "COPY_IN"),             # the second task's: not the first task's busy time
        {"ph": "X", "pid": 20073, "tid": 100, "ts": 0, "dur": 240, "name": "PollingCore_30000"},
    ]


def test_groups_spans_and_first_task_pipes():
    groups, pipes = tb.read_trace(_trace())
    assert [(g.kind, g.root, g.subgraph, len(g.spans)) for g in groups] == [("AIC", 1, 4, 1), ("AIV", 2, 6, 2)]
    vec = groups[1]
    assert (vec.start, vec.end, vec.busy) == (3600, 9000, 5400)
    assert tb.pipe_busy(vec, pipes) == {("MTE_IN", "COPY_IN"): 900, ("VECTOR_ALU", "RELU"): 450}
    out = tb.lines(_trace(), with_pipes=True)
    assert out[-1] == "end to end 4.0 us, 3 tasks"
    assert out[1].startswith("AIV root 2  sg 6   tasks 2 ") and "per task   1.50" in out[1]


def test_unreadable_trace_is_one_error_line(tmp_path, capsys):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"nothing": []}))
    assert tb.main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable Perfetto trace" in err
