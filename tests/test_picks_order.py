"""A caller's pick list (issue 18): `cmp_idx` of sparse_attn / sparse_attn_core (dense and packed) holds distinct
entry ids in any order, -1 anywhere for none, ids of entries not complete yet included; every order of the same
list gives the FP32 reference's output (whose visible set is built per id, order-independent by construction) at
the tensor level, after the interpreter pipeline (gather-keys) and after the pypto pipeline (schedule-attention),
and in SIM equal to the interpreter. The picks' fast path (a gather through a valid-shape index view, no per-pick
mask) is the one decode_csa's top-k picks take, with nothing assumed about the order."""
from __future__ import annotations

import functools
import re

import pytest
import torch

from attnc.ir.interpreter import run_module
from attnc.kernels_src import STAGES, build_stage, resolve_config
from attnc.kernels_src.inputs import IndexInputError, make_inputs
from attnc.passes import DEFAULT_PIPELINE, PYPTO_PIPELINE
from attnc.passes.verify import normalised_error, run_pipeline
from tests.markers import needs_pypto
from tests.reference.dsv4_reference import sparse_attn_reference

TOLERANCE = 3e-2  # as tests/test_stages_vs_reference.py: bf16 outputs against the FP32 reference
LEVELS = ("tensor", "interp", "pypto")
# tiny: W=8, m=4, n_cmp=8, K=4, S=2. Row starts: 2 (entry 0 completes inside the step: t=2 sees none, t=3 one),
# 6 (entry 1 completes at t=7), 9 and 13 (2 and 3 of K=4 visible), 0 (nothing complete), 45 (every entry)
STARTS = [[2, 9], [6, 13], [0, 45]]


@functools.lru_cache(maxsize=None)
def _module(stage: str, level: str, overrides: tuple = ()):
    module = build_stage(STAGES[stage], resolve_config("tiny", dict(overrides)))
    if level != "tensor":
        run_pipeline(module, DEFAULT_PIPELINE if level == "interp" else PYPTO_PIPELINE)
    return module


def _run(stage: str, level: str, inputs: dict, overrides: tuple = ()) -> torch.Tensor:
    return run_module(_module(stage, level, overrides), list(inputs.values()))[0].float()


def _lists(rows: int, cfg: dict, gen: torch.Generator) -> torch.Tensor:
    """[rows, K] distinct ids of any entry (complete or not), 0..2 of them replaced by -1 at random places."""
    K, N = cfg["cmp_topk"], cfg["n_cmp"]
    idx = torch.stack([torch.randperm(N, generator=gen)[:K] for _ in range(rows)])
    for r in range(rows):
        idx[r, torch.randperm(K, generator=gen)[:int(torch.randint(0, 3, (1,), generator=gen))]] = -1
    return idx.to(torch.int32)


def _permuted(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Every row of the last axis in its own random order."""
    flat = idx.reshape(-1, idx.shape[-1])
    return torch.stack([row[torch.randperm(len(row), generator=gen)] for row in flat]).reshape(idx.shape)


def _poisoned(inputs: dict, cfg: dict) -> dict:
    """NaN in every row no token of the step may read: ring slots >= start_pos (while start_pos < W) and cache
    entries not complete by the step's last token (listed ids may name them)."""
    ring, cache = inputs["kv_ring"].clone(), inputs["kv_cmp"].clone()
    for b, sp in enumerate(inputs["start_pos"].tolist()):
        ring[b, sp:] = float("nan")
        cache[b, (sp + cfg["seq"]) // cfg["compress_ratio"]:] = float("nan")
    return dict(inputs, kv_ring=ring, kv_cmp=cache)


def _visible_first(idx: torch.Tensor, positions: torch.Tensor, m: int) -> torch.Tensor:
    """The order the indexer's top-k would give the same set: visible ids first, then the rest, -1 last."""
    flat, t = idx.reshape(-1, idx.shape[-1]), positions.reshape(-1)
    rank = torch.where(flat < 0, 2, torch.where(flat < ((t + 1) // m).unsqueeze(1), 0, 1))
    order = torch.sort(rank, dim=1, stable=True).indices
    return torch.gather(flat, 1, order).reshape(idx.shape)


def test_issue_case_any_order_of_one_list():
    """The reproducer of issue 18: entries 0 and 1 visible, 2 not, at start_pos 8 (batch 1, one token)."""
    over = (("batch", 1), ("seq", 1))
    cfg = resolve_config("tiny", dict(over))
    for idx in ([0, 1, 2, -1], [2, 0, 1, -1], [-1, 0, 1, -1], [1, -1, 2, 0]):
        inputs = make_inputs(STAGES["sparse_attn"], cfg, 0, {"start_pos": torch.tensor([8], dtype=torch.int32),
                                                              "cmp_idx": torch.tensor([[idx]], dtype=torch.int32)})
        ref = sparse_attn_reference(inputs, cfg)["out"]
        for level in LEVELS:
            err = normalised_error(_run("sparse_attn", level, inputs, over), ref)
            assert err <= TOLERANCE, (idx, level, err)


@pytest.mark.parametrize("stage", ["sparse_attn_core", "sparse_attn"])
@pytest.mark.parametrize("starts", STARTS, ids=[f"start{s[0]}-{s[1]}" for s in STARTS])
def test_permuted_pick_lists_match_the_reference(stage, starts):
    """Seeded lists, three orders each (visible first as the indexer gives them, visible last, a permutation),
    NaN in every row nobody may read: every output finite and within the tolerance of the FP32 reference at all
    three levels."""
    cfg = resolve_config("tiny")
    gen = torch.Generator().manual_seed(sum(starts))
    start_pos = torch.tensor(starts, dtype=torch.int32)
    base = _poisoned(make_inputs(STAGES[stage], cfg, 7, {"start_pos": start_pos}), cfg)
    idx = _lists(cfg["batch"] * cfg["seq"], cfg, gen).reshape(cfg["batch"], cfg["seq"], -1)
    positions = start_pos.reshape(-1, 1) + torch.arange(cfg["seq"])
    out_name = STAGES[stage].outputs[0]
    first = _visible_first(idx, positions, cfg["compress_ratio"])
    orders = [first, first.flip(-1), _permuted(idx, gen)]
    for order in orders:
        inputs = dict(base, cmp_idx=order)
        ref = sparse_attn_reference(inputs, cfg)[out_name]
        for level in LEVELS:
            got = _run(stage, level, inputs)
            assert torch.isfinite(got).all(), (order.tolist(), level)
            err = normalised_error(got, ref)
            assert err <= TOLERANCE, (order.tolist(), level, err)


def test_packed_permuted_pick_lists_match_the_reference():
    """The packed layout (rows of 2 tokens, so the dense reference reads the same arrays as [B, S, ...])."""
    over = (("batch", 2), ("layout", "packed"), ("tokens", 4))
    cfg, dense = resolve_config("tiny", dict(over)), resolve_config("tiny")
    gen = torch.Generator().manual_seed(3)
    cu = torch.tensor([0, 2, 4], dtype=torch.int32)
    for starts in STARTS:
        base = make_inputs(STAGES["sparse_attn_core"], cfg, 8,
                           {"cu_seqlens": cu, "start_pos": torch.tensor(starts, dtype=torch.int32)})
        idx = _lists(4, cfg, gen)
        first = _visible_first(idx, base["position_ids"], cfg["compress_ratio"])
        for order in (first, first.flip(-1), _permuted(idx, gen)):
            inputs = dict(base, cmp_idx=order)
            as_dense = {n: v.reshape(2, 2, *v.shape[1:]) if n in ("q", "kv_step", "cmp_idx") else v
                        for n, v in inputs.items()}
            as_dense["start_pos"] = inputs["position_ids"][cu[:-1].long()]
            ref = sparse_attn_reference(as_dense, dense)["core"].reshape(4, *inputs["q"].shape[1:])
            for level in LEVELS:
                err = normalised_error(_run("sparse_attn_core", level, inputs, over), ref)
                assert err <= TOLERANCE, (order.tolist(), level, err)


def test_a_token_listing_an_id_twice_is_refused_on_the_host():
    cfg = resolve_config("tiny")
    idx = torch.full((2, 2, 4), -1, dtype=torch.int32)
    idx[1, 0] = torch.tensor([6, -1, 2, 6])
    with pytest.raises(IndexInputError, match=r"^array 'cmp_idx'\[1, 0, 3\]: id 6 listed twice in row \[1, 0\] "
                                              r"\(also at position 0"):
        make_inputs(STAGES["sparse_attn_core"], cfg, 0, {"cmp_idx": idx})
    idx[1, 0] = torch.tensor([6, -1, 2, -1])  # -1 repeats freely
    make_inputs(STAGES["sparse_attn_core"], cfg, 0, {"cmp_idx": idx})


def test_an_ir_claiming_an_order_of_the_list_is_refused(tmp_path, capsys):
    """A hand-built IR that states a fact about the index's order (an older attnc's `listed_prefix`) on a caller's
    list is refused by the op's verifier with one located line (exit 2), not carried along unread."""
    from attnc.cli import main
    from attnc.ir.printing import render_ir

    module = build_stage(STAGES["sparse_attn_core"], resolve_config("tiny"))
    path = tmp_path / "claim.mlir"
    path.write_text(render_ir(module, debuginfo=True).replace("ratio = 4 : i64}", "ratio = 4 : i64, listed_prefix = true}"))
    assert "listed_prefix = true" in path.read_text()
    assert main(["compile", str(path), "-o", str(tmp_path / "out.mlir")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(r"claim\.mlir: .*'attn\.cache_attention': unknown attribute 'listed_prefix': "
                                       r".*listed ids are taken in any order", err[0]), err
    assert not (tmp_path / "out.mlir").exists()


@pytest.mark.parametrize("stage", ["sparse_attn_core", "decode_csa"])
def test_picks_take_the_fast_path_whatever_their_producer(stage):
    """A caller's list (sparse_attn_core) and the indexer's top-k (decode_csa) are gathered the same way: per
    token one gather through a valid-shape index view (K rows or none) written straight into the key block, no
    per-pick select; the op states no order of the list (there is no order fact to prove)."""
    from attnc.codegen.pypto.emit import emit_pypto

    cfg = resolve_config("tiny")
    module = build_stage(STAGES[stage], cfg)
    (op,) = [op for op in module.walk() if op.name == "attn.cache_attention"]
    assert set(op.properties) == {"scale", "ratio", "operandSegmentSizes"}
    run_pipeline(module, PYPTO_PIPELINE)
    program = emit_pypto(module)
    K, S = cfg["cmp_topk"], cfg["seq"]
    views = re.findall(rf"(\w+) = pypto\.view\(\w+, \[{K}\], \[0\], valid_shape=\[\w+\]\)", program)
    assert len(views) == S
    for index in views:
        assert re.search(rf"= pypto\.index_select\(\w+, 0, {index}\)", program)


@needs_pypto
def test_sim_permuted_list_equals_the_interpreter():
    """pypto SIM of the scheduled sparse_attn_core on permuted lists (-1 anywhere, ids not complete yet, an entry
    completing inside the step, NaN in never-written rows): bit for bit the interpreter of the same tile IR, which
    is within the tolerance of the reference."""
    from attnc.codegen.pypto.target import run_pypto_sim

    cfg = resolve_config("tiny")
    start_pos = torch.tensor([2, 6], dtype=torch.int32)  # tokens at 2, 3 | 6, 7: entries visible 0, 1 | 1, 2
    inputs = _poisoned(make_inputs(STAGES["sparse_attn_core"], cfg, 9, {"start_pos": start_pos}), cfg)
    inputs["cmp_idx"] = torch.tensor([[[-1, 3, 0, -1], [7, -1, 2, 0]], [[5, -1, 0, 4], [-1, 6, 1, 0]]],
                                     dtype=torch.int32)  # visible ids behind invisible ones and -1
    module = _module("sparse_attn_core", "pypto")
    want = run_module(module, list(inputs.values()))[0]
    assert normalised_error(want.float(), sparse_attn_reference(inputs, cfg)["core"]) <= TOLERANCE
    # values only: its verify records are those of every CSA core program (the picks' valid-shape index view,
    # see test_schedule_attention.py::test_sim_never_written_rows_hold_nan), whatever the list holds
    res = run_pypto_sim(module, inputs, timeout_s=300)
    assert torch.isfinite(res.outputs["core"].float()).all()
    assert torch.equal(res.outputs["core"], want)
