"""IR: verifiers give located messages, print -> parse -> print is byte-identical, the DSL records locations."""
import pytest
import torch

from attnc.ir import IRError, parse_ir, print_ir
from attnc.ir.dsl import DSLError, In, build_stage, matmul, reshape, rope, stage, token_positions, STAGES
from attnc.kernels_src import resolve_config


@pytest.mark.parametrize("stage_name", ["qkv_proj_rope", "sparse_attn_core", "sparse_attn"])
@pytest.mark.parametrize("config", ["tiny", "flash"])
def test_roundtrip_is_byte_identical(stage_name, config):
    text = print_ir(build_stage(STAGES[stage_name], resolve_config(config)))
    assert print_ir(parse_ir(text)) == text


def test_build_is_deterministic():
    cfg = resolve_config("tiny")
    assert print_ir(build_stage(STAGES["sparse_attn"], cfg)) == print_ir(build_stage(STAGES["sparse_attn"], cfg))


def test_ops_carry_dsl_locations():
    text = print_ir(build_stage(STAGES["qkv_proj_rope"], resolve_config("tiny")))
    assert 'loc = "kernels_src/qkv_proj_rope.py:' in text


def test_verifier_reports_shape_mismatch_with_location():
    text = '''builtin.module {
  func.func @f(%a: tensor<2x3xbf16>, %b: tensor<4x5xbf16>) -> tensor<2x5xf32> {
    %0 = "attn.matmul"(%a, %b) <{transpose_b = false}> {loc = "k.py:7"} : (tensor<2x3xbf16>, tensor<4x5xbf16>) -> tensor<2x5xf32>
    func.return %0 : tensor<2x5xf32>
  }
}'''
    with pytest.raises(IRError, match=r"k\.py:7: 'attn\.matmul': contraction mismatch"):
        parse_ir(text, "m.mlir")


def test_verifier_rejects_dtype_mismatch():
    text = '''builtin.module {
  func.func @f(%a: tensor<4xbf16>, %b: tensor<4xf32>) -> tensor<4xf32> {
    %0 = "attn.add"(%a, %b) : (tensor<4xbf16>, tensor<4xf32>) -> tensor<4xf32>
    func.return %0 : tensor<4xf32>
  }
}'''
    with pytest.raises(IRError, match="one dtype"):
        parse_ir(text)


def test_malformed_text_reports_line_and_column():
    with pytest.raises(IRError, match=r"^bad\.mlir:3:1: operation name expected"):
        parse_ir("builtin.module {\n  %0 = \n}", "bad.mlir")


def test_unknown_rounding_mode_is_rejected():
    text = '''builtin.module {
  func.func @f(%a: tensor<4xf32>) -> tensor<4xbf16> {
    %0 = "attn.cast"(%a) <{rounding = "up"}> : (tensor<4xf32>) -> tensor<4xbf16>
    func.return %0 : tensor<4xbf16>
  }
}'''
    with pytest.raises(IRError, match="rounding must be one of"):
        parse_ir(text)


def test_rope_positions_must_be_per_token():
    """A [B] position vector cannot rotate [B,S,...] tokens: each token needs its own position (pypto-lib#462)."""
    STAGES.pop("_bad_rope", None)

    @stage("_bad_rope", outputs=("y",))
    def _bad_rope(cfg, x: In("batch", "seq", "head_dim"), start_pos: In("batch", dtype="i32"),
                  c: In("max_pos", "rope_half", dtype="f32"), s: In("max_pos", "rope_half", dtype="f32")):
        return {"y": rope(x, c, s, start_pos, out="bf16")}

    @stage("_bad_rope2", outputs=("y",))
    def _bad_rope2(cfg, x: In("batch", "seq", "head_dim"), start_pos: In("batch", dtype="i32"),
                   c: In("max_pos", "rope_half", dtype="f32"), s: In("max_pos", "rope_half", dtype="f32")):
        # one position per batch row broadcast over the step: the multi-token bug of pypto-lib#462
        pos = reshape(token_positions(start_pos, 1), (cfg["batch"],))
        return {"y": rope(x, c, s, pos, out="bf16")}

    try:
        with pytest.raises(DSLError, match=r"test_ir\.py:\d+: rope positions must come from token_positions"):
            build_stage(STAGES["_bad_rope"], resolve_config("tiny"))
        with pytest.raises(DSLError, match=r"test_ir\.py:\d+: rope positions give 2 token positions but the stage has 4 tokens"):
            build_stage(STAGES["_bad_rope2"], resolve_config("tiny"))
    finally:
        STAGES.pop("_bad_rope")
        STAGES.pop("_bad_rope2")


def test_dsl_shape_error_points_at_the_stage_line():
    STAGES.pop("_bad_mm", None)

    @stage("_bad_mm", outputs=("y",))
    def _bad_mm(cfg, x: In("tokens", "dim"), w: In("head_dim", "dim")):
        return {"y": matmul(x, w)}

    try:
        with pytest.raises(DSLError, match=r"test_ir\.py:\d+: 'attn\.matmul': contraction mismatch"):
            build_stage(STAGES["_bad_mm"], resolve_config("tiny"))
    finally:
        STAGES.pop("_bad_mm")
