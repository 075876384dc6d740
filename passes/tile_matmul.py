"""tile-matmul{k=512}: a matmul whose contraction K exceeds k becomes a K-chunked accumulation — the first
chunk with tile.matmul, the rest with tile.matmul_acc in an scf.for — accumulating in f32 and rounding once
at the end. K that is not a multiple of k is left whole (a ragged K tile would need a padded cube tile).

Chunking changes the f32 summation order, so a bf16 result may move by one rounding step: non-zero tolerance.

`tasks=N` (1: off) states the cube tile width: a matmul whose M tiles (at most 128 rows each, the cube M tile)
times K chunks give fewer than N tasks gets `n_tile`, the widest power-of-two N tile (16..512) that makes at least
N tasks (fewer if a task would do under `task-macs` of work, default TASK_MACS), so that a few large projections at a small token count (wq_a, wkv: K = 4096, N <= 1024) spread over the
cube cores instead of running as 2-4 long tasks on the critical path. The target's emitter caps its N tile there.
Exact (tiling does not change a matmul's sums)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from xdsl.dialects.builtin import BoolAttr, IntegerAttr, i64
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern

from attnc.ir.common import str_attr
from attnc.ir.dsl import Tensor
from attnc.ir.tensor_dialect import ATTN
from attnc.ir.tile_dialect import TILE
from attnc.ir.types import FLOAT_DTYPES, dtype_of, shape_of, tensor_type

from . import PatternPass, register
from ._build import before, muli, peeled_loop, tile_op, view


CUBE_M = 128  # rows of a cube M tile (pypto: L0A/L0C hold at most 128 rows of a bf16 x bf16 -> f32 product)
N_TILES = (512, 256, 128, 64, 32, 16)
# a cube task is worth splitting off only if its MACs outlast what a task costs the scheduler: ~7000 cycles per
# task in pypto 0.2.0's cost model (AICPU dispatch + resolve), at 4096 MACs per cycle per cube core
TASK_MACS = 7000 * 4096


def n_tile(m: int, k: int, n: int, chunks: int, tasks: int, task_macs: int = TASK_MACS,
           in_bytes: int = 2) -> int | None:
    """The widest N tile giving at least `tasks` cube tasks (M tiles x N tiles x K chunks) of at least
    `task_macs` each; None if the target's own tiles already do. A cube fractal is 32 bytes wide: N tiles of
    1-byte operands (int8) are at least 32 (pypto 0.2.0 refuses 16, F21004)."""
    # a task streams its whole [K, N] operand whatever its rows: its work counts a full M tile
    tasks = min(tasks, max(m, CUBE_M) * k * n // task_macs)
    per_n = -(-m // CUBE_M) * chunks
    if per_n >= tasks:
        return None
    widths = [w for w in N_TILES if w * in_bytes >= 32]
    for width in widths:
        if per_n * -(-n // width) >= tasks:
            return width if width < n else None
    return widths[-1] if widths[-1] < n else None


class _ChunkK(RewritePattern):
    def __init__(self, k: int, tasks: int = 1, task_macs: int = TASK_MACS):
        self.k, self.tasks, self.task_macs = k, tasks, task_macs

    def match_and_rewrite(self, op, rewriter: PatternRewriter):
        if not isinstance(op, (ATTN["matmul"], TILE["matmul"])) or "n_tile" in op.attributes:
            return
        trans = op.transpose_b.value.data
        sa, sb = shape_of(op.lhs.type), shape_of(op.rhs.type)
        K, k = sa[-1], self.k
        n = sb[-2] if trans else sb[-1]
        m = math.prod(sa[:-1])
        if K <= k or K % k or dtype_of(op.lhs.type) not in FLOAT_DTYPES:  # integer matmuls: no f32 accumulator
            width = n_tile(m, K, n, 1, self.tasks, self.task_macs, 1 if dtype_of(op.lhs.type) == "i8" else 2)
            if width is not None:
                op.attributes["n_tile"] = IntegerAttr(width, i64)
                rewriter.handle_operation_modification(op)
            return
        width = n_tile(m, K, n, K // k, self.tasks, self.task_macs)
        tiled = {"n_tile": IntegerAttr(width, i64)} if width is not None else {}
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
            first.value.owner.attributes.update(tiled)

        def step(c, acc):
            a, b = chunk(muli(c, k))
            acc = tile_op("matmul_acc", [acc, a, b], acc_type, transpose_b=flag)
            acc.value.owner.attributes.update(tiled)
            return [acc]

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
    tasks: int = 1  # cube tasks a matmul should make at least (narrower N tiles); 1: the target's tiles
    task_macs: int = TASK_MACS  # the least work (MACs) of a task split off by `tasks`

    def pattern(self):
        return _ChunkK(self.k, self.tasks, self.task_macs)
