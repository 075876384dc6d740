"""quantize-w8a8{targets=...}: every attn.scaled_matmul (a projection by an i8 weight with per-channel f32
scales) is decomposed. A targeted one (its `proj` named in `targets`, or targets=all; targets=none: none)
becomes W8A8, as the
quantised Ascend prologs (hicann/pypto mla_prolog_quant_v4, lightning_indexer_prolog_quant_v4) run wq_b:
the activation quantised per row (absmax / 127 in f32, round half to even, saturated), int8 x int8 -> int32
(exact), dequantised by row scale x column scale in f32. Any other keeps its activation: the weight is cast
to the activation's dtype (exact) for a float matmul, then scaled per column.

Tolerance: the activation's rounding to 8 bits (relative error <= 1/254 of the row's absmax per element)
changes the result: declared 2e-2 normalised (measured on qkv_proj_rope / indexer tiny: tests/test_w8a8.py)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from xdsl.dialects.builtin import IntegerAttr, i64
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern, op_type_rewrite_pattern

from attnc.ir import dsl
from attnc.ir.tensor_dialect import RmsNormOp, ScaledMatmulOp
from attnc.ir.types import dtype_of

from . import PatternPass, PassError, register
from ._build import T, before, cap_tile_rows


class _Decompose(RewritePattern):
    def __init__(self, targets: tuple[str, ...], tile_rows: int = 0, min_rows: int = 0):
        self.targets, self.tile_rows, self.min_rows = targets, tile_rows, min_rows

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ScaledMatmulOp, rewriter: PatternRewriter):
        out = dtype_of(op.result.type)
        with before(op):
            x, w, scale = T(op.lhs), T(op.rhs), T(op.col_scale)
            if "all" in self.targets or op.proj.data in self.targets:
                q, row_scale = dsl.quantize_rows(x)
                # one row group per vector tile from the norm that makes the activation to its int8 codes: a task
                # per group (an activation read from elsewhere keeps its tiles: the indexer's qr, 268.2 vs 261.9 us)
                norm = op.lhs.owner if isinstance(op.lhs.owner, RmsNormOp) else None
                if self.tile_rows and norm is not None and math.prod(x.shape[:-1]) >= self.min_rows:
                    for v in (q, row_scale):
                        cap_tile_rows(v, [x], self.tile_rows, row_stats=False, stats_cols=x.shape[-1])
                    norm.attributes["tile_rows"] = IntegerAttr(self.tile_rows, i64)
                y = dsl.dequantize(dsl.matmul(q, w, out="i32"), row_scale, scale, out)
            else:
                y = dsl.matmul(x, dsl.cast(w, x.dtype), out="f32")
                y = dsl.cast(y * dsl.reshape(scale, (1,) * (len(y.shape) - 1) + scale.shape), out)
        rewriter.replace(op, [], [y.value])


@register
@dataclass(frozen=True)
class QuantizeW8A8(PatternPass):
    name = "quantize-w8a8"
    summary = "i8-weight projections -> W8A8 (per-row int8 activation, int32 matmul, dequant) for the targets"
    tolerance = 2e-2
    targets: tuple[str, ...] = ("all",)
    tile_rows: int = 0  # the row cap of the quantisation chain's vector tiles (0: the emitter's budget tiles)
    min_rows: int = 0  # tile_rows only for an activation of at least this many rows
    zero_is_off = ("tile_rows", "min_rows")

    def pattern(self):
        return _Decompose(tuple(self.targets), self.tile_rows, self.min_rows)

    def apply(self, ctx, op):
        names = {o.proj.data for o in op.walk() if isinstance(o, ScaledMatmulOp)}
        unknown = sorted(t for t in self.targets if t not in ("all", "none") and t not in names)
        if names and unknown:
            raise PassError(f"quantize-w8a8: target '{unknown[0]}' names no i8-weight projection "
                            f"(the module has: {', '.join(sorted(names))})")
        super().apply(ctx, op)
