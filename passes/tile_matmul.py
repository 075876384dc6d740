"""tile-matmul{k=512}: a matmul whose contraction K exceeds k becomes a K-chunked accumulation — the first
chunk with tile.matmul, the rest with tile.matmul_acc in an scf.for — accumulating in f32 and rounding once
at the end. K that is not a multiple of k is left whole (a ragged K tile would need a padded cube tile).

Chunking changes the f32 summation order, so a bf16 result may move by one rounding step: non-zero tolerance."""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects.builtin import BoolAttr
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern

from attnc.ir.common import str_attr
from attnc.ir.dsl import Tensor
from attnc.ir.tensor_dialect import ATTN
from attnc.ir.tile_dialect import TILE
from attnc.ir.types import FLOAT_DTYPES, dtype_of, shape_of, tensor_type

from . import PatternPass, register
from ._build import before, muli, peeled_loop, tile_op, view


class _ChunkK(RewritePattern):
    def __init__(self, k: int):
        self.k = k

    def match_and_rewrite(self, op, rewriter: PatternRewriter):
        if not isinstance(op, (ATTN["matmul"], TILE["matmul"])):
            return
        trans = op.transpose_b.value.data
        sa, sb = shape_of(op.lhs.type), shape_of(op.rhs.type)
        K, k = sa[-1], self.k
        if K <= k or K % k or dtype_of(op.lhs.type) not in FLOAT_DTYPES:  # integer matmuls: no f32 accumulator
            return
        n = sb[-2] if trans else sb[-1]
        acc_type = tensor_type((*sa[:-1], n), "f32")
        flag = BoolAttr.from_bool(trans)
        loc = op.attributes["loc"].data if "loc" in op.attributes else None

        def chunk(at) -> tuple[Tensor, Tensor]:
            a = view(op.lhs, (*[0] * (len(sa) - 1), at), (*sa[:-1], k))
            if trans:
                b = view(op.rhs, (*[0] * (len(sb) - 1), at), (*sb[:-1], k))
            else:
                b = view(op.rhs, (*[0] * (len(sb) - 2), at, 0), (*sb[:-2], k, sb[-1]))
            return a, b

        with before(op):
            a0, b0 = chunk(0)
            first = tile_op("matmul", [a0, b0], acc_type, transpose_b=flag)

        def step(c, acc):
            a, b = chunk(muli(c, k))
            return [tile_op("matmul_acc", [acc, a, b], acc_type, transpose_b=flag)]

        (out,) = peeled_loop(op, K // k, [first], step, loc)
        out = out.value
        with before(op):
            if dtype_of(op.result.type) != "f32":
                out = tile_op("cast", [out], op.result.type, rounding=str_attr("rint")).value
        rewriter.replace(op, [], [out])


@register
@dataclass(frozen=True)
class TileMatmul(PatternPass):
    name = "tile-matmul"
    summary = "matmul with contraction K > k -> K-chunked tile.matmul + tile.matmul_acc loop (f32 accumulator)"
    tolerance = 1e-2
    k: int = 512

    def pattern(self):
        return _ChunkK(self.k)
