"""`attn`: the tensor-level dialect (value semantics, whole tensors, composite ops)."""
from __future__ import annotations

from xdsl.dialects.builtin import ArrayAttr, BoolAttr, FloatAttr, IntegerAttr, StringAttr, TensorType
from xdsl.ir import Dialect

from .common import (
    _make,
    define_shared_ops,
    ints_of,
    operand_def,
    opt_operand_def,
    prop_def,
    result_def,
    var_operand_def,
)
from .types import FLOAT_DTYPES, describe, dtype_of, shape_of

REDUCE_KINDS = ("sum", "max", "min")


def _reduce_verify(self):
    si, so = shape_of(self.input.type), shape_of(self.result.type)
    axis = self.axis.value.data
    self.expect(0 <= axis < len(si), f"axis {axis} out of range for {describe(self.input.type)}")
    self.expect(self.kind.data in REDUCE_KINDS, f"unknown reduction '{self.kind.data}'")
    expect = tuple(1 if i == axis else d for i, d in enumerate(si))
    self.expect(so == expect, f"result must be {list(expect)} (keepdim), got {describe(self.result.type)}")
    self.same_dtype(self.input, self.result)


def _slice_verify(self):
    si, so = shape_of(self.input.type), shape_of(self.result.type)
    offs, sizes = ints_of(self.offsets), ints_of(self.sizes)
    self.expect(len(offs) == len(si) == len(sizes), "offsets/sizes must match the rank")
    self.expect(all(0 <= o and o + s <= d for o, s, d in zip(offs, sizes, si)),
                f"slice {list(offs)}+{list(sizes)} out of bounds of {describe(self.input.type)}")
    self.expect(so == sizes, "result shape must equal sizes")
    self.same_dtype(self.input, self.result)


def _rmsnorm_verify(self):
    s = shape_of(self.input.type)
    self.expect(dtype_of(self.input.type) in FLOAT_DTYPES, "input must be float")
    self.expect(shape_of(self.result.type) == s, "result shape must equal input shape")
    if self.gamma is not None:
        self.expect(shape_of(self.gamma.type) == (s[-1],),
                    f"gamma must be [{s[-1]}], got {describe(self.gamma.type)}")


def _rope_verify(self):
    sx, sp = shape_of(self.input.type), shape_of(self.positions.type)
    sc, ss = shape_of(self.cos_table.type), shape_of(self.sin_table.type)
    self.expect(dtype_of(self.positions.type) == "i32", "positions must be i32")
    # one position per token: positions cover exactly the token (leading) dims of the input
    self.expect(sx[:len(sp)] == sp and len(sx) > len(sp),
                f"positions {describe(self.positions.type)} must cover the token dims of {describe(self.input.type)}")
    self.expect(sc == ss and len(sc) == 2, "cos/sin tables must both be [max_pos, rope_dim/2]")
    self.expect(2 * sc[1] <= sx[-1], f"rope_dim {2 * sc[1]} exceeds the vector length {sx[-1]}")
    self.expect(shape_of(self.result.type) == sx, "result shape must equal input shape")


def _sparse_attention_verify(self):
    sq, skv, sv, ss = (shape_of(v.type) for v in (self.q, self.kv, self.valid, self.sink))
    self.expect(len(sq) == 3 and len(skv) == 3, f"q must be [T,H,d] and kv [T,N,d]; got {describe(self.q.type)}, {describe(self.kv.type)}")
    self.expect(sq[0] == skv[0] and sq[2] == skv[2], f"q {describe(self.q.type)} and kv {describe(self.kv.type)} disagree")
    self.expect(sv == skv[:2] and dtype_of(self.valid.type) == "i1", f"valid must be i1{list(skv[:2])}")
    self.expect(ss == (sq[1],) and dtype_of(self.sink.type) == "f32", f"sink must be f32[{sq[1]}]")
    self.expect(shape_of(self.result.type) == sq, "result shape must equal q's")


def _cache_attention_verify(self):
    sq = shape_of(self.q.type)
    self.expect(len(sq) == 4, f"q must be [B,S,H,d], got {describe(self.q.type)}")
    B, S, H, d = sq
    sr, ss = shape_of(self.ring.type), shape_of(self.step.type)
    self.expect(len(sr) == 3 and sr[0] == B and sr[2] == d, f"ring must be [{B},W,{d}], got {describe(self.ring.type)}")
    self.expect(ss == (B, S, d), f"step must be [{B},{S},{d}], got {describe(self.step.type)}")
    self.expect(shape_of(self.sink.type) == (H,) and dtype_of(self.sink.type) == "f32", f"sink must be f32[{H}]")
    self.expect(shape_of(self.start_pos.type) == (B,) and dtype_of(self.start_pos.type) == "i32",
                f"start_pos must be i32[{B}]")
    self.same_dtype(self.q, self.ring, self.step, *self.compressed[:1])
    ratio = self.ratio.value.data
    self.expect(len(self.compressed) <= 2, "compressed operands are (cache) or (cache, index)")
    self.expect((ratio > 0) == (len(self.compressed) > 0), "a compression ratio needs a compressed cache and vice versa")
    if self.compressed:
        sc = shape_of(self.compressed[0].type)
        self.expect(len(sc) == 3 and sc[0] == B and sc[2] == d, f"cache must be [{B},N,{d}], got {describe(self.compressed[0].type)}")
    self.expect(len(self.compressed) == 2 or not self.listed_prefix.value.data, "listed_prefix needs an index")
    if len(self.compressed) == 2:
        si = shape_of(self.compressed[1].type)
        self.expect(len(si) == 3 and si[:2] == (B, S) and dtype_of(self.compressed[1].type) == "i32",
                    f"index must be i32[{B},{S},K], got {describe(self.compressed[1].type)}")
    self.expect(shape_of(self.result.type) == sq, "result shape must equal q's")


_SHARED = define_shared_ops("attn")
ReduceOp = _make("attn.reduce", dict(input=operand_def(TensorType), kind=prop_def(StringAttr),
                                     axis=prop_def(IntegerAttr), result=result_def(TensorType),
                                     verify_=_reduce_verify))
SliceOp = _make("attn.slice", dict(input=operand_def(TensorType), offsets=prop_def(ArrayAttr),
                                   sizes=prop_def(ArrayAttr), result=result_def(TensorType), verify_=_slice_verify))
RmsNormOp = _make("attn.rmsnorm", dict(input=operand_def(TensorType), gamma=opt_operand_def(TensorType),
                                       eps=prop_def(FloatAttr), result=result_def(TensorType),
                                       verify_=_rmsnorm_verify))
RopeOp = _make("attn.rope", dict(input=operand_def(TensorType), cos_table=operand_def(TensorType),
                                 sin_table=operand_def(TensorType), positions=operand_def(TensorType),
                                 inverse=prop_def(BoolAttr), result=result_def(TensorType), verify_=_rope_verify))
SparseAttentionOp = _make("attn.sparse_attention", dict(
    q=operand_def(TensorType), kv=operand_def(TensorType), valid=operand_def(TensorType),
    sink=operand_def(TensorType), scale=prop_def(FloatAttr), result=result_def(TensorType),
    verify_=_sparse_attention_verify))
# Attention of every token over the rows a decode step can see, stated by where they live (not gathered): the
# window t-W+1..t (earlier positions in the ring at slot p mod W, this step's rows in `step`), then compressed
# entries w < min(N, floor((t+1)/ratio)) — every entry of the cache, or those listed per token by `index`
# (-1 = padding). Batch-major operands, so a schedule can read the tables in place. `listed_prefix` states the
# index's contract: a token's visible ids come first and number min(K, entries visible to it) (the indexer's
# top-k picks are so by construction); schedules may then treat the rest of the list as unwritten rows.
CacheAttentionOp = _make("attn.cache_attention", dict(
    q=operand_def(TensorType), sink=operand_def(TensorType), start_pos=operand_def(TensorType),
    ring=operand_def(TensorType), step=operand_def(TensorType), compressed=var_operand_def(TensorType),
    scale=prop_def(FloatAttr), ratio=prop_def(IntegerAttr), listed_prefix=prop_def(BoolAttr),
    result=result_def(TensorType), verify_=_cache_attention_verify))
ATTN_OPS = [*_SHARED, ReduceOp, SliceOp, RmsNormOp, RopeOp, SparseAttentionOp, CacheAttentionOp]
Attn = Dialect("attn", ATTN_OPS, [])
ATTN = {op.name.split(".", 1)[1]: op for op in ATTN_OPS}
