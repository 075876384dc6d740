"""`attn`: the tensor-level dialect (value semantics, whole tensors, composite ops)."""
from __future__ import annotations

from xdsl.dialects.builtin import ArrayAttr, BoolAttr, FloatAttr, IntegerAttr, StringAttr, TensorType
from xdsl.ir import Dialect
from xdsl.irdl import AttrSizedOperandSegments, ParsePropInAttrDict, opt_prop_def

from .common import (
    LOC_ATTR,
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


def _to_tokens_verify(self):
    si, so = shape_of(self.input.type), shape_of(self.result.type)
    self.expect(len(si) >= 2, f"input must be [batch, seq, ...], got {describe(self.input.type)}")
    self.expect(so == (si[0] * si[1], *si[2:]),
                f"result must be the token rows {[si[0] * si[1], *si[2:]]}, got {describe(self.result.type)}")
    self.same_dtype(self.input, self.result)


def _from_tokens_verify(self):
    si, so = shape_of(self.input.type), shape_of(self.result.type)
    self.expect(len(so) >= 2, f"result must be [batch, seq, ...], got {describe(self.result.type)}")
    self.expect(si == (so[0] * so[1], *so[2:]),
                f"input must be the token rows {[so[0] * so[1], *so[2:]]}, got {describe(self.input.type)}")
    self.same_dtype(self.input, self.result)


def cache_window(op) -> int:
    """W of a cache_attention: the ring's slots per batch row (the paged ring states it, `ring_slots`)."""
    return op.ring_slots.value.data if op.ring_table is not None else shape_of(op.ring.type)[1]


def cache_entries(op) -> int:
    """N of a cache_attention with a compressed cache: its entries per batch row (paged: `cache_entries`)."""
    return op.cache_entries.value.data if op.cache_table is not None else shape_of(op.compressed[0].type)[1]


def _paged_verify(self, name: str, pool, table, length_attr, length_name: str):
    """A paged table: pool [blocks, block_size, d] read through table [B, ceil(length / block_size)] i32."""
    B, d = shape_of(self.q.type)[0], shape_of(self.q.type)[3]
    if table is None:
        self.expect(length_attr is None, f"{length_name} states a paged {name}'s length: it needs a block table")
        return
    self.expect(length_attr is not None and length_attr.value.data > 0,
                f"a paged {name} needs its positive length per batch row ({length_name})")
    sp, st = shape_of(pool.type), shape_of(table.type)
    self.expect(len(sp) == 3 and sp[2] == d, f"paged {name} must be a pool [blocks,block_size,{d}], got {describe(pool.type)}")
    blocks = -(-length_attr.value.data // sp[1])
    self.expect(st == (B, blocks) and dtype_of(table.type) == "i32",
                f"{name} block table must be i32[{B},{blocks}], got {describe(table.type)}")


def _cache_attention_verify(self):
    # no fact about the index's order exists (ids in any order): a claim such as an older attnc's listed_prefix
    # would be read by nothing, so it is refused rather than carried along
    extra = sorted(a for a in self.attributes if a != LOC_ATTR)
    self.expect(not extra, f"unknown attribute '{extra[0] if extra else ''}': the op states scale, ratio and the "
                           "paged lengths; listed ids are taken in any order (nothing about their order is stated)")
    sq = shape_of(self.q.type)
    self.expect(len(sq) == 4, f"q must be [B,S,H,d], got {describe(self.q.type)}")
    B, S, H, d = sq
    sr, ss = shape_of(self.ring.type), shape_of(self.step.type)
    _paged_verify(self, "ring", self.ring, self.ring_table, self.ring_slots, "ring_slots")
    self.expect(self.cache_table is None or len(self.compressed) > 0, "a cache block table needs a compressed cache")
    if self.compressed:
        _paged_verify(self, "cache", self.compressed[0], self.cache_table, self.cache_entries, "cache_entries")
    self.expect(len(sr) == 3 and (sr[0] == B or self.ring_table is not None) and sr[2] == d,
                f"ring must be [{B},W,{d}], got {describe(self.ring.type)}")
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
        self.expect(len(sc) == 3 and (sc[0] == B or self.cache_table is not None) and sc[2] == d, f"cache must be [{B},N,{d}], got {describe(self.compressed[0].type)}")
    if len(self.compressed) == 2:
        si = shape_of(self.compressed[1].type)
        self.expect(len(si) == 3 and si[:2] == (B, S) and dtype_of(self.compressed[1].type) == "i32",
                    f"index must be i32[{B},{S},K], got {describe(self.compressed[1].type)}")
    self.expect(shape_of(self.result.type) == sq, "result shape must equal q's")


def _scaled_matmul_verify(self):
    sa, sw, ss = shape_of(self.lhs.type), shape_of(self.rhs.type), shape_of(self.col_scale.type)
    self.expect(dtype_of(self.lhs.type) in FLOAT_DTYPES, f"lhs must be float, got {describe(self.lhs.type)}")
    self.expect(dtype_of(self.rhs.type) == "i8" and len(sw) == 2,
                f"rhs must be an i8 weight [K, N], got {describe(self.rhs.type)}")
    self.expect(len(sa) >= 2 and sa[-1] == sw[0], f"contraction mismatch: {describe(self.lhs.type)} x {describe(self.rhs.type)}")
    self.expect(ss == (sw[1],) and dtype_of(self.col_scale.type) == "f32",
                f"col_scale must be f32[{sw[1]}] (one scale per output channel), got {describe(self.col_scale.type)}")
    self.expect(self.proj.data != "", "proj must name the projection (its weight parameter)")
    self.expect(shape_of(self.result.type) == (*sa[:-1], sw[1]), f"result must be {[*sa[:-1], sw[1]]}")


def _compress_pool_verify(self):
    sv, sz, sk, ss = (shape_of(v.type) for v in (self.values, self.scores, self.kv_state, self.score_state))
    ratio, d = self.ratio.value.data, self.dim.value.data
    self.expect(len(sv) == 3 and sz == sv, f"values and scores must be one [B,S,width], got {describe(self.values.type)}"
                f" and {describe(self.scores.type)}")
    B, S, width = sv
    self.expect(width in (d, 2 * d), f"width must be dim {d} (no overlap) or 2*dim (overlap), got {width}")
    ring = 2 * ratio if width == 2 * d else ratio
    self.expect(sk == ss == (B, ring, width),
                f"states must be [{B},{ring},{width}] (a ring of {ring} positions), got {describe(self.kv_state.type)}")
    self.expect(all(dtype_of(v.type) == "f32" for v in (self.values, self.scores, self.kv_state, self.score_state)),
                "values, scores and states must be f32")
    self.expect(shape_of(self.start_pos.type) == (B,) and dtype_of(self.start_pos.type) == "i32",
                f"start_pos must be i32[{B}], got {describe(self.start_pos.type)}")
    epi = list(self.entry_of)
    out = "f32" if not epi else "bf16"
    self.expect(shape_of(self.result.type) == (B, S, d) and dtype_of(self.result.type) == out,
                f"result must be {out}[{B},{S},{d}], got {describe(self.result.type)}")
    if not epi:
        self.expect(self.eps is None and self.rotate_scale is None, "eps and rotate_scale need entry_of operands")
        return
    self.expect(len(epi) in (3, 4), "entry_of must be (norm_w, rope_cos, rope_sin) or (..., rotate)")
    norm_w, cos, sin = (shape_of(v.type) for v in epi[:3])
    self.expect(norm_w == (d,) and dtype_of(epi[0].type) == "f32", f"norm_w must be f32[{d}]")
    self.expect(cos == sin and len(cos) == 2 and 2 * cos[1] <= d, "rope tables must both be [max_pos, rope_dim/2]")
    self.expect(self.eps is not None, "an entry needs the RMSNorm's eps")
    if len(epi) == 4:
        self.expect(shape_of(epi[3].type) == (d, d), f"rotate must be [{d},{d}]")
        self.expect(self.rotate_scale is not None, "a rotated entry needs rotate_scale")


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
# Token rows as a fact of the IR: to_tokens flattens [batch, seq, ...] per-token data into the T = batch*seq token
# rows [T, ...], from_tokens hands token rows back as [batch, seq, ...]. Both are reshapes in value; they tell
# parallelize-tokens which values are token rows (lower-to-tiles turns them into tile.reshape).
ToTokensOp = _make("attn.to_tokens", dict(input=operand_def(TensorType), result=result_def(TensorType),
                                          verify_=_to_tokens_verify))
FromTokensOp = _make("attn.from_tokens", dict(input=operand_def(TensorType), result=result_def(TensorType),
                                              verify_=_from_tokens_verify))
# Attention of every token over the rows a decode step can see, stated by where they live (not gathered): the
# window t-W+1..t (earlier positions in the ring at slot p mod W, this step's rows in `step`), then compressed
# entries w < min(N, floor((t+1)/ratio)) — every entry of the cache, or those listed per token by `index`
# (ids in any order, -1 = none, anywhere: a listed id is attended iff its entry is visible, wherever it stands).
# Batch-major operands, so a schedule can read the tables in place.
# Paged tables (optional): the ring and/or the compressed cache given as a pool [blocks, block_size, d] with a block
# table [B, ceil(length / block_size)] i32 (`ring_table` / `cache_table`) and the length per batch row
# (`ring_slots` = W / `cache_entries` = N): slot j of row b is pool row table[b, j // block_size] * block_size +
# j % block_size — the dense op on that logical table, one more indirection. The table must map every (row, block)
# into the pool (checked on the host, kernels_src/inputs.py); pool rows no table maps are never read.
CacheAttentionOp = _make("attn.cache_attention", dict(
    q=operand_def(TensorType), sink=operand_def(TensorType), start_pos=operand_def(TensorType),
    ring=operand_def(TensorType), step=operand_def(TensorType), compressed=var_operand_def(TensorType),
    ring_table=opt_operand_def(TensorType), cache_table=opt_operand_def(TensorType),
    scale=prop_def(FloatAttr), ratio=prop_def(IntegerAttr),
    ring_slots=opt_prop_def(IntegerAttr), cache_entries=opt_prop_def(IntegerAttr),
    result=result_def(TensorType), verify_=_cache_attention_verify,
    # the custom form names the optional groups, so a reader sees which operand is which
    assembly_format="$q `,` $sink `,` $start_pos `,` $ring `,` $step "
                    "(`cache` `(` $compressed^ `:` type($compressed) `)`)? "
                    "(`ring_table` `(` $ring_table^ `:` type($ring_table) `)`)? "
                    "(`cache_table` `(` $cache_table^ `:` type($cache_table) `)`)? attr-dict `:` "
                    "type($q) `,` type($sink) `,` type($start_pos) `,` type($ring) `,` type($step) `->` type($result)",
    irdl_options=(AttrSizedOperandSegments(as_property=True), ParsePropInAttrDict())))
# A projection by a per-channel quantised weight: (lhs @ rhs) summed exactly, rounded once to f32, times
# col_scale[n] in f32, cast to the result dtype (the weight dequantised exactly: i8 * f32 scale). `proj` names the
# projection (the weight parameter) so quantize-w8a8{targets=...} can choose it; that pass decomposes every one.
ScaledMatmulOp = _make("attn.scaled_matmul", dict(lhs=operand_def(TensorType), rhs=operand_def(TensorType),
                                                  col_scale=operand_def(TensorType), proj=prop_def(StringAttr),
                                                  result=result_def(TensorType), verify_=_scaled_matmul_verify))
# The compressor's pooled entries of a decode step (kernels_src/compressor.py): per channel, a softmax over the
# slots of a block of `ratio` positions of the values weighted by their scores. Token t = start_pos[b] + s that
# completes block w ((t+1) mod ratio == 0) pools it: without overlap (width = dim) the positions w*ratio .. t,
# channels [:dim]; with overlap (width = 2*dim) also block w-1's positions in channels [:dim] and block w's in
# channels [dim:] (positions < 0 are absent). Rows come from where they live: position p >= start_pos is the
# step's row p - start_pos of `values`/`scores`, an earlier one the state ring's slot p mod R (R = 2*ratio with
# overlap, else ratio). Every other token's result row is 0. Batch-major, so a schedule reads the rings in place.
# With `entry_of` (norm_w, rope_cos, rope_sin[, rotate]) the result is the cache entry of the pooled row (bf16):
# RMSNorm (eps, weight norm_w, f32), RoPE at the block's first position w*ratio rounded to bf16, and with `rotate`
# [dim, dim] the row times it (f32 sums) times rotate_scale rounded to bf16; a row completing nothing stays 0 (the
# entry of a 0 row is 0), so a schedule may run these on the pooled rows alone.
CompressPoolOp = _make("attn.compress_pool", dict(
    values=operand_def(TensorType), scores=operand_def(TensorType), kv_state=operand_def(TensorType),
    score_state=operand_def(TensorType), start_pos=operand_def(TensorType), entry_of=var_operand_def(TensorType),
    ratio=prop_def(IntegerAttr), dim=prop_def(IntegerAttr), eps=opt_prop_def(FloatAttr),
    rotate_scale=opt_prop_def(FloatAttr), result=result_def(TensorType),
    verify_=_compress_pool_verify))
ATTN_OPS = [*_SHARED, ScaledMatmulOp, ReduceOp, SliceOp, RmsNormOp, RopeOp, SparseAttentionOp, ToTokensOp, FromTokensOp,
            CacheAttentionOp, CompressPoolOp]
Attn = Dialect("attn", ATTN_OPS, [])
ATTN = {op.name.split(".", 1)[1]: op for op in ATTN_OPS}
