"""schedule-attention: cache_attention -> a loop over query groups that reads the ring, the step rows and the
compressed cache in place and runs one softmax over the group's key block.

A query group is the set of query rows that share one key block:
- `batch` (window and every-entry layers, SWA/HCA): one group per batch row — all S·H query rows against
  [kv_ring[b] | kv_step[b] | kv_cmp[b]], each table read as a view of row b (no whole-table copy, no gather);
- `token` (listed entries, CSA): one group per token — its H query rows against [kv_ring[b] | kv_step[b] |
  the rows of kv_cmp[b] it lists], the listed rows gathered from row b's cache only.
`auto` picks `token` when the op lists entries per token, else `batch`.
Paged tables (the op's block tables) are read the same way, one more indirection (_BatchTable): a row's slots are one
view per pool block, its block id a scalar read of the block table (a kernel parameter), and the listed rows are
gathered by physical row (block id looked up in row b of the table); no op copies a table.

Visibility (which key each token may see) is computed inside the loop, per batch row, as an [S, keys] mask from
the row's start position (no iteration waits for a whole-batch producer), with the same definition as the op: window positions t-W+1..t (ring slot j holds the newest
position p < start_pos with p = j mod W; p < 0 was never written), compressed entries w < min(N, floor((t+1)/m)).
Key rows no token of the group sees are zeroed before the matmuls, so never-written rows (they may hold NaN)
never reach a result. One softmax per group over all its keys in f32, exp weights rounded to the key dtype
before P·V (as tile-softmax). The sink enters the max and the denominator (`sink` option): `key` — as the first
key column (a zero key row, its logit from a constant fill), no separate [G, 1] steps; `term` — as one more logit
per query row next to the row reductions, no key row (a copy into every group's key block). `auto`: `key` for a
batch group (SWA core 88.1 vs 120.4 us: pypto merges its softmax tiles into one task), `term` per token (CSA
core 241.3 -> 232.2 us: 128 fewer key-row copies).
The bf16 weights and the different summation order make it an approximate rewrite: tolerance as tile-softmax."""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects import func, scf
from xdsl.dialects.builtin import IntegerAttr, StringAttr, UnitAttr, i64
from xdsl.ir import Block, BlockArgument, Region
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern, op_type_rewrite_pattern

from attnc.ir import dsl
from attnc.ir.common import op_location
from attnc.ir.dsl import emit_op
from attnc.ir.tensor_dialect import CacheAttentionOp, cache_entries, cache_window
from attnc.ir.tile_dialect import ParallelOp, YieldOp
from attnc.ir.types import dtype_of, shape_of

from . import PassError, PatternPass, register
from ._build import (
    INDEX, T, addi, assemble, at_end, before, cap_tile_rows, const, floordiv_nonneg, maxsi, minsi, muli, read, shape,
    subi, tile_full, val, view,
)
from .tile_softmax import F32_MIN

SCHEDULES = ("auto", "batch", "token")
NORMALIZE = ("auto", "after", "before")
SINKS = ("auto", "key", "term")
DIVISIONS = ("auto", "div", "reciprocal")
# a step's tokens of one batch row are unrolled up to this many, a pypto.loop beyond: each unrolled token repeats
# the zero-fill branches of its key block (`if valid < rows`), and pypto 0.2.0 compiles a loop body once per path
# through its branches (2^branches), so its compile time grows exponentially with unrolled tokens (tiny CSA core,
# 1/2/3/4 tokens: 1.7/5.7/46/469 s), while the loop form costs the same for any S
UNROLL_TOKENS = 2
MAX_UNROLL_TOKENS = 2  # the bound on the option: 2 tokens = 4 branches, 16 paths


def key_positions_and_visibility(op: CacheAttentionOp, start_pos: dsl.Tensor, listed: dsl.Tensor | None,
                                 sink_key: bool = True):
    """Visibility of a group of G batch rows from their start positions [G]: ([G,S,keys] i1 visibility, [G,S,K]
    listed ids made safe to gather (0 where not visible: slots of the row's cache, _BatchTable.row_ids maps them to
    matrix rows), or None). Keys are [the sink (`sink_key`) | ring slots 0..W-1 | step rows 0..S-1 | cache entries
    (all, or the listed ones [G,S,K])]; the sink's column is never visible (its key position is -1: its logit
    comes from the fill, see group_attention). Made inside the loop from the group's own start position, so no
    iteration waits for a whole-batch producer."""
    G = start_pos.shape[0]
    S = shape_of(op.q.type)[1]
    W = cache_window(op)
    sp = dsl.reshape(start_pos, (G, 1, 1))
    t = sp + dsl.iota((G, S, 1), 1)
    # position held by ring slot j: the newest p < start_pos with p = j (mod W); negative = never written
    slot = dsl.iota((G, 1, W), 2)
    ring_pos = sp - 1 - (sp - 1 - slot) % W
    sink = [dsl.full((G, 1, 1), -1, "i32")] if sink_key else []
    key_pos = dsl.concat([*sink, ring_pos, sp + dsl.iota((G, 1, S), 2)], axis=2)
    visible = (key_pos >= t - (W - 1)) & (key_pos <= t) & (key_pos >= 0)
    ids = None
    if op.compressed:
        ratio, n = op.ratio.value.data, cache_entries(op)
        complete = dsl.minimum((t + 1) // ratio, n)  # entries w < complete are visible to token t
        if listed is not None:  # ids in any order, -1 anywhere: each is judged by its own value
            ok = (listed >= 0) & (listed < complete)
            # an id nobody may see reads its batch row's slot 0
            ids = dsl.select(ok, listed, 0)
        else:
            ok = dsl.iota((G, 1, n), 2) < complete
        visible = dsl.concat([visible, ok], axis=2)
    return visible, ids


def group_attention(q, keys, visible, fill, sink, scale: float, out_dtype: str, normalize: str = "after",
                    softmax_rows: int = 1 << 20):
    """Softmax attention of query rows q [G, d] over keys [N, d] (rows nobody may see hold finite values) with
    visibility [G, N] (i1): [G, d] in `out_dtype`. Invisible keys take their logit from `fill` ([G, N] f32 or a
    number). The sink is either a key (sink=None: the keys' first row is zero, its column invisible and its logit
    in the fill's first column) or `sink` [G, 1] (f32), a logit with a zero value row that enters the max and the
    denominator as its own column. Every query row sees at least its own token (the window always holds position
    t), so the max is a real score or the sink: invisible keys get exp(F32_MIN - m) = 0 and the denominator is at
    least the sink term — no guards needed.

    normalize="after": exp weights rounded to the key dtype, P·V in f32 divided by the sum of the rounded weights
    (the sink term included, rounded like the others); "before" (the hand-written kernels' numerics): the f32
    weights divided by their f32 sum, rounded, and P·V rounded straight to the output dtype.

    `softmax_rows`: the softmax's ops (scores to weights, the [G, 1] max, sink and sum included) state that row
    cap of their vector tiles, so pypto 0.2.0 fuses a row group's whole softmax into one task; without it the
    [G, 1] statistics take whole-G tiles and split the softmax in two passes over the scores (a mask/max task
    then an exp/sum task)."""
    scores = dsl.matmul(q, keys, out="f32", transpose_b=True)
    s = dsl.select(visible, scores * scale, fill)
    m = dsl.reduce(s, "max", -1)
    if sink is not None:
        m = dsl.maximum(m, sink)
    p = dsl.exp(s - m)
    p_sink = dsl.exp(sink - m) if sink is not None else None
    inputs = [scores, visible, *([fill] if isinstance(fill, dsl.Tensor) else []), *([sink] if sink is not None else [])]
    if normalize == "before":
        total = dsl.reduce(p, "sum", -1)
        weights = dsl.cast(p / (total if p_sink is None else total + p_sink), keys.dtype)
        if softmax_rows < shape(scores)[0]:
            cap_tile_rows(weights, inputs, softmax_rows)
        return dsl.matmul(weights, keys, out=out_dtype)
    p_lo = dsl.cast(p, keys.dtype)  # exp weights rounded before P·V
    denom = dsl.reduce(dsl.cast(p_lo, "f32"), "sum", -1)
    if p_sink is not None:
        denom = denom + dsl.cast(dsl.cast(p_sink, keys.dtype), "f32")
    if softmax_rows < shape(scores)[0]:
        cap_tile_rows(p_lo, inputs, softmax_rows)
        cap_tile_rows(denom, inputs, softmax_rows)
    return dsl.cast(dsl.matmul(p_lo, keys, out="f32") / denom, out_dtype)


def _row(table, index: tuple, shape: tuple):
    """A view of one leading-index slice of a batch-major table, reshaped to `shape` (no copy of the table)."""
    src = shape_of(val(table).type)
    lead = len(index)
    tile = view(table, (*index, *[0] * (len(src) - lead)), (*[1] * lead, *src[lead:]))
    return dsl.reshape(tile, shape)


def _rows(matrix, first, count: int, written=None):
    """Rows first .. first+count-1 of a row-major [R, d] matrix as a view; rows from `written` on read as 0."""
    d = shape(matrix)[1]
    return view(matrix, (first, 0), (count, d), (written, d) if written is not None else (), pad="zero")


@dataclass(frozen=True)
class _BatchTable:
    """A batch-major table as the loop reads it, in place: a row-major matrix [R, d] holding `length` slots per
    batch row — dense (row b's slot j at row b * length + j) or a paged pool (at row block_table[b, j // block_size]
    * block_size + j % block_size, the block table a kernel parameter [B, blocks] read as scalars)."""
    matrix: dsl.Tensor
    length: int
    block_table: object = None  # SSA value of the [B, blocks] i32 table, or None (dense)
    block_size: int = 0
    row_bases: dsl.Tensor | None = None  # dense, for row_ids: [B, 1, 1] first matrix row of each batch row

    @staticmethod
    def of(table, block_table, length: int, row_ids: bool = False) -> "_BatchTable":
        """From a cache_attention operand: [B, length, d] dense, or a pool [blocks, block_size, d] + its table.
        `row_ids`: row_ids will be asked (a dense table then makes its row bases here, before the loop)."""
        lead, size, d = shape_of(table.type)
        matrix = dsl.reshape(T(table), (lead * size, d))
        if block_table is not None:
            return _BatchTable(matrix, length, block_table, size)
        return _BatchTable(matrix, length, row_bases=dsl.iota((lead, 1, 1), 0) * length if row_ids else None)

    def rows(self, b, count: int, written=None) -> list:
        """Slots 0 .. count-1 of batch row b as views (one for a dense table, one per block for a paged one);
        slots from `written` (an index value) on read as 0."""
        if self.block_table is None:
            return [_rows(self.matrix, muli(b, self.length), count, written)]
        parts, size = [], self.block_size
        for j in range(-(-count // size)):
            n = min(size, count - j * size)
            block = read(self.block_table, (b, j))
            valid = None if written is None else minsi(maxsi(subi(written, j * size), 0) if j else written, n)
            parts.append(_rows(self.matrix, muli(block, size), n, valid))
        return parts

    def row_ids(self, b, slots):
        """Matrix rows of slots [1, S, K] (i32, each in [0, length)) of batch row b: dense b * length + slot (the
        row base a view of row_bases), paged the block id gathered from row b of the block table (a view of the
        parameter) * block_size + slot % block_size."""
        if self.block_table is None:
            return slots + _row(self.row_bases, (b,), (1, 1, 1))
        _, S, K = slots.shape
        blocks = shape_of(self.block_table.type)[1]
        flat = dsl.reshape(slots, (S, K))
        physical = dsl.gather_rows(_row(T(self.block_table), (b,), (blocks,)), flat // self.block_size)
        return dsl.reshape(physical * self.block_size + flat % self.block_size, (1, S, K))


def _is_kernel_parameter(v) -> bool:
    """v is an argument of the kernel function (not a value computed in it)."""
    return isinstance(v, BlockArgument) and isinstance(v.owner.parent_op(), func.FuncOp)


class _Schedule(RewritePattern):
    def __init__(self, schedule: str, normalize: str, vec_tile: int, sink: str, unroll: int, softmax_rows: int,
                 divisions: str = "auto"):
        self.schedule, self.normalize, self.vec_tile, self.sink = schedule, normalize, vec_tile, sink
        self.unroll, self.softmax_rows, self.divisions = unroll, softmax_rows, divisions

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: CacheAttentionOp, rewriter: PatternRewriter):
        B, S, H, d = shape_of(op.q.type)
        W = cache_window(op)
        listed = len(op.compressed) > 1
        schedule = self.schedule if self.schedule != "auto" else ("token" if listed else "batch")
        if schedule == "batch" and listed:
            raise PassError(f"{op_location(op)}: schedule-attention{{schedule=batch}}: the tokens of a batch row list "
                            "different compressed entries, so they share no key block (use schedule=token)")
        sink_key = (self.sink if self.sink != "auto" else "key" if schedule == "batch" else "term") == "key"
        normalize = self.normalize if self.normalize != "auto" else "after" if schedule == "batch" else "before"
        out_dtype = dtype_of(op.result.type)
        scale = op.scale.value.data
        loc = op_location(op)
        divisions = self.divisions if self.divisions != "auto" else "reciprocal" if schedule == "token" else "div"

        def sink_rows_of():
            return dsl.reshape(dsl.broadcast_to(dsl.reshape(T(op.sink), (1, H, 1)), (rows // H, H, 1)), (rows, 1))

        # Per token, the reshapes of the operands that are kernel parameters (views of their buffers, no copy) are
        # made in each iteration: made before the loop, each is one pypto hub task with an edge to every
        # iteration's reader, whose successors pypto 0.2.0 wakes one by one, 390 cycles apart, through one AICPU's
        # first-in-first-out queue (the last iterations' window copies were ready ~28 us after the first). A
        # computed operand's reshape is a copy, so it stays before the loop (made per iteration it is copied per
        # iteration: decode_csa 894.5 -> 951.2 us). Per batch row all stay before the loop (made in it, flash SWA
        # core 88.4 -> 92.6 us, HCA 102.8 -> 129.8: pypto splits its copies into more tasks).
        def per_iteration(v) -> bool:
            return schedule == "token" and _is_kernel_parameter(v)

        made = {}

        def tables(inside: bool, names: tuple = ("sink", "q_rows", "ring", "step_rows", "cache")):
            """The sink rows and the tables as row-major matrices (a batch row's rows are one contiguous view) of
            `names`, those whose operand `per_iteration` places `inside` the loop or not."""
            parts = dict(sink=(op.sink, sink_rows_of),
                         q_rows=(op.q, lambda: dsl.reshape(T(op.q), (B * S * H, d))),
                         ring=(op.ring, lambda: _BatchTable.of(op.ring, op.ring_table, W)),
                         step_rows=(op.step, lambda: dsl.reshape(T(op.step), (B * S, d))))
            if op.compressed:
                parts["cache"] = (op.compressed[0], lambda: _BatchTable.of(
                    op.compressed[0], op.cache_table, cache_entries(op), row_ids=listed and op.cache_table is not None))
            made.update({name: make() for name, (operand, make) in parts.items()
                         if name in names and per_iteration(operand) == inside})

        with before(op):
            n_keys = W + S + (0 if not op.compressed else
                              shape_of(op.compressed[1].type)[2] if listed else cache_entries(op))
            rows = S * H if schedule == "batch" else H
            tables(inside=False, names=("sink",))
            sink_rows = [tile_full((1, d), 0.0, dtype_of(op.ring.type))] if sink_key else []  # P·V adds nothing
            n_cols = n_keys + len(sink_rows)
            # token groups write token rows [B·S·H, d] (returned reshaped): with P normalised first, P·V's tile is
            # assembled straight into the output parameter, no copy task per token (pypto 0.2.0 copies a [1, 1, H, d]
            # reshape into 4-D; flash CSA core: docs/benchmarks.md)
            init = tile_full((B, S, H, d) if schedule == "batch" else (B * S * H, d), 0.0, out_dtype)
            tables(inside=False, names=("q_rows", "ring", "step_rows", "cache"))
        body = Block(arg_types=[INDEX, init.value.type])
        b, acc = body.args
        with at_end(body, loc):
            tables(inside=True)
            sink, q_rows, ring, step_rows = made["sink"], made["q_rows"], made["ring"], made["step_rows"]
            cache = made.get("cache")
            cache_rows = cache.matrix if cache is not None else None
            n = cache_entries(op) if cache is not None else None
            sp = read(op.start_pos, (b,))
            # the logits of keys nobody sees, and of the sink's column when it is a key (that fill is made per
            # group: a tensor shared by every iteration would be one producer with an edge to every tile of every
            # group); with the sink as a term it is a number
            fill = dsl.concat([sink, dsl.full((rows, n_keys), F32_MIN)], axis=1) if sink_key else F32_MIN
            sink_term = None if sink_key else sink
            visible, ids = key_positions_and_visibility(
                op, view(op.start_pos, (b,), (1,)),
                _row(T(op.compressed[1]), (b,), (1, S, shape_of(op.compressed[1].type)[2])) if listed else None,
                sink_key)
            if ids is not None and cache.block_table is not None:  # paged: the listed slots -> pool rows
                ids = cache.row_ids(b, ids)
                picks_from = cache_rows
            elif ids is not None:  # dense: gathered from row b's view by slot, so no id waits for a row base
                # made before the loop (a whole-batch producer every iteration's gather waited on)
                picks_from = cache.rows(b, n)[0]
            if ids is not None:
                # the step's ids as one [S·K] row, made so by the visibility task: a token's [K] ids are a view of
                # it (a [1, 1, K] view reshaped to [K] is a copy task of its own per batch row in pypto 0.2.0,
                # between the visibility math and the gathers: flash CSA core 196.1 -> 188.9 us)
                ids = dsl.reshape(ids, (S * shape(ids)[2],))

            def window():
                """The group's window (and every-entry cache) rows: views of batch row b, made where they are
                used (pypto 0.2.0 cannot hand a ragged view into a nested loop)."""
                # ring slots >= start_pos were never written while start_pos < W
                parts = [*ring.rows(b, W, minsi(sp, W)), _rows(step_rows, muli(b, S), S)]
                if cache is not None and ids is None:  # every entry: the written ones are a prefix
                    done = minsi(floordiv_nonneg(addi(sp, S), op.ratio.value.data), n)
                    parts.extend(cache.rows(b, n, done))
                return parts

            if schedule == "batch":
                vis = dsl.reshape(dsl.broadcast_to(dsl.reshape(visible, (S, 1, n_cols)), (S, H, n_cols)),
                                  (rows, n_cols))
                o = group_attention(_rows(q_rows, muli(b, rows), rows), dsl.concat([*sink_rows, *window()], axis=0),
                                    vis, fill, sink_term, scale, out_dtype, normalize)
                result = assemble(dsl.reshape(o, (1, S, H, d)), acc, (b, 0, 0, 0))
            else:
                def token(s, out):
                    keys = [*sink_rows, *window()]
                    if ids is not None:
                        keys.append(self._picks(op, s, sp, picks_from, ids))
                    vis_row = _row(visible, (0, s), (1, n_cols))
                    o = group_attention(_rows(q_rows, muli(addi(muli(b, S), s), H), H), dsl.concat(keys, axis=0),
                                        dsl.broadcast_to(vis_row, (H, n_cols)), fill, sink_term, scale, out_dtype,
                                        normalize, self.softmax_rows)
                    return assemble(o, out, (muli(addi(muli(b, S), s), H), 0))

                result = self._per_token(S, self.unroll, acc, token, loc)
            emit_op(YieldOp, [[val(result)]], [])
        with before(op):
            loop = emit_op(ParallelOp, [const(0), const(B), [init.value]], [[init.value.type]],
                           {"rows": IntegerAttr(1, i64)}, regions=[Region(body)])
        loop.attributes["schedule"] = StringAttr(schedule)
        loop.attributes["vec_tile_elems"] = IntegerAttr(self.vec_tile, i64)
        if divisions == "reciprocal":
            loop.attributes["reciprocal_divisions"] = UnitAttr()
        if schedule == "batch":
            rewriter.replace(op, [], [loop.results[0]])
            return
        with before(op):
            rows_out = dsl.reshape(T(loop.results[0]), (B, S, H, d))
        rewriter.replace(op, [], [val(rows_out)])

    @staticmethod
    def _picks(op, s, sp, cache_rows, ids):
        """The token's listed cache rows [K, d], gathered from `cache_rows` (row b's slots, or the whole paged pool
        by physical row) by the row ids of token s in `ids` (the step's [S·K]). An id nobody
        may see reads slot 0 (ids), written once the token sees any entry: its row then has weight 0 in P·V like
        any invisible key, wherever the list holds it (no order of the list is assumed); before that every pick
        reads as 0 (slot 0 may hold NaN). So the block is zeroed in a step's first tokens only, not for every
        token with fewer than K picks (CSA core 250.2 -> 241.3 us: 120 zero-fill tasks)."""
        K, d = shape_of(op.compressed[1].type)[2], shape(cache_rows)[1]
        picked = dsl.gather_rows(cache_rows, view(ids, (muli(s, K),), (K,)))
        complete = floordiv_nonneg(addi(addi(sp, s), 1), op.ratio.value.data)
        return view(picked, (0, 0), (K, d), (muli(minsi(complete, 1), K), d), pad="zero")

    @staticmethod
    def _per_token(S: int, unroll: int, acc, token, loc):
        """token(s, out) for s = 0..S-1 chained on the carried output: unrolled for S <= `unroll`, else one
        scf.for (its body's size, hence pypto's compile time, does not grow with S)."""
        if S <= unroll:
            out = acc
            for s in range(S):
                out = token(const(s), out)
            return out
        body = Block(arg_types=[INDEX, acc.type])
        with at_end(body, loc):
            emit_op(scf.YieldOp, [[val(token(body.args[0], body.args[1]))]], [])
        return emit_op(scf.ForOp, [const(0), const(S), const(1), [acc]], [[acc.type]],
                       regions=[Region(body)]).results[0]


@register
@dataclass(frozen=True)
class ScheduleAttention(PatternPass):
    name = "schedule-attention"
    summary = "cache_attention -> loop over query groups (batch rows or tokens) reading ring/step/cache in place"
    tolerance = 2e-2
    schedule: str = "auto"
    # `auto`: P normalised first per token (P·V then writes the output: CSA core 202.5 -> 196.1 us at flash), after
    # P·V per batch row (the SWA/HCA cores keep their numerics)
    normalize: str = "auto"
    # elements of one vector tile inside the loop: one [32, 512] f32 P·V epilogue tile per task (B=64 cores: SWA
    # 130.6 -> 94.5 us, CSA 429.9 -> 349.8); the target's smaller default stays outside, where 16384 trips pypto
    # 0.2.0 runtime crashes (F74007) on padded key lists
    vec_tile: int = 16384
    sink: str = "auto"
    unroll: int = UNROLL_TOKENS
    # the row cap of the per-token softmax's vector tiles (at or above H: no cap), the rows of its [H, keys] score
    # tiles under vec_tile (16 of 64 at 642 keys): one fused task per row group (flash CSA core: docs/benchmarks.md)
    softmax_rows: int = 16
    # the loop's integer divisions by a power of two (its visibility math: the ring slot's position mod W, the
    # entries complete at (t+1) // m): `reciprocal` states `reciprocal_divisions`, so pypto-legalize multiplies
    # by the exact reciprocal (no host-constant divisor a task copies in); `auto` = per token (flash CSA core
    # 173.8 -> 169.0 us, decode_csa 894.1 -> 888.7), not per batch row (flash sparse_attn m = 0 357.1 -> 360.4)
    divisions: str = "auto"
    option_choices = {"schedule": SCHEDULES, "normalize": NORMALIZE, "sink": SINKS, "divisions": DIVISIONS}
    option_ranges = {"vec_tile": (16, 1 << 20), "unroll": (1, MAX_UNROLL_TOKENS), "softmax_rows": (1, 1 << 20)}

    def pattern(self):
        return _Schedule(self.schedule, self.normalize, self.vec_tile, self.sink, self.unroll, self.softmax_rows,
                         self.divisions)
