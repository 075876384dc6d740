"""The differential shape matrix (benchmarks/sim_matrix.py): a seeded sample in the default suite -- every stage
and layout at batch 1 against the FP32 reference and, where the stage takes a pick list, for any order of it
(interpreter level), and two cells in pypto SIM against the interpreter; the whole matrix under -m slow (hours)."""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from tests.markers import needs_pypto

_spec = importlib.util.spec_from_file_location(
    "sim_matrix", os.path.join(os.path.dirname(__file__), "..", "benchmarks", "sim_matrix.py"))
sim_matrix = sys.modules.setdefault("sim_matrix", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(sim_matrix)  # (registered first: its dataclasses look their module up)

SAMPLE = sim_matrix.sample(0)
# SIM in the default suite: two cells (20-30 s each at tiny): a core at batch 1, the indexer (top-k picks, tie-aware)
SIM_SAMPLE = [sim_matrix.Cell("sparse_attn_core", "dense", 1, 2), sim_matrix.Cell("indexer", "dense", 3, 2)]


def test_sample_covers_every_stage_and_layout_at_batch_one():
    from attnc.kernels_src import STAGES

    assert len(sim_matrix.project_stages()) >= 13 and set(sim_matrix.project_stages()) <= set(STAGES)
    assert {c.stage for c in SAMPLE} == set(sim_matrix.project_stages()) and all(c.batch == 1 for c in SAMPLE)
    assert {c.layout for c in SAMPLE} == {"dense", "packed", "paged"}
    kinds, starts, seed = sim_matrix.draw_starts(sim_matrix.Cell("decode_csa", "dense", 3, 5), 0, 8)
    assert (kinds, starts, seed) == sim_matrix.draw_starts(sim_matrix.Cell("decode_csa", "dense", 3, 5), 0, 8)
    assert len(starts) == 3 and all(0 <= p <= sim_matrix.MAX_POS - 5 for p in starts)
    # the boundaries: 0, W-1, W, a block completing inside the step (m=4, m=128), the last position
    assert [sim_matrix.start_position(k, 5, 8) for k in sim_matrix.START_KINDS] == [0, 7, 8, 1, 125, 251]


@pytest.mark.parametrize("cell", SAMPLE, ids=[c.key for c in SAMPLE])
def test_matrix_cell_interpreter_level(cell):
    r = sim_matrix.run_cell(cell, 0, sim=False, history=False)  # seeded layer state: no history (fast)
    assert r.status in ("passed", "refused"), r.reason
    assert r.start_pos and len(r.start_pos) == cell.batch or r.status == "refused"


def test_w8a8_cells_quantise_the_projections_and_meet_the_pass_tolerance():
    """`--quant w8a8`: the stages with a quantisable projection, keyed apart; the FP32 reference is given the
    dequantised weights and the tolerance is quantize-w8a8's declared one."""
    from attnc.passes import pass_class

    quant = sim_matrix.cells("w8a8")
    layers = {f"decode_{k}{p}" for k in ("swa", "hca", "csa") for p in ("", "_paged")}
    assert {c.stage for c in quant} == {"qkv_proj_rope", "indexer"} | layers
    assert all(c.key.endswith("|w8a8") for c in quant) and not {c.key for c in quant} & {
        c.key for c in sim_matrix.cells()}
    tol = pass_class("quantize-w8a8").tolerance
    runs = {q: sim_matrix.run_cell(sim_matrix.Cell("qkv_proj_rope", "dense", 2, 2, q), 0, sim=False)
            for q in ("none", "w8a8")}
    assert runs["w8a8"].status == "passed" and runs["w8a8"].ref["tolerance"] == tol
    assert 0 < runs["w8a8"].ref["errors"]["q"] <= tol
    assert runs["w8a8"].ref["errors"]["q"] != runs["none"].ref["errors"]["q"]  # the activation was quantised


def test_a_sim_run_without_verify_records_fails_its_cell(monkeypatch):
    """A run whose pypto log is gone (its run folder removed while it ran: indexer|packed|b2|s4 once passed with
    0 records) verified nothing: the cell fails instead of passing on its outputs alone."""
    from attnc.codegen.pypto import target

    cell = sim_matrix.Cell("indexer", "dense", 1, 1)
    monkeypatch.setattr(target, "run_pypto_sim", lambda *a, **k: target.PyptoRun({}, None, [], [], 1.0, ""))
    res = sim_matrix.Result(cell.key, cell.stage, cell.layout, cell.batch, cell.seq, 0)
    assert sim_matrix._sim(cell, None, {}, "", res, 60) == [
        "sim: no per-pass verify records (pypto's log of the run is missing)"]
    assert res.sim["status"] == "failed" and res.sim["records"] == 0


@needs_pypto
@pytest.mark.parametrize("cell", SIM_SAMPLE, ids=[c.key for c in SIM_SAMPLE])
def test_matrix_cell_in_sim(cell):
    r = sim_matrix.run_cell(cell, 0, sim=True, timeout_s=600, history=False)
    assert r.status in ("passed", "refused"), r.reason
    assert r.status == "refused" or r.sim["status"] == "ok"


@pytest.mark.slow
@needs_pypto
def test_full_matrix(tmp_path):
    """Every cell (hours on 2 cores): no failed cell; refused cells are listed with their reason in the table."""
    code = sim_matrix.main(["--out", str(tmp_path / "matrix.jsonl")])
    assert code == 0
