"""rope-vector: interleaved RoPE on the vector unit. The rotated lanes [.., 2i | 2i+1] are viewed as [.., half, 2]
pairs and transposed to [.., 2, half] planes (the even lanes, then the odd ones), rotated in f32 as
planes * [cos ; cos] + [odd ; even] * [-sin ; sin], rounded to the result dtype, transposed back to pairs and
viewed as lanes: two transposes, one plane swap and three vector ops per RoPE, no cube work.

Transposes move values and the arithmetic is rope-selector-matmul's (the same products and sums in f32, one
rounding), so the rewrite is exact. The cos/sin rows of a token are gathered once per block and shared by every
RoPE at the same positions (q and kv), as rope-selector-matmul shares them."""
from __future__ import annotations

from dataclasses import dataclass

from attnc.ir import dsl

from . import PatternPass, register
from .rope_selector_matmul import _RopeAsSelectorMatmul


class _RopeOnVector(_RopeAsSelectorMatmul):
    def rotate(self, op, tail, cos_rows, sin_rows, row_lead, out_dtype):
        lead, lanes = tail.shape[:-1], tail.shape[-1]
        half, k = lanes // 2, len(lead)
        swap_last = (*range(k), k + 1, k)
        # [cos | cos] rows viewed as planes [cos ; cos] (the signed sin likewise), broadcast over heads
        cos, sin = (dsl.broadcast_to(dsl.reshape(r, (*row_lead, 2, half)), (*lead, 2, half)) for r in (cos_rows, sin_rows))
        x = tail if tail.dtype == "f32" else dsl.cast(tail, "f32")
        planes = dsl.transpose(dsl.reshape(x, (*lead, half, 2)), swap_last)  # [.., 2, half]: even ; odd
        zeros = (0,) * k
        even = dsl.slice_(planes, (*zeros, 0, 0), (*lead, 1, half))
        odd = dsl.slice_(planes, (*zeros, 1, 0), (*lead, 1, half))
        swapped = dsl.concat([odd, even], axis=-2)
        # even cos - odd sin ; odd cos + even sin, bit for bit as rope-selector-matmul computes it
        halves = dsl.cast(planes * cos + swapped * sin, out_dtype)
        return dsl.reshape(dsl.transpose(halves, swap_last), (*lead, lanes))


@register
@dataclass(frozen=True)
class RopeVector(PatternPass):
    name = "rope-vector"
    summary = "interleaved RoPE -> vector transposes to [even ; odd] planes, f32 rotate, transpose back (no cube)"
    tolerance = 0.0

    def pattern(self):
        return _RopeOnVector()
