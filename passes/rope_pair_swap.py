"""rope-pair-swap: interleaved RoPE with one matmul, on the lanes as they are: out = x * C + (x @ W) * S, with W the
[lanes, lanes] 0/1 matrix that swaps each lane pair (2i <-> 2i+1), C = [c0, c0, c1, c1, ...] and S = [-s0, s0, -s1,
s1, ...] (inverse: [s0, -s0, ...]) the token's cos/sin rows repeated per pair by a [half, lanes] 0/1 (signed)
matmul, rounded to the result dtype once. rope-selector-matmul de-interleaves with two matmuls and re-interleaves
with a third; here the result is interleaved already: one matmul per rotated tensor on its critical chain.

Exact, and bit-identical to rope-selector-matmul: a 0/1 matmul accumulating in f32 moves values exactly, and lane
2i computes x[2i] * c + x[2i+1] * (-s), lane 2i+1 x[2i+1] * c + x[2i] * s, the same products and sums in the same
order as that pass's halves. The cos/sin rows of a token and the matrices are made once per block (shared by q and
kv rotated at the same positions, as there)."""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.pattern_rewriter import PatternRewriter, op_type_rewrite_pattern

from attnc.ir import dsl
from attnc.ir.tensor_dialect import RopeOp
from attnc.ir.types import dtype_of

from . import PatternPass, register
from ._build import T, before
from .rope_selector_matmul import _RopeAsSelectorMatmul, with_unrotated_head


def _pair_matrix(rows: int, cols: int, row_of, sign_even: float, sign_odd: float, first: int = 0) -> dsl.Tensor:
    """[rows, cols] f32: sign_even at (row_of(2i), 2i), sign_odd at (row_of(2i + 1), 2i + 1) for every lane pair i
    from column `first` on, 0 elsewhere; row_of maps a column (index tensor) to the row that feeds it."""
    r, c = dsl.iota((rows, cols), 0), dsl.iota((rows, cols), 1)
    feed = row_of(c)
    if first:  # no row feeds a column before `first`
        feed = dsl.select(c >= dsl.full((rows, cols), first, "i32"), feed, dsl.full((rows, cols), -1, "i32"))
    hit = r.eq(feed)
    odd = (c % 2).eq(dsl.full((rows, cols), 1, "i32"))
    sign = dsl.select(odd, dsl.full((rows, cols), sign_odd, "f32"), sign_even)
    return dsl.select(hit, sign, 0.0)


class _RopeAsPairSwap(_RopeAsSelectorMatmul):
    def __init__(self, whole: int, min_rank: int = 1):
        self.min_rank = min_rank
        super().__init__()
        self.whole = whole

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: RopeOp, rewriter: PatternRewriter):
        if len(op.input.type.get_shape()) < self.min_rank:  # left to the next RoPE pass of the pipeline
            return
        out_dtype = dtype_of(op.result.type)
        with before(op):
            x, pos = T(op.input), T(op.positions)
            half = T(op.cos_table).shape[1]
            lanes, n = 2 * half, x.shape[-1]
            lead = x.shape[:-1]
            row_shape = (*pos.shape, *([1] * (len(lead) - len(pos.shape))), lanes)
            inverse = bool(op.inverse.value.data)

            # a vector of at most `whole` lanes rotates whole (its leading lanes: cos 1, sin 0, no swap): no view
            # of the rotated lanes and no concat of the two parts, which pypto copies through DDR
            whole = lanes < n <= self.whole
            first = n - lanes if whole else 0
            width = n if whole else lanes

            def lane_rows(kind: str):
                """The token's [cos | sin] row repeated per lane pair (sin signed), broadcast over the heads."""
                def make():
                    table = op.cos_table if kind == "cos" else op.sin_table
                    rows = self.shared(op, ("rows", table, op.positions),
                                       lambda: dsl.gather_rows(T(table), pos))
                    even, odd = (1.0, 1.0) if kind == "cos" else ((1.0, -1.0) if inverse else (-1.0, 1.0))
                    repeat = self.shared(op, ("repeat", half, even, odd),
                                         lambda: _pair_matrix(half, lanes, lambda c: c // 2, even, odd))
                    pairs = dsl.matmul(rows, repeat, out="f32")
                    if first:
                        lead_lanes = dsl.full((*pos.shape, first), 1.0 if kind == "cos" else 0.0, "f32")
                        pairs = dsl.concat([lead_lanes, pairs], axis=-1)
                    return pairs
                rows = self.shared(op, ("pair", kind, op.cos_table, op.sin_table, op.positions, inverse, width), make)
                return dsl.broadcast_to(dsl.reshape(rows, (*row_shape[:-1], width)), (*lead, width))

            cos, sin = lane_rows("cos"), lane_rows("sin")
            zeros = (0,) * len(lead)
            tail = x if whole or n == lanes else dsl.slice_(x, (*zeros, n - lanes), (*lead, lanes))
            # swap[k, j] = 1 where k is j's pair partner (j + 1 for even j, j - 1 for odd j), for the rotated j
            swap = self.shared(op, ("swap", width, first, tail.dtype), lambda: dsl.cast(
                _pair_matrix(width, width, lambda c: c + 1 - (c % 2) * 2, 1.0, 1.0, first), tail.dtype))
            swapped = dsl.matmul(tail, swap, out="f32")
            wide = tail if tail.dtype == "f32" else dsl.cast(tail, "f32")
            rot = dsl.cast(wide * cos + swapped * sin, out_dtype)
            if n > width:
                rot = with_unrotated_head(x, rot, n - lanes, out_dtype)
        rewriter.replace(op, [], [rot.value])


@register
@dataclass(frozen=True)
class RopePairSwap(PatternPass):
    name = "rope-pair-swap"
    summary = "interleaved RoPE -> x * [c,c,..] + (x @ pair swap) * [-s,s,..]: one 0/1 matmul, no de/re-interleave"
    tolerance = 0.0
    # a vector of at most this many lanes (the indexer's 128-wide q heads) rotates whole; 0: only the rope lanes
    whole: int = 128
    # rotate only tensors of at least this rank (3: per-head vectors [T, H, d]); the others are left to the next
    # RoPE pass (rope-selector-matmul), faster for the compressors' [T, d] entries in pypto 0.2.0 (m = 4: 177.0 us
    # against 285.4 with the pair swap; index_compressor likewise)
    min_rank: int = 1

    def pattern(self):
        return _RopeAsPairSwap(self.whole, self.min_rank)
