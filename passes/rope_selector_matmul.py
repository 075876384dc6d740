"""rope-selector-matmul: interleaved RoPE as cube work. The rotated lanes are de-interleaved with 0/1 selector
matmuls (E[2i,i] = 1 picks even lanes, O[2i+1,i] = 1 odd lanes), rotated in f32, each half rounded to the result
dtype (as pypto-lib rounds its rope halves), and re-interleaved with the transposed selectors.

0/1 matmuls accumulating in f32 move values exactly and interleaving is a permutation, so rounding the halves
equals rounding the interleaved result: the rewrite is exact.

The cos/sin rows of a token (gathered from the tables at its position) and the selectors are made once per
function and shared by every RoPE of that block with the same tables and positions (q and kv of a step rotate at
the same positions): one gather per table, not one per rotated tensor."""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.pattern_rewriter import PatternRewriter, RewritePattern, op_type_rewrite_pattern

from attnc.ir import dsl
from attnc.ir.tensor_dialect import RopeOp
from attnc.ir.types import dtype_of

from . import PatternPass, register
from ._build import T, before


def selector(lanes: int, parity: int, dtype: str) -> dsl.Tensor:
    """[lanes, lanes/2] matrix with 1 at (2i + parity, i)."""
    half = lanes // 2
    rows = dsl.iota((lanes, half), 0)
    cols = dsl.iota((lanes, half), 1)
    hit = rows.eq(cols * 2 + parity if parity else cols * 2)
    return dsl.cast(dsl.select(hit, dsl.full((lanes, half), 1.0, "f32"), 0.0), dtype)


class _RopeAsSelectorMatmul(RewritePattern):
    def __init__(self):
        self.made: dict = {}  # (key) -> value made before an earlier RoPE of the same block, shared by later ones

    def shared(self, op, key, make):
        """`make()` once per block and key (the rewrite walks a block's ops in order, so the first use dominates)."""
        key = (op.parent_block(), *key)
        if key not in self.made:
            self.made[key] = make()
        return self.made[key]

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: RopeOp, rewriter: PatternRewriter):
        out_dtype = dtype_of(op.result.type)
        with before(op):
            x, pos = T(op.input), T(op.positions)
            half = T(op.cos_table).shape[1]
            lanes, n = 2 * half, x.shape[-1]
            lead = x.shape[:-1]
            # one cos/sin row per token, broadcast over the dims between tokens and lanes (heads)
            row_shape = (*pos.shape, *([1] * (len(lead) - len(pos.shape))), half)
            cos_rows = self.shared(op, ("rows", op.cos_table, op.positions),
                                   lambda: dsl.gather_rows(T(op.cos_table), pos))
            sin_rows = self.shared(op, ("rows", op.sin_table, op.positions),
                                   lambda: dsl.gather_rows(T(op.sin_table), pos))
            cos = dsl.broadcast_to(dsl.reshape(cos_rows, row_shape), (*lead, half))
            sin = dsl.broadcast_to(dsl.reshape(sin_rows, row_shape), (*lead, half))
            zeros = (0,) * len(lead)
            tail = dsl.slice_(x, (*zeros, n - lanes), (*lead, lanes))

            def sel(parity: int, dtype: str):
                return self.shared(op, ("selector", lanes, parity, dtype), lambda: selector(lanes, parity, dtype))

            even = dsl.matmul(tail, sel(0, tail.dtype), out="f32")
            odd = dsl.matmul(tail, sel(1, tail.dtype), out="f32")
            if op.inverse.value.data:
                even_rot, odd_rot = even * cos + odd * sin, odd * cos - even * sin
            else:
                even_rot, odd_rot = even * cos - odd * sin, even * sin + odd * cos
            even_r, odd_r = dsl.cast(even_rot, out_dtype), dsl.cast(odd_rot, out_dtype)
            rot = (dsl.matmul(even_r, sel(0, out_dtype), out="f32", transpose_b=True)
                   + dsl.matmul(odd_r, sel(1, out_dtype), out="f32", transpose_b=True))
            rot = dsl.cast(rot, out_dtype)
            if n > lanes:
                head = dsl.cast(dsl.slice_(x, (*zeros, 0), (*lead, n - lanes)), out_dtype)
                rot = dsl.concat([head, rot], axis=-1)
        rewriter.replace(op, [], [rot.value])


@register
@dataclass(frozen=True)
class RopeSelectorMatmul(PatternPass):
    name = "rope-selector-matmul"
    summary = "interleaved RoPE -> 0/1 selector matmuls (de-interleave), f32 rotate, bf16 halves, re-interleave"
    tolerance = 0.0

    def pattern(self):
        return _RopeAsSelectorMatmul()
