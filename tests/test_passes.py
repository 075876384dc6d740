"""Passes: each does its rewrite, keeps its declared precision (translation validation), is deterministic,
round-trips as text; parallelize-tokens refuses dependent iterations; --verify-each catches a wrong pass."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from xdsl.pattern_rewriter import PatternRewriter, PatternRewriteWalker, RewritePattern

from attnc.ir import parse_ir, print_ir
from attnc.ir.interpreter import run_module
from attnc.kernels_src import STAGES, build_stage, resolve_config
from attnc.kernels_src.inputs import make_inputs
from attnc.passes import DEFAULT_PIPELINE, AttncPass, PassError, register
from attnc.passes.verify import VerificationFailed, run_pipeline


def compile_stage(stage, pipeline, cfg=None, seed=0):
    cfg = cfg or resolve_config("tiny")
    st = STAGES[stage]
    module = build_stage(st, cfg)
    inputs = list(make_inputs(st, cfg, seed).values())
    report = run_pipeline(module, pipeline, verify_inputs=inputs, output_names=st.outputs)
    return module, report, inputs


def op_names(module) -> set[str]:
    return {op.name for op in module.walk()}


@pytest.mark.parametrize("stage", ["qkv_proj_rope", "sparse_attn_core", "sparse_attn"])
def test_default_pipeline_every_pass_within_tolerance_and_roundtrips(stage):
    cfg = resolve_config("tiny")
    st = STAGES[stage]
    module = build_stage(st, cfg)
    dumps = []
    report = run_pipeline(module, DEFAULT_PIPELINE, verify_inputs=list(make_inputs(st, cfg, 1).values()),
                          output_names=st.outputs, after_pass=lambda label, m: dumps.append(print_ir(m)))
    assert len(report.records) == len(report.passes) * len(st.outputs)
    assert not report.failed
    for text in dumps:
        assert print_ir(parse_ir(text)) == text
    names = op_names(module)
    assert not any(n.startswith("attn.") for n in names)
    assert "tile.parallel" in names


def test_pipeline_output_is_deterministic():
    a, _, _ = compile_stage("sparse_attn", DEFAULT_PIPELINE)
    b, _, _ = compile_stage("sparse_attn", DEFAULT_PIPELINE)
    assert print_ir(a) == print_ir(b)


def test_fuse_rmsnorm_is_exact_and_uses_recip_sqrt():
    m, report, _ = compile_stage("qkv_proj_rope", "fuse-rmsnorm", resolve_config("flash", {"batch": 1}))
    names = op_names(m)
    assert "attn.rmsnorm" not in names and "attn.recip" in names and "attn.rsqrt" not in names
    assert all(r.error == 0.0 for r in report.records)


def test_rope_selector_matmul_is_exact():
    m, report, _ = compile_stage("qkv_proj_rope", "fuse-rmsnorm,rope-selector-matmul",
                                 resolve_config("flash", {"batch": 1}))
    assert "attn.rope" not in op_names(m)
    assert all(r.error == 0.0 for r in report.records)


@pytest.mark.parametrize("stage", ["qkv_proj_rope", "indexer", "sparse_attn"])
def test_rope_pair_swap_is_exact_and_one_matmul_per_rope(stage):
    """rope-pair-swap equals the unrotated op (the pass's verify, error 0) and rope-selector-matmul bit for bit,
    with one matmul per rotated tensor besides the shared cos/sin repeats (that pass: three)."""
    cfg = resolve_config("flash", {"batch": 1}) if stage == "qkv_proj_rope" else resolve_config("tiny")
    swap, report, inputs = compile_stage(stage, "fuse-rmsnorm,rope-pair-swap", cfg)
    sel, _, _ = compile_stage(stage, "fuse-rmsnorm,rope-selector-matmul", cfg)
    assert "attn.rope" not in op_names(swap)
    assert all(r.error == 0.0 for r in report.records)
    for a, b in zip(run_module(swap, inputs), run_module(sel, inputs)):
        assert torch.equal(a, b)
    count = lambda m: sum(op.name == "attn.matmul" for op in m.walk())  # noqa: E731
    ropes = sum(op.name == "attn.rope" for op in build_stage(STAGES[stage], cfg).walk())
    assert count(sel) - count(swap) == ropes * 3 - ropes - 2  # the cos and sin repeats, made once


def test_rope_pair_swap_min_rank_leaves_lower_rank_ropes_to_the_next_rope_pass():
    """{min-rank=3}: q [T, H, d] rotated by the pair swap, kv [T, d] left as attn.rope for rope-selector-matmul
    (the pypto pipeline runs both); the two together equal the unrotated stage bit for bit."""
    cfg = resolve_config("tiny")
    part, _, _ = compile_stage("qkv_proj_rope", "fuse-rmsnorm,rope-pair-swap{min-rank=3}", cfg)
    left = [op for op in part.walk() if op.name == "attn.rope"]
    assert len(left) == 1 and len(left[0].input.type.get_shape()) == 2
    both, report, inputs = compile_stage("qkv_proj_rope", "fuse-rmsnorm,rope-pair-swap{min-rank=3},rope-selector-matmul",
                                         cfg)
    assert "attn.rope" not in op_names(both) and all(r.error == 0.0 for r in report.records)
    sel, _, _ = compile_stage("qkv_proj_rope", "fuse-rmsnorm,rope-selector-matmul", cfg)
    for a, b in zip(run_module(both, inputs), run_module(sel, inputs)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kv_tile", [4, 5, 32])
@pytest.mark.parametrize("stage", ["sparse_attn_core", "sparse_attn"])
def test_tile_softmax_within_tolerance(stage, kv_tile):
    m, report, _ = compile_stage(stage, f"gather-keys,tile-softmax{{kv-tile={kv_tile}}}")
    assert "attn.sparse_attention" not in op_names(m)
    assert "attn.gather_rows" in op_names(m)  # the gather moved into the tile loop
    assert not report.failed
    assert report.records[-1].error > 0.0  # bf16 exp weights: not an exact rewrite, and reported as such


def _attention_module(tokens=2, heads=2, keys=10, d=8):
    text = f'''builtin.module {{
  func.func @att(%q: tensor<{tokens}x{heads}x{d}xbf16>, %kv: tensor<{tokens}x{keys}x{d}xbf16>, %v: tensor<{tokens}x{keys}xi1>, %s: tensor<{heads}xf32>) -> tensor<{tokens}x{heads}x{d}xf32> {{
    %0 = "attn.sparse_attention"(%q, %kv, %v, %s) <{{scale = 0.5 : f64}}> : (tensor<{tokens}x{heads}x{d}xbf16>, tensor<{tokens}x{keys}x{d}xbf16>, tensor<{tokens}x{keys}xi1>, tensor<{heads}xf32>) -> tensor<{tokens}x{heads}x{d}xf32>
    func.return %0 : tensor<{tokens}x{heads}x{d}xf32>
  }}
}}'''
    return text


def test_tile_softmax_empty_first_tiles_and_no_visible_key():
    """Tiles without a visible key never seed the merge (pypto-lib#448); a token with no key and no sink gives 0."""
    text = _attention_module()
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 2, 8, generator=gen).bfloat16()
    kv = torch.randn(2, 10, 8, generator=gen).bfloat16()
    kv[:, :6] = float("nan")  # garbage behind invisible keys
    valid = torch.zeros(2, 10, dtype=torch.bool)
    valid[0, 7] = valid[0, 9] = True  # token 0: its only keys sit in the last tiles
    sink = torch.tensor([-math.inf, 0.3])
    want = run_module(parse_ir(text), [q, kv, valid, sink])[0]
    tiled = parse_ir(text)
    run_pipeline(tiled, "gather-keys,tile-softmax{kv-tile=3}")
    got = run_module(tiled, [q, kv, valid, sink])[0]
    assert torch.isfinite(got).all()
    assert torch.equal(got[1], torch.zeros_like(got[1]))  # token 1 sees nothing
    assert torch.allclose(got, want, atol=2e-2 * want.abs().max().item())


@pytest.mark.parametrize("rows", [1, 3, 16])
@pytest.mark.parametrize("stage", ["qkv_proj_rope", "sparse_attn_core", "sparse_attn"])
def test_parallelize_tokens_is_exact(stage, rows):
    pipe = f"fuse-rmsnorm,rope-selector-matmul,gather-keys,tile-softmax{{kv-tile=4}},parallelize-tokens{{rows={rows}}}"
    m, report, _ = compile_stage(stage, pipe)
    par = [op for op in m.walk() if op.name == "tile.parallel"]
    assert len(par) == 1 and par[0].rows.value.data == {1: 1, 3: 2, 16: 4}[rows]  # whole chunks of the 4 tokens
    assert all(r.error == 0.0 for r in report.records if r.pass_name.startswith("parallelize"))


def test_parallelize_tokens_refuses_dependent_iterations():
    """A reduction over the token axis makes iterations depend on each other: the loop is refused."""
    text = '''builtin.module {
  func.func @f(%x: tensor<2x2x8xf32>) -> tensor<2x2x8xf32> attributes {token_dims = [2 : i64, 2 : i64]} {
    %0 = "attn.to_tokens"(%x) : (tensor<2x2x8xf32>) -> tensor<4x8xf32>
    %1 = "attn.reduce"(%0) <{kind = "sum", axis = 0 : i64}> {loc = "stage.py:9"} : (tensor<4x8xf32>) -> tensor<1x8xf32>
    %2 = "attn.broadcast"(%1) : (tensor<1x8xf32>) -> tensor<4x8xf32>
    %3 = "attn.sub"(%0, %2) : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>
    %4 = "attn.from_tokens"(%3) : (tensor<4x8xf32>) -> tensor<2x2x8xf32>
    func.return %4 : tensor<2x2x8xf32>
  }
}'''
    with pytest.raises(PassError, match=r"stage\.py:9: 'attn\.reduce' reduces over the token axis"):
        run_pipeline(parse_ir(text), "parallelize-tokens{rows=2}")


def test_tile_matmul_chunks_k_and_stays_within_tolerance():
    cfg = resolve_config("flash", {"batch": 1})
    m, report, _ = compile_stage("qkv_proj_rope", "tile-matmul{k=512}", cfg)
    names = op_names(m)
    assert "tile.matmul_acc" in names and "scf.for" in names
    assert not report.failed
    assert max(r.error for r in report.records) < 1e-2


def test_lower_to_tiles_requires_decomposed_composites():
    cfg = resolve_config("tiny")
    module = build_stage(STAGES["sparse_attn_core"], cfg)
    with pytest.raises(PassError, match=r"sparse_attn\.py:\d+: attn\.cache_attention must be decomposed first by gather-keys or schedule-attention"):
        run_pipeline(module, "lower-to-tiles")


def test_lower_to_tiles_uses_row_and_col_expands():
    m, report, _ = compile_stage("qkv_proj_rope", "fuse-rmsnorm,rope-selector-matmul,lower-to-tiles")
    names = op_names(m)
    assert "tile.row_expand_mul" in names and "tile.col_expand_mul" in names and "tile.row_sum" in names
    assert all(r.error == 0.0 for r in report.records)


class _Corrupt(RewritePattern):
    def match_and_rewrite(self, op, rewriter: PatternRewriter):
        if op.name == "attn.exp":
            from attnc.ir.tensor_dialect import ATTN

            new = ATTN["neg"].build(operands=[op.input], result_types=[op.result.type])
            rewriter.replace(op, [new], [new.result])


@register
@dataclass(frozen=True)
class _BrokenPass(AttncPass):
    """A deliberately wrong rewrite (exp -> neg) claiming to be exact."""

    name = "test-broken-exp"
    summary = "test only"
    tolerance = 0.0

    def apply(self, ctx, op):
        PatternRewriteWalker(_Corrupt()).rewrite_module(op)


def test_verify_each_catches_a_wrong_pass(monkeypatch):
    import attnc.passes as passes

    monkeypatch.setitem(passes._PASS_MODULES, "test-broken-exp", __name__)
    cfg = resolve_config("tiny")
    st = STAGES["sparse_attn_core"]
    module = build_stage(st, cfg)
    with pytest.raises(VerificationFailed, match="pass test-broken-exp changed output 'core'"):
        run_pipeline(module, "fuse-rmsnorm,rope-selector-matmul,gather-keys,tile-softmax,test-broken-exp",
                     verify_inputs=list(make_inputs(st, cfg).values()), output_names=st.outputs)


@pytest.mark.parametrize("spec, message", [
    ("pto-dtype{dtype=bf16}", "pto-dtype: dtype must be one of f16, got 'bf16'"),
    ("schedule-compressor{schedule=rows}", "schedule-compressor: schedule must be one of auto, block, row, token, got 'rows'"),
    ("schedule-attention{vec-tile=8}", "schedule-attention: vec-tile must be in [16, 1048576], got 8"),
    ("schedule-attention{sink=none}", "schedule-attention: sink must be one of auto, key, term, got 'none'"),
])
def test_enumerated_and_bounded_options_refused_before_the_module_changes(spec, message):
    module = build_stage(STAGES["hca_attn_core"], resolve_config("tiny"))
    before = print_ir(module)
    with pytest.raises(PassError) as refused:
        run_pipeline(module, spec)
    assert str(refused.value).endswith(message)
    assert print_ir(module) == before
