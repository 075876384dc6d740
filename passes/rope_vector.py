"""rope-vector: interleaved RoPE on the vector unit, no cube work; the arithmetic is rope-selector-matmul's (the
same f32 products and sums, one rounding), and transposes and reshapes move values, so the rewrite is exact.

A tail of M = prod(heads) lanes-rows per token, M a multiple of 16 ([T, H, 64] q, the de-rotation's o): per token
the [M, lanes] block is transposed to [lanes, M] and viewed as [lanes/2, 2, M] (lane 2i + p is (i, p)): the pairs'
planes have M-wide rows, aligned. Rotated as planes * [cos ; cos] + [odd ; even] * [-sin ; sin] (cos/sin per (token,
i), broadcast over p and M), rounded to the result dtype, viewed as [lanes, M] and transposed back.
Otherwise ([T, 64] kv): the lanes are viewed as [lanes/2, 2] pairs and transposed to [2, lanes/2] planes (even ;
odd), rotated the same way, transposed back (the trailing dim of 2 is narrow: small tiles, but the tensor is small).

The cos/sin rows of a token are gathered once per block and shared by every RoPE at the same positions (q and kv),
as in rope-selector-matmul, whose pattern this one extends (rotate())."""
from __future__ import annotations

import math
from dataclasses import dataclass

from attnc.ir import dsl

from . import PatternPass, register
from .rope_selector_matmul import _RopeAsSelectorMatmul

_ALIGNED_ROWS = 16  # M-wide rows fill whole 32-byte blocks for bf16 and f32


class _RopeOnVector(_RopeAsSelectorMatmul):
    def rotate(self, op, tail, lane_rows, rows, row_lead, out_dtype):
        lead, lanes = tail.shape[:-1], tail.shape[-1]
        m = math.prod(lead[1:]) if len(lead) > 1 else 1
        x = tail if tail.dtype == "f32" else dsl.cast(tail, "f32")
        if len(lead) > 1 and m % _ALIGNED_ROWS == 0:
            return self._rotate_lanes_first(op, x, rows, lead, m, out_dtype)
        return self._rotate_pairs(x, lane_rows, row_lead, out_dtype)

    def _rotate_lanes_first(self, op, x, rows, lead, m, out_dtype):
        t, lanes = lead[0], x.shape[-1]
        half = lanes // 2
        cos_rows, sin_rows, inverse = rows

        def plane_rows(kind: str):
            """[T, half, 2, M]: cos ; cos, or the signed sin (forward: -sin ; sin, inverse: sin ; -sin)."""
            def make():
                if kind == "cos":
                    r = dsl.reshape(cos_rows, (t, half, 1, 1))
                    return dsl.broadcast_to(r, (t, half, 2, m))
                s = dsl.reshape(sin_rows, (t, half, 1, 1))
                s2 = dsl.concat([s, -s] if inverse else [-s, s], axis=2)
                return dsl.broadcast_to(s2, (t, half, 2, m))
            return self.shared(op, ("planes", kind, op.cos_table, op.sin_table, op.positions, inverse, m), make)

        lanes_first = dsl.transpose(dsl.reshape(x, (t, m, lanes)), (0, 2, 1))  # [T, lanes, M]
        pairs = dsl.reshape(lanes_first, (t, half, 2, m))  # lane 2i + p at (i, p)
        even = dsl.slice_(pairs, (0, 0, 0, 0), (t, half, 1, m))
        odd = dsl.slice_(pairs, (0, 0, 1, 0), (t, half, 1, m))
        swapped = dsl.concat([odd, even], axis=2)
        # even cos - odd sin ; odd cos + even sin, bit for bit as rope-selector-matmul computes it
        halves = dsl.cast(pairs * plane_rows("cos") + swapped * plane_rows("sin"), out_dtype)
        back = dsl.transpose(dsl.reshape(halves, (t, lanes, m)), (0, 2, 1))  # [T, M, lanes]
        return dsl.reshape(back, (*lead, lanes))

    def _rotate_pairs(self, x, lane_rows, row_lead, out_dtype):
        lead, lanes = x.shape[:-1], x.shape[-1]
        half, k = lanes // 2, len(lead)
        swap_last = (*range(k), k + 1, k)
        # [cos | cos] rows viewed as planes [cos ; cos] (the signed sin likewise), broadcast over heads
        cos, sin = (dsl.broadcast_to(dsl.reshape(lane_rows(kind), (*row_lead, 2, half)), (*lead, 2, half))
                    for kind in ("cos", "sin"))
        planes = dsl.transpose(dsl.reshape(x, (*lead, half, 2)), swap_last)  # [.., 2, half]: even ; odd
        zeros = (0,) * k
        even = dsl.slice_(planes, (*zeros, 0, 0), (*lead, 1, half))
        odd = dsl.slice_(planes, (*zeros, 1, 0), (*lead, 1, half))
        swapped = dsl.concat([odd, even], axis=-2)
        halves = dsl.cast(planes * cos + swapped * sin, out_dtype)
        return dsl.reshape(dsl.transpose(halves, swap_last), (*lead, lanes))


@register
@dataclass(frozen=True)
class RopeVector(PatternPass):
    name = "rope-vector"
    summary = "interleaved RoPE -> vector transposes to planes of pairs, f32 rotate, transpose back (no cube)"
    tolerance = 0.0

    def pattern(self):
        return _RopeOnVector()
