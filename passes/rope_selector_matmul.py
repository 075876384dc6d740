"""rope-selector-matmul: interleaved RoPE as cube work. The rotated lanes are de-interleaved with 0/1 permutation
matmuls (P = [E | O], E[2i,i] = 1 picks even lanes, O[2i+1,i] = 1 odd lanes; Q = [O | E] the halves swapped),
rotated in f32 as [even | odd] * [cos | cos] + [odd | even] * [-sin | sin], rounded to the result dtype (as
pypto-lib rounds its rope halves), and re-interleaved with Pᵀ: three matmuls and three vector ops per RoPE.

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
from ._build import T, before, state_row_group


def selector(lanes: int, parity: int, dtype: str) -> dsl.Tensor:
    """[lanes, lanes/2] matrix with 1 at (2i + parity, i)."""
    half = lanes // 2
    rows = dsl.iota((lanes, half), 0)
    cols = dsl.iota((lanes, half), 1)
    hit = rows.eq(cols * 2 + parity if parity else cols * 2)
    return dsl.cast(dsl.select(hit, dsl.full((lanes, half), 1.0, "f32"), 0.0), dtype)


def with_unrotated_head(x: dsl.Tensor, rot: dsl.Tensor, head_lanes: int, out_dtype: str) -> dsl.Tensor:
    """x's leading `head_lanes` lanes (not rotated), cast to out_dtype, in front of the rotated tail `rot`."""
    if head_lanes <= 0:
        return rot
    lead = x.shape[:-1]
    head = dsl.cast(dsl.slice_(x, (0,) * (len(lead) + 1), (*lead, head_lanes)), out_dtype)
    return dsl.concat([head, rot], axis=-1)


class _RopeAsSelectorMatmul(RewritePattern):
    def __init__(self):
        self.made: dict = {}  # (key) -> value made before an earlier RoPE of the same block, shared by later ones

    def shared(self, op, key, make):
        """`make()` once per block and key (the rewrite walks a block's ops in order, so the first use dominates)."""
        key = (op.parent_block(), *key)
        if key not in self.made:
            self.made[key] = make()
        return self.made[key]

    def rotate(self, op, tail, lane_rows, rows, row_lead, out_dtype):
        """The rotated lanes [*lead, lanes] of `tail` in `out_dtype`. lane_rows("cos") / lane_rows("sin"): the
        [cos | cos] and signed [sin | sin] rows per token ([T, lanes], made once per block); rows: the per-token
        cos and sin rows [T, lanes/2] and whether the RoPE is inverse; row_lead: the rows' shape up to the lanes
        (1 for broadcast dims)."""
        lead, lanes = tail.shape[:-1], tail.shape[-1]
        cos, sin = (dsl.broadcast_to(dsl.reshape(lane_rows(k), (*row_lead, lanes)), (*lead, lanes))
                    for k in ("cos", "sin"))

        def perm(first: int, dtype: str):
            """[lanes, lanes] 0/1 matrix: x @ perm(0) = [even | odd] lanes, x @ perm(1) = [odd | even]."""
            return self.shared(op, ("perm", lanes, first, dtype), lambda: dsl.concat(
                [selector(lanes, first, dtype), selector(lanes, 1 - first, dtype)], axis=1))

        # [even | odd] * [cos | cos] + [odd | even] * [-sin | sin] is (even cos - odd sin | odd cos + even sin)
        # bit for bit (a + (-b) == a - b and a + b == b + a in IEEE arithmetic)
        pair = dsl.matmul(tail, perm(0, tail.dtype), out="f32")
        swapped = dsl.matmul(tail, perm(1, tail.dtype), out="f32")
        halves = dsl.cast(pair * cos + swapped * sin, out_dtype)
        return dsl.cast(dsl.matmul(halves, perm(0, out_dtype), out="f32", transpose_b=True), out_dtype)

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
            # [cos | cos] and the signed [sin | sin] of the de-interleaved halves (inverse: +sin, -sin;
            # forward: -sin, +sin), one row per token, shared by every RoPE at these positions
            inverse = bool(op.inverse.value.data)

            def lane_rows(kind: str):
                def make():
                    if kind == "cos":
                        return dsl.concat([cos_rows, cos_rows], axis=-1)
                    return dsl.concat([sin_rows, -sin_rows] if inverse else [-sin_rows, sin_rows], axis=-1)
                return self.shared(op, (kind, op.cos_table, op.sin_table, op.positions, inverse), make)

            zeros = (0,) * len(lead)
            tail = dsl.slice_(x, (*zeros, n - lanes), (*lead, lanes))
            rot = self.rotate(op, tail, lane_rows, (cos_rows, sin_rows, inverse), row_shape[:-1], out_dtype)
            rot = with_unrotated_head(x, rot, n - lanes, out_dtype)
            if len(lead) == 1:  # token rows [T, d]: one row count along the chain, an RMSNorm's before it included
                state_row_group(rot, [x, op.cos_table, op.sin_table, op.positions], lead)
        rewriter.replace(op, [], [rot.value])


@register
@dataclass(frozen=True)
class RopeSelectorMatmul(PatternPass):
    name = "rope-selector-matmul"
    summary = "interleaved RoPE -> 0/1 selector matmuls (de-interleave), f32 rotate, bf16 halves, re-interleave"
    tolerance = 0.0

    def pattern(self):
        return _RopeAsSelectorMatmul()
