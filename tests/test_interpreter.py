"""The interpreter's dtype behaviour, checked against facts computed here by other means."""
import math
import struct

import pytest
import torch

from attnc.ir import parse_ir
from attnc.ir.interpreter import cast_tensor, run_module, sparse_attention, topk_indices


def _bf16_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0] >> 16


def test_cast_rint_is_nearest_even_on_bf16_ties():
    # 1 + 2^-8 is exactly halfway between bf16 1.0 and 1 + 2^-7: nearest-even picks 1.0
    x = torch.tensor([1 + 2 ** -8, 1 + 3 * 2 ** -8], dtype=torch.float32)
    y = cast_tensor(x, "bf16", "rint").float().tolist()
    assert y == [1.0, 1 + 2 ** -6]


def test_cast_round_is_ties_away_and_trunc_is_toward_zero():
    x = torch.tensor([1 + 2 ** -8, -(1 + 2 ** -8), 1 + 2 ** -7 + 2 ** -9], dtype=torch.float32)
    assert cast_tensor(x, "bf16", "round").float().tolist() == [1 + 2 ** -7, -(1 + 2 ** -7), 1 + 2 ** -7]
    assert cast_tensor(x, "bf16", "trunc").float().tolist() == [1.0, -1.0, 1 + 2 ** -7]


def test_float_to_int_cast_modes():
    x = torch.tensor([2.5, -2.5, 3.7, -3.7])
    assert cast_tensor(x, "i32", "rint").tolist() == [2, -2, 4, -4]
    assert cast_tensor(x, "i32", "round").tolist() == [3, -3, 4, -4]
    assert cast_tensor(x, "i32", "trunc").tolist() == [2, -2, 3, -3]


def test_bf16_matmul_accumulates_in_f32():
    # 256 products of 1 * 2^-9 plus 1: a bf16 accumulator would stall at 1.0, f32 gives 1.5
    text = '''builtin.module {
  func.func @f(%a: tensor<1x257xbf16>, %b: tensor<257x1xbf16>) -> tensor<1x1xf32> {
    %0 = "attn.matmul"(%a, %b) <{transpose_b = false}> : (tensor<1x257xbf16>, tensor<257x1xbf16>) -> tensor<1x1xf32>
    func.return %0 : tensor<1x1xf32>
  }
}'''
    a = torch.ones(1, 257, dtype=torch.bfloat16)
    b = torch.full((257, 1), 2 ** -9, dtype=torch.bfloat16)
    b[0, 0] = 1.0
    (out,) = run_module(parse_ir(text), [a, b])
    assert out.item() == 1.5


def test_sink_enters_denominator_only():
    q = torch.tensor([[[1.0, 0.0]]])
    kv = torch.tensor([[[2.0, 1.0]]])
    valid = torch.tensor([[True]])
    sink = torch.tensor([0.5])
    out = sparse_attention(q, kv, valid, sink, scale=1.0)
    w = math.exp(2.0) / (math.exp(2.0) + math.exp(0.5))
    assert torch.allclose(out, torch.tensor([[[2.0 * w, 1.0 * w]]]), atol=1e-6)


def test_no_visible_key_and_no_sink_gives_zero_not_nan():
    q = torch.randn(1, 2, 4)
    kv = torch.full((1, 3, 4), float("nan"))
    valid = torch.zeros(1, 3, dtype=torch.bool)
    out = sparse_attention(q, kv, valid, torch.full((2,), -math.inf), scale=0.5)
    assert torch.equal(out, torch.zeros_like(out))


def test_invalid_garbage_keys_do_not_leak():
    q = torch.randn(1, 1, 4)
    kv = torch.randn(1, 3, 4)
    kv[0, 2] = float("nan")
    valid = torch.tensor([[True, True, False]])
    out = sparse_attention(q, kv, valid, torch.zeros(1), scale=0.5)
    ref = sparse_attention(q, kv[:, :2], valid[:, :2], torch.zeros(1), scale=0.5)
    assert torch.allclose(out, ref)


def test_topk_tie_break_is_lower_index_and_pads_with_minus_one():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 9.0]])
    valid = torch.tensor([[True, True, True, True, False]])
    assert topk_indices(scores, valid, 3).tolist() == [[1, 2, 3]]
    assert topk_indices(scores, valid, 5).tolist() == [[1, 2, 3, 0, -1]]


def test_gather_out_of_range_is_a_located_error():
    from attnc.ir.interpreter import InterpretError

    text = '''builtin.module {
  func.func @f(%t: tensor<4x2xf32>, %i: tensor<3xi32>) -> tensor<3x2xf32> {
    %0 = "attn.gather_rows"(%t, %i) {loc = "k.py:3"} : (tensor<4x2xf32>, tensor<3xi32>) -> tensor<3x2xf32>
    func.return %0 : tensor<3x2xf32>
  }
}'''
    with pytest.raises(InterpretError, match=r"^k\.py:3: 'attn\.gather_rows': row index out of range"):
        run_module(parse_ir(text), [torch.zeros(4, 2), torch.tensor([0, 4, 1], dtype=torch.int32)])


_SCATTER = '''builtin.module {
  func.func @f(%t: tensor<2x3x2xf32>, %r: tensor<3x2xf32>, %i: tensor<3xi32>) -> tensor<2x3x2xf32> {
    %0 = "attn.scatter_rows"(%t, %r, %i) {loc = "k.py:5"} : (tensor<2x3x2xf32>, tensor<3x2xf32>, tensor<3xi32>) -> tensor<2x3x2xf32>
    func.return %0 : tensor<2x3x2xf32>
  }
}'''


def test_scatter_rows_stores_rows_at_flat_ids_and_skips_negative_ones():
    """Row id r is row r of the table's [2*3, 2] flattening; -1 stores nothing; the input is not modified."""
    table = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    rows = -torch.arange(1, 7, dtype=torch.float32).reshape(3, 2)
    (out,) = run_module(parse_ir(_SCATTER), [table, rows, torch.tensor([4, -1, 0], dtype=torch.int32)])
    want = table.clone()
    want[1, 1], want[0, 0] = rows[0], rows[2]
    assert torch.equal(out, want)
    assert torch.equal(table, torch.arange(12, dtype=torch.float32).reshape(2, 3, 2))


@pytest.mark.parametrize("ids, message", [([0, 6, 1], r"row id 6 out of range \[0, 6\)"),
                                          ([2, -1, 2], r"row id 2 written twice")])
def test_scatter_rows_refuses_out_of_range_and_duplicate_ids(ids, message):
    from attnc.ir.interpreter import InterpretError

    with pytest.raises(InterpretError, match=r"^k\.py:5: 'attn\.scatter_rows': " + message):
        run_module(parse_ir(_SCATTER), [torch.zeros(2, 3, 2), torch.ones(3, 2), torch.tensor(ids, dtype=torch.int32)])


def _carry_module(also_return_init: bool) -> str:
    ret = "%r, %z" if also_return_init else "%r"
    types = "tensor<2x4xf32>, tensor<2x4xf32>" if also_return_init else "tensor<2x4xf32>"
    return f'''builtin.module {{
  func.func @f(%x: tensor<2x4xf32>) -> ({types}) {{
    %z = "tile.full"() <{{value = 0.0 : f64}}> : () -> tensor<2x4xf32>
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c2 = arith.constant 2 : index
    %r = "scf.for"(%c0, %c2, %c1, %z) ({{
    ^bb0(%i: index, %acc: tensor<2x4xf32>):
      %t = "tile.view"(%x, %i, %c0) <{{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 0>}}> : (tensor<2x4xf32>, index, index) -> tensor<1x4xf32>
      %t2 = "tile.muls"(%t) <{{scalar = 2.0 : f64}}> : (tensor<1x4xf32>) -> tensor<1x4xf32>
      %a = "tile.assemble"(%t2, %acc, %i, %c0) <{{operandSegmentSizes = array<i32: 1, 1, 2, 0>}}> : (tensor<1x4xf32>, tensor<2x4xf32>, index, index) -> tensor<2x4xf32>
      "scf.yield"(%a) : (tensor<2x4xf32>) -> ()
    }}) : (index, index, index, tensor<2x4xf32>) -> tensor<2x4xf32>
    func.return {ret} : {types}
  }}
}}'''


@pytest.mark.parametrize("also_return_init", [False, True])
def test_scf_for_carry_updated_in_place_only_when_owned(also_return_init):
    """An scf.for carry is assembled into in place (no copy of a flash token's outputs per chunk) only when its
    init value has no other use: a returned init keeps its zeros."""
    from attnc.ir.interpreter import _owned, entry_function

    module = parse_ir(_carry_module(also_return_init))
    loop = next(op for op in entry_function(module).walk() if op.name == "scf.for")
    assert _owned(loop.body.block.args[1]) is (not also_return_init)
    x = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    out = run_module(module, [x])
    assert torch.equal(out[0], 2 * x)
    if also_return_init:
        assert torch.equal(out[1], torch.zeros(2, 4))


def test_weight_cache_covers_casts_of_inputs():
    """pto-dtype casts every bf16 weight to f16 on entry: the f64 copy a matmul needs is made once per run for
    such a cast too (it was remade for every token: 41 % of flash decode_swa's check), never for other tensors."""
    from attnc.ir.interpreter import _WeightCache

    w = torch.randn(8, 4).bfloat16()
    cache = _WeightCache([w])
    w16 = cast_tensor(w, "f16")
    other = w16.clone()
    cache.derive(w, w16)
    cache.derive(other, other.float())  # not an input's: stays uncached
    assert cache.as_f64(w16[:, :2]) is cache.as_f64(w16[:, :2])
    assert torch.equal(cache.as_f64(w16[:, :2]), w16[:, :2].double())
    assert cache.as_f64(other) is not cache.as_f64(other)
