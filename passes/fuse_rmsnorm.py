"""fuse-rmsnorm: RMSNorm becomes one row pass — sum of squares, recip(sqrt(mean + eps)), scale, γ — whose
scaled rows feed the consumer directly (no normalised tensor of its own, no intermediate rounding).

recip(sqrt(.)) rather than rsqrt: on Ascend they differ and pypto-lib#361 aligned on recip(sqrt)."""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.pattern_rewriter import PatternRewriter, RewritePattern, op_type_rewrite_pattern

from attnc.ir import dsl
from attnc.ir.tensor_dialect import RmsNormOp
from attnc.ir.types import dtype_of

from . import PatternPass, register
from ._build import T, before, cap_tile_rows, state_row_group


class _DecomposeRmsNorm(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: RmsNormOp, rewriter: PatternRewriter):
        with before(op):
            x = dsl.cast(T(op.input), "f32")
            n = x.shape[-1]
            sum_sq = dsl.reduce(x * x, "sum", -1)
            inv_rms = dsl.recip(dsl.sqrt(sum_sq / float(n) + op.eps.value.data))
            y = x * inv_rms
            if op.gamma is not None:
                y = y * dsl.cast(T(op.gamma), "f32")
            y = dsl.cast(y, dtype_of(op.result.type))
            if "tile_rows" in op.attributes:  # quantize-w8a8{tile-rows}: the norm tiled as the quantisation after it
                cap_tile_rows(y, [T(op.input)] + ([T(op.gamma)] if op.gamma is not None else []),
                               op.attributes["tile_rows"].value.data, row_stats=False, stats_cols=n)
            elif len(x.shape) == 2:  # token rows [T, d]: one row count along the chain (pypto emitter)
                state_row_group(y, [op.input] + ([op.gamma] if op.gamma is not None else []), x.shape[:1])
        rewriter.replace(op, [], [y.value])


@register
@dataclass(frozen=True)
class FuseRmsNorm(PatternPass):
    name = "fuse-rmsnorm"
    summary = "RMSNorm -> one row pass: sum of squares, recip(sqrt(mean+eps)), scale, gamma, fused into its consumer"
    tolerance = 0.0

    def pattern(self):
        return _DecomposeRmsNorm()
