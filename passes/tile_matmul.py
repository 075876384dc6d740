"""tile-matmul{k=512}: a matmul whose contraction K exceeds k becomes a K-chunked accumulation — the first
chunk with tile.matmul, the rest with tile.matmul_acc in an scf.for — accumulating in f32 and rounding once
at the end. K that is not a multiple of k is left whole (a ragged K tile would need a padded cube tile).

Chunking changes the f32 summation order, so a bf16 result may move by one rounding step: non-zero tolerance.

`tasks=N` (1: off) states the cube tile width: a matmul whose M tiles (at most 128 rows each, the cube M tile)
times K chunks give fewer than N tasks gets `n_tile`, the widest power-of-two N tile (16..512) that makes at least
N tasks (fewer if a task would do under `task-macs` of work, default TASK_MACS), so that a few large projections at a small token count (wq_a, wkv: K = 4096, N <= 1024) spread over the
cube cores instead of running as 2-4 long tasks on the critical path. The target's emitter caps its N tile there.
Exact (tiling does not change a matmul's sums).

`rule=cost` chooses both per matmul instead (`k` is then the smallest K chunk considered, `tasks` the cube cores
a matmul alone may fill): among K whole or in chunks of k, 2k, ... and N tiles of N_TILES (or the target's own),
the pair with the least estimated time in pypto 0.2.0's cost model (`estimate`): cube waves x the cycles of one
task (its dispatch, the DDR->L1 loads of its A and B tiles, its MACs) plus, per extra K chunk, one f32 [M, N]
vector add on the accumulation chain. The facts it reads are the IR's: the operand shapes and dtype, and the
trip counts of the `tile.parallel` loops around the matmul (their iterations run side by side, so a matmul in a
64-iteration loop gets 24/64 of the cube). Why: a narrow N tile streams the whole [M, K] A tile once per N tile
(K = 4096, N tile 32: 32 A loads of 1 MiB for a 1024-wide result), and every K chunk costs an f32 add of the
whole [M, N] result (wq_b at k=512: one [128, 32768] add). With K whole it also states `l1_reuse = 1` and
`nbuffer = 1` on a matmul whose N tiles run faster each as its own task than merged by the target's L1 reuse
(`l1_reuse`): its estimate merges them neither way, so the target's n-buffering, which would run 2 N tiles as one
task each re-reading the A tile, is off too. pypto-legalize states both on the loop around the matmul
(`body_l1_reuse`, `body_nbuffer`: pypto 0.2.0 reads them per loop body), which the pypto emitter prints."""
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
from ._build import before, constant_value, muli, peeled_loop, tile_op, view


CUBE_M = 128  # rows of a cube M tile (pypto: L0A/L0C hold at most 128 rows of a bf16 x bf16 -> f32 product)
N_TILES = (512, 256, 128, 64, 32, 16)
# a cube task is worth splitting off only if its MACs outlast what a task costs the scheduler: ~7000 cycles per
# task in pypto 0.2.0's cost model (AICPU dispatch + resolve), at 4096 MACs per cycle per cube core
TASK_MACS = 7000 * 4096
# pypto 0.2.0's cost model (measured on its trace of decode_swa at flash B=64): ~7000 cycles of AICPU dispatch and
# resolve per task; 4096 MACs per cycle per cube core; a DDR->L1 load costs 2.2 cycles per contiguous run of up to
# 1 KiB plus 1 cycle per 52.6 bytes ([128, 512] bf16 in 2775 cycles, [512, 32] in 1748); an f32 vector add of a
# 16384-element tile 18577 cycles; 24 cube and 48 vector cores
TASK_CYCLES, CUBE_MACS, CUBE_CORES, VEC_CORES = 7000, 4096, 24, 48
LOAD_RUN_CYCLES, LOAD_BYTES_PER_CYCLE = 2.2, 52.6
ADD_TILE, ADD_CYCLES = 16384, 18577
# the pypto target's L1 reuse (`cube_l1_reuse_setting` {0: 4}): up to 4 N tiles of a matmul that read the same A
# tile run as one task
TARGET_L1_REUSE = 4
# the pypto target's n-buffering (`cube_nbuffer_setting` {-1: 2}): 2 N tiles of a matmul run as one task, each
# re-reading its A tile, unless the matmul states `nbuffer = 1` (with `l1_reuse = 1`: each tile its own task; K
# whole only)
TARGET_NBUFFER = 2


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


def _load_cycles(rows: int, cols: int, in_bytes: int) -> float:
    """DDR -> L1 cycles of a [rows, cols] tile (row-major, each row in runs of up to 1 KiB)."""
    return rows * -(-cols * in_bytes // 1024) * LOAD_RUN_CYCLES + rows * cols * in_bytes / LOAD_BYTES_PER_CYCLE


def widest_n(m: int, n: int, in_bytes: int = 2) -> int:
    """The widest N tile the target's cube tiles take for M rows (its own choice when no n_tile is stated): up
    to 512 bytes of a B row, and the f32 [M tile, N] result within L0C (128 KiB: 256 for 128 rows); at most N."""
    m0 = min(CUBE_M, max(16, -(-m // 16) * 16))
    return min(n, 512 // in_bytes, 128 * 1024 // (4 * m0))


def estimate(m: int, k: int, n: int, chunks: int, width: int, cores: float, in_bytes: int = 2,
             merge: int = 1, l1_merge: int = 1) -> float:
    """Cycles of one [m, k] x [k, n] matmul in `chunks` K chunks and N tiles of `width` on `cores` cube cores:
    waves of tasks x one task (dispatch + A and B tile loads + MACs), plus one f32 [m, n] add per extra chunk
    (its tiles spread over the vector cores, one chunk after the other). `l1_merge`: N tiles sharing one A tile
    that pypto's L1 reuse runs as one group (the A tile loaded once, the tiles one after the other on one core);
    `merge`: groups of the same structure the target runs as one task, one after the other (pypto's
    cube_nbuffer_setting)."""
    kc, m0, w = k // chunks, min(m, CUBE_M), min(width, n)
    n_tiles = -(-n // w)
    l1_merge = max(1, min(l1_merge, n_tiles))
    groups = -(-m // CUBE_M) * -(-n_tiles // l1_merge) * chunks
    group = _load_cycles(m0, kc, in_bytes) + l1_merge * (_load_cycles(kc, w, in_bytes) + m0 * kc * w / CUBE_MACS)
    tasks = -(-groups // merge)
    adds = (chunks - 1) * -(-(-(-m * n // ADD_TILE)) // VEC_CORES) * (TASK_CYCLES + ADD_CYCLES)
    return -(-tasks // max(cores, 1e-9)) * (TASK_CYCLES + merge * group) + adds


def choose(m: int, k: int, n: int, min_chunk: int, cores: float, in_bytes: int = 2,
           chunkable: bool = True, task_macs: int = TASK_MACS, merge: int = 1) -> tuple[int, int | None]:
    """(K chunks, N tile or None for the target's own) with the least `estimate`; ties: fewer tasks. A split
    whose tasks would do under `task_macs` of work is not considered (the cost model charges a task's dispatch
    to the whole program, not only to its matmul), nor any split when the matmul's loop iterations alone fill
    the cube (`cores` <= 1: more tasks only wait for the same cores)."""
    if cores <= 1:
        return 1, None
    chunk_sizes = [k]
    if chunkable:
        c = min_chunk
        while c < k:
            if k % c == 0:
                chunk_sizes.append(c)
            c *= 2
    widest = widest_n(m, n, in_bytes)
    widths = [widest] + [w for w in N_TILES if w < widest and w * in_bytes >= 32]
    best = None
    for kc in chunk_sizes:
        chunks = k // kc
        for w in widths + whole_wave_widths(m, n, chunks, cores * merge, widest, in_bytes, widths):
            if (chunks > 1 or w != widest) and CUBE_M * kc * min(w, n) < task_macs:  # a full M tile, as n_tile
                continue
            # a K-chunked matmul states no l1_reuse: the target n-buffers its tiles (flash m = 4 projections, a
            # and z side by side: 2 chunks of N tile 176 estimated 73.1k cycles unmerged, 256.3 us in all merged;
            # K whole, N tile 128, each its own task 186.5 us)
            key = (estimate(m, k, n, chunks, w, cores, in_bytes, merge if chunks == 1 else max(merge, TARGET_NBUFFER)),
                   chunks * -(-n // w))
            if best is None or key < best[0]:
                best = (key, chunks, None if w == widest else w)
    return best[1], best[2]


def l1_reuse(m: int, k: int, n: int, width: int, cores: float, in_bytes: int = 2) -> int | None:
    """1 where the matmul's N tiles (of `width`) run faster as tasks of their own than merged TARGET_L1_REUSE to a
    task by pypto's L1 reuse (its tasks then too few and too long to fill the cube), else None (the target's
    setting). Flash m = 4 compressor, a = xn @ W_kv and z = xn @ W_gate [128, 4096] x [4096, 1024] at N tile 64:
    merged, 2 tasks of 149.3 us end the projections at 156.0 us (325.3 us in all); unmerged, 16 of 39.5 at 48.7
    (224.7 us)."""
    if cores <= 1:
        return None
    merged = estimate(m, k, n, 1, width, cores, in_bytes, l1_merge=TARGET_L1_REUSE)
    return 1 if estimate(m, k, n, 1, width, cores, in_bytes) < merged else None


def operand_bytes(op) -> int:
    """Bytes per element of a matmul's operands as the cube loads them (f32: half the bf16 L0 elements)."""
    return {"i8": 1, "f32": 4}.get(dtype_of(op.lhs.type), 2)


def whole_tasks(m: int, n: int, width: int, merged: bool) -> int:
    """Cube tasks of a matmul with K whole in N tiles of `width`: TARGET_NBUFFER tiles to a task where the target
    n-buffers them (`merged`), else each tile its own."""
    tiles = -(-m // CUBE_M) * -(-n // min(width, n))
    return -(-tiles // TARGET_NBUFFER) if merged else tiles


def whole_wave_widths(m: int, n: int, chunks: int, cores: float, widest: int, in_bytes: int,
                      known: list[int]) -> list[int]:
    """N tiles (multiples of 16, narrower than `widest`, not in `known`) whose tasks fill whole waves of `cores`
    cube cores: wo_b [128, 8192] x [8192, 4096] in 24 tiles of 176 (one wave) rather than 16 of 256 (8 cores
    idle); the last tile is narrower."""
    whole, per_n, out = round(cores), -(-m // CUBE_M) * chunks, []
    if whole < 2 or abs(cores - whole) > 1e-9:
        return out
    for count in range(2, n // 16 + 1):
        w = -(-(-(-n // count)) // 16) * 16
        if (w < widest and w * in_bytes >= 32 and w not in known and w not in out
                and per_n * -(-n // w) % whole == 0):
            out.append(w)
    return out


def _concurrency(op) -> int:
    """Iterations of the `tile.parallel` loops around `op` (they run side by side), times the matmuls the IR
    states run side by side with it (`side_by_side`: a grouped projection's groups)."""
    count, parent = 1, op.parent_op()
    if "side_by_side" in op.attributes:
        count = op.attributes["side_by_side"].value.data
    while parent is not None:
        if parent.name == "tile.parallel":
            lo, hi = constant_value(parent.lower), constant_value(parent.upper)
            if lo is not None and hi is not None:
                count *= max(1, (hi - lo) // parent.rows.value.data)
        parent = parent.parent_op()
    return count


class _ChunkK(RewritePattern):
    def __init__(self, k: int, tasks: int = 1, task_macs: int = TASK_MACS, rule: str = "fixed", merge: int = 1,
                 split_k: int = 1, split_k_min: int = 0):
        self.k, self.tasks, self.task_macs, self.rule, self.merge = k, tasks, task_macs, rule, max(1, merge)
        self.split_k, self.split_k_min = split_k, split_k_min

    def match_and_rewrite(self, op, rewriter: PatternRewriter):
        if not isinstance(op, (ATTN["matmul"], TILE["matmul"])) or "n_tile" in op.attributes or "l1_reuse" in op.attributes:
            return
        trans = op.transpose_b.value.data
        sa, sb = shape_of(op.lhs.type), shape_of(op.rhs.type)
        K, k = sa[-1], self.k
        n = sb[-2] if trans else sb[-1]
        m = math.prod(sa[:-1])
        in_bytes = operand_bytes(op)
        if (self.split_k > 1 and "k_part" not in op.attributes and K >= self.split_k_min and K % self.split_k == 0
                and not trans and len(sb) == 2 and dtype_of(op.lhs.type) in FLOAT_DTYPES):
            width = None  # the parts keep the N tile the whole product takes (its A tile per part is 1/P)
            if self.rule != "cost":
                return self._split(op, rewriter, sa, sb, K, n, width)
            # rule=cost: only a matmul whose N tiles the target n-buffers (its loop body's matmuls do not all state
            # l1_reuse = 1) into fewer tasks than its cube cores: flash wq_a / wkv, 8 + 4 tasks of 39.6 us on 24
            # (W8A8 qkv_proj_rope 202.2 -> 188.2 us); where each N tile is its own task the parts and their f32 sum
            # cost more than they save (compressor m = 4 111.8 -> 128.8, index_compressor 116.2 -> 126.6)
            cores = self.tasks / _concurrency(op)
            width = choose(m, K, n, self.k, cores, in_bytes, True, self.task_macs, self.merge)[1]
            if (not self._reuse_kept(op)
                    and whole_tasks(m, n, width or widest_n(m, n, in_bytes), merged=True) < cores):
                return self._split(op, rewriter, sa, sb, K, n, width)
        if self.rule == "cost":
            chunks, width = choose(m, K, n, k, self.tasks / _concurrency(op), in_bytes,
                                   dtype_of(op.lhs.type) in FLOAT_DTYPES, self.task_macs, self.merge)
            if chunks == 1:
                if width is not None:
                    op.attributes["n_tile"] = IntegerAttr(width, i64)
                reuse = l1_reuse(m, K, n, width or widest_n(m, n, in_bytes), self.tasks / _concurrency(op), in_bytes)
                if reuse is not None:
                    op.attributes["l1_reuse"] = IntegerAttr(reuse, i64)
                if reuse == 1:  # each N tile its own task, as estimated: not merged by n-buffering either (flash m =
                    # 4 projections: 16 tasks of 2 N tiles of 64, 39.5 us each; index_compressor 168.8 -> 145.6 us)
                    op.attributes["nbuffer"] = IntegerAttr(1, i64)
                if width is not None or reuse is not None:
                    rewriter.handle_operation_modification(op)
                return
            k = K // chunks
        elif K <= k or K % k or dtype_of(op.lhs.type) not in FLOAT_DTYPES:  # integer matmuls: no f32 accumulator
            width = n_tile(m, K, n, 1, self.tasks, self.task_macs, 1 if dtype_of(op.lhs.type) == "i8" else 2)
            if width is not None:
                op.attributes["n_tile"] = IntegerAttr(width, i64)
                rewriter.handle_operation_modification(op)
            return
        else:
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

    def _whole_reuse(self, op) -> int | None:
        """The `l1_reuse` rule=cost states on `op` with K whole (what it states already, once tiled)."""
        if "l1_reuse" in op.attributes:
            return op.attributes["l1_reuse"].value.data
        if not isinstance(op, (ATTN["matmul"], TILE["matmul"])) or "n_tile" in op.attributes:
            return None  # a K chunk's accumulation, a split part, a tile stated without it
        sa, sb = shape_of(op.lhs.type), shape_of(op.rhs.type)
        K, n, m = sa[-1], (sb[-2] if op.transpose_b.value.data else sb[-1]), math.prod(sa[:-1])
        in_bytes = operand_bytes(op)
        cores = self.tasks / _concurrency(op)
        chunks, width = choose(m, K, n, self.k, cores, in_bytes, dtype_of(op.lhs.type) in FLOAT_DTYPES,
                               self.task_macs, self.merge)
        return l1_reuse(m, K, n, width or widest_n(m, n, in_bytes), cores, in_bytes) if chunks == 1 else None

    def _reuse_kept(self, op) -> bool:
        """Whether the loop body holding `op` keeps its matmuls' N tiles apart (every matmul of the body states
        `l1_reuse = 1`, which pypto-legalize then states on the loop: pypto 0.2.0 reads it per loop body); else
        the target's L1 reuse and n-buffering merge them."""
        parent = op.parent_op()
        if parent is None or parent.name not in ("tile.parallel", "scf.for"):
            return False
        return all(self._whole_reuse(o) == 1 for o in op.parent_block().ops
                   if o.name in ("attn.matmul", "tile.matmul", "tile.matmul_acc"))

    def _split(self, op, rewriter: PatternRewriter, sa, sb, K: int, n: int, width: int | None):
        """`split-k=P`: P independent products of K/P each (their own cube tasks, side by side), summed in f32 in
        order (mla_prolog_quant_v4's wq_a in two K halves; each part is then tiled as any matmul)."""
        kp, acc_type = K // self.split_k, tensor_type((*sa[:-1], n), "f32")
        with before(op):
            out = None
            for p in range(self.split_k):
                a = view(op.lhs, (*[0] * (len(sa) - 1), p * kp), (*sa[:-1], kp))
                b = view(op.rhs, (p * kp, 0), (kp, sb[-1]))
                part = tile_op("matmul", [a, b], acc_type, transpose_b=BoolAttr.from_bool(False))
                attrs = part.value.owner.attributes
                attrs["k_part"] = IntegerAttr(p, i64)
                if width is not None:
                    attrs["n_tile"] = IntegerAttr(width, i64)
                if "loc" in op.attributes:
                    attrs["loc"] = op.attributes["loc"]
                side = op.attributes["side_by_side"].value.data if "side_by_side" in op.attributes else 1
                attrs["side_by_side"] = IntegerAttr(side * self.split_k, i64)  # the parts share the cube
                out = part.value if out is None else tile_op("add", [out, part.value], acc_type).value
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
    rule: str = "fixed"  # fixed: k and tasks as given; cost: K chunks and N tile per matmul by `estimate`
    merge: int = 1  # rule=cost: tiles of the same structure the target runs as one task (pypto: cube_nbuffer_setting)
    option_choices = {"rule": ("fixed", "cost")}

    split_k: int = 1  # a float matmul of K >= split_k_min as split_k independent K parts summed (1: off)
    split_k_min: int = 4096

    def pattern(self):
        return _ChunkK(self.k, self.tasks, self.task_macs, self.rule, self.merge, self.split_k, self.split_k_min)
