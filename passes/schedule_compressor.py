"""schedule-compressor: compress_pool -> the pooling of each completed block, reading the state rings in place.

Schedules (`schedule` option):
- `block` (a ring of one block, R = ratio, no overlap, S <= ratio: m = 128): a loop over batch rows, and in it a
  loop over the blocks the row's step completes — a runtime count computed from start_pos in the program
  (floor((sp+S)/m) - floor(sp/m): 0 or 1), so a row completing nothing pools nothing. Its body pools the block
  from views of the row's ring (slots 0 .. k-1, k = sp mod m >= m - S, the block's earlier positions: slots
  0 .. m-S-1 unmasked, in power-of-two pieces; the last S masked) and of its step rows (0 .. m-k-1, masked), the
  masks of every row computed once before the loop, and writes the entry at the completing token's row (0
  elsewhere). No gather, no copy of a state (flash m = 128, B = 64: 465.4 -> 183.3 -> 174.2 us at random start
  positions, 265.9 -> 259.6 when every row completes a block).
- `row` (a step of S <= ratio tokens completes at most one block per batch row): each batch row pools once, the
  block its step completes, straight from the state rings and the step's rows as [B, R*width] matrices (kernel
  parameters reshaped in place; rank-2 column views, which pypto 0.2.0 reads without the clone a rank-3 view
  needs) — no gather, no copy of a ring, no concat of kv_state | score_state. The block's columns are column ranges
  from start_pos (with overlap: block w-1's half [:dim] and block w's half [dim:]); the slots fold by halving
  column blocks. The pooled entry goes to the completing token's row (0 elsewhere, as the op states).
- `token` (any S, the generic form): every token gathers its window t-R+1 .. t from [ring | step] (values and
  scores from their own rings) and pools it by halving the slot axis of [T, n, d] slices (channels stay the
  contiguous axis, no transpose; flash m = 128: 526.5 us vs 712.5 channel-first with transposes); tokens that
  complete no block give 0.
- `block` with overlap (a ring of two blocks, slot = [older half | newer half], S <= ratio: m = 4 and the index
  compressor): as `block`, a loop over batch rows and in it one over the blocks the row's step completes; a
  completing row pools block w-1's ring slots (half [:d], masked for w = 0), block w's earlier ring slots and its
  step rows (half [d:]) as views in place: no gather, no copy of a ring (flash B = 64 S = 2: m = 4 152.3 -> 111.8
  us, index_compressor 127.0 -> 116.2 against `token`).
`auto`: `block` where it applies (m = 128; m = 4 and index with overlap), else `token` (pypto 0.2.0 SIM at flash: m = 4 `row` 558.8 vs `token` 479.2 us at B = 32; tiny
B = 48 d = 512 m = 4: `row` 222.6 vs `token` 114.5; m = 128 B = 64 `row` 1353.0 vs `token` 712.5 us).
Masked slots score -1e30 (weight exactly 0) and read value 0 (a never-written ring row may hold NaN). The
summation order differs from the op's definition: an approximate rewrite (f32 rounding, then bf16 in the cache)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from xdsl.dialects import scf
from xdsl.dialects.builtin import IntegerAttr, i64
from xdsl.ir import Block, Region
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern, op_type_rewrite_pattern

from attnc.ir import dsl
from attnc.ir.common import bool_attr, op_location
from attnc.ir.dsl import emit_op
from attnc.ir.tensor_dialect import CompressPoolOp, RopeOp
from attnc.ir.tile_dialect import ParallelOp, YieldOp
from attnc.ir.types import dtype_of, shape_of, tensor_type

from . import PassError, PatternPass, register
from ._build import INDEX, T, addi, assemble, at_end, before, cap_tile_rows, const, floordiv_nonneg, muli, read, subi, tile_full, val, view

SCHEDULES = ("auto", "block", "row", "token")
_ABSENT = -1.0e30  # score of a slot outside the block: exp() makes its weight exactly 0


def _max(a, b):
    """max(a, b) of f32 scores as a compare and a select: the same values, and pypto 0.2.0's cost model charges an f32 MAXIMUM
    40.5k cycles per [8, 2, 512] tile (the m = 4 pooling's critical path: 5 in a row per task; flash m = 4 529.9 -> 401.6 us). The
    int32 window ids keep MAXIMUM (a select there: 410.4 us)."""
    return dsl.select(a >= b, a, b)


def _fold(x, combine):
    """Combine [N, n, d] over its slots (axis 1) into [N, 1, d]: halves pairwise (an odd slot out joins last)."""
    rest = []
    while x.shape[1] > 1:
        N, n, d = x.shape
        if n % 2:
            rest.append(dsl.slice_(x, (0, n - 1, 0), (N, 1, d)))
        x = combine(dsl.slice_(x, (0, 0, 0), (N, n // 2, d)), dsl.slice_(x, (0, n // 2, 0), (N, n // 2, d)))
    for r in rest:
        x = combine(x, r)
    return x


def _pow2_pieces(n: int) -> list[int]:
    """n as a sum of powers of two, largest first."""
    return [1 << i for i in reversed(range(n.bit_length())) if n >> i & 1]


def _pow2_slices(head: int, S: int):
    """The block schedule's slot pieces as (which, first, count), counts powers of two in descending order: which =
    None for ring slots first .. of the unmasked head, True for the ring's last S slots (from `first` of them),
    False for the step rows."""
    pieces, lo = [], 0
    for n in _pow2_pieces(head):
        pieces.append((None, lo, n))
        lo += n
    for which in (True, False):
        lo = 0
        for n in _pow2_pieces(S):
            pieces.append((which, lo, n))
            lo += n
    return sorted(pieces, key=lambda p: -p[2])  # stable: ring before step at equal counts


def _merge_fold(xs, combine):
    """Combine [N, n_i, d] tensors over all their slots into [N, 1, d], the n_i powers of two in descending order:
    the running result is halved down to the next tensor's slot count and combined with it (one chain of halvings
    for all of them instead of one per tensor), then halved to one slot."""
    def halve(x):
        N, n, d = x.shape
        return combine(dsl.slice_(x, (0, 0, 0), (N, n // 2, d)), dsl.slice_(x, (0, n // 2, 0), (N, n // 2, d)))

    acc = xs[0]
    for x in xs[1:]:
        while acc.shape[1] > x.shape[1]:
            acc = halve(acc)
        acc = combine(acc, x)
    while acc.shape[1] > 1:
        acc = halve(acc)
    return acc


def pool_pieces(parts):
    """pool_slots of parts whose slot counts are powers of two in descending order, reduced by one merged chain of
    halvings (_merge_fold) per sum or max."""
    scores = [z if ok is None else dsl.select(ok, z, _ABSENT) for _, z, ok in parts]
    values = [v if ok is None else dsl.select(ok, v, 0.0) for v, _, ok in parts]
    top = _merge_fold(scores, _max)
    weights = [dsl.exp(z - top) for z in scores]
    return (_merge_fold([w * v for w, v in zip(weights, values)], lambda a, b: a + b)
            / _merge_fold(weights, lambda a, b: a + b))


def pool_slots(parts):
    """Softmax pooling over the slots of `parts` [(values [N,n,d], scores [N,n,d], in_block [N,n,1] i1 or None:
    every slot in)]: [N,1,d]."""
    scores = [z if ok is None else dsl.select(ok, z, _ABSENT) for _, z, ok in parts]
    values = [v if ok is None else dsl.select(ok, v, 0.0) for v, _, ok in parts]
    top = None
    for z in scores:
        m = _fold(z, _max)
        top = m if top is None else _max(top, m)
    weights = [dsl.exp(z - top) for z in scores]

    def total(xs):
        acc = None
        for x in xs:
            s = _fold(x, lambda a, b: a + b)
            acc = s if acc is None else acc + s
        return acc

    return total([w * v for w, v in zip(weights, values)]) / total(weights)


def _fold_columns(x, width: int, combine):
    """Combine [N, n*width] over its n slots (column blocks of `width`) into [N, width]: halves pairwise (rank-2
    views, no copy), an odd slot out joining last."""
    rest = []
    while x.shape[1] > width:
        N, c = x.shape
        n = c // width
        if n % 2:
            rest.append(dsl.slice_(x, (0, c - width), (N, width)))
        h = n // 2 * width
        x = combine(dsl.slice_(x, (0, 0), (N, h)), dsl.slice_(x, (0, h), (N, h)))
    for r in rest:
        x = combine(x, r)
    return x


def pool_columns(parts, width: int, dim: int):
    """Softmax pooling of slot-major rows [(values [N, n*width], scores [N, n*width], in_block i1 same shape)]:
    [N, dim]. With width = 2*dim a slot gives channel c from column c or dim + c (its mask says which)."""
    scores = [dsl.select(ok, z, _ABSENT) for _, z, ok in parts]
    values = [dsl.select(ok, v, 0.0) for v, _, ok in parts]
    top = None
    for z in scores:
        m = _fold_columns(z, width, _max)
        top = m if top is None else _max(top, m)
    N = top.shape[0]
    if width != dim:  # one max per output channel over both halves
        top = _max(dsl.slice_(top, (0, 0), (N, dim)), dsl.slice_(top, (0, dim), (N, dim)))
    # weights per slot (and half) on [N, dim] column views against the one max: no [N, n, width] round trip of
    # the scores (a rank-3 <-> rank-2 reshape chain in one task made pypto 0.2.0's OoOSchedule fail at B >= 48,
    # head_dim 512) and no max repeated per slot (a concat: its assembles in one task failed the same way)
    terms = []
    for v, z in zip(values, scores):
        for c in range(0, z.shape[1], dim):
            w = dsl.exp(dsl.slice_(z, (0, c), (N, dim)) - top)
            terms.append((w * dsl.slice_(v, (0, c), (N, dim)), w))
    return _pairwise([a for a, _ in terms]) / _pairwise([b for _, b in terms])


def _pairwise(xs):
    """The sum of xs, added pairwise (depth log2 n)."""
    while len(xs) > 1:
        xs = [xs[i] + xs[i + 1] if i + 1 < len(xs) else xs[i] for i in range(0, len(xs), 2)]
    return xs[0]


def _halves(v, z, ok, dim: int, lo: int, n: int, overlap: bool, newer: bool):
    """The channel half of slots lo .. lo+n-1 of v/z [N, R, width]: with overlap [dim:] for the newer block, else
    [:dim]."""
    N = v.shape[0]
    col = dim if overlap and newer else 0
    return (dsl.slice_(v, (0, lo, col), (N, n, dim)), dsl.slice_(z, (0, lo, col), (N, n, dim)), ok)


def _entry_operands(op, dim: int):
    """compress_pool's entry operands prepared once, outside the loops: (norm_w [1, d], cos, sin, the rotation
    transposed in f32 [d, d] or None)."""
    norm_w, cos, sin, *rot = (T(v) for v in op.entry_of)
    rot_t = dsl.cast(dsl.transpose(rot[0], (1, 0)), "f32") if rot else None
    return dsl.reshape(norm_w, (1, dim)), cos, sin, rot_t


def _entry_of_row(op, row, first_pos, prepared):
    """The cache entry of one pooled row [1, 1, d] f32 (block start position `first_pos`, an index value) as
    vector ops alone, so it stays in the pooling's merge-scope task (a cube op there fails pypto 0.2.0's
    ExpandFunction): RMSNorm; RoPE on the [half, 2] lane pairs (the row's own cos/sin row of the tables); the
    rotation as row-broadcast products summed per output lane. Flash B = 64 S = 2 against the entry chain on all
    token rows after the pooling: index_compressor 116.2 -> 101.2 us, m = 4 111.8 -> 97.0, m = 128 127.9 -> 102.4."""
    norm_w, cos, sin, rot_t = prepared
    d, half = row.shape[-1], cos.shape[1]
    lanes = 2 * half
    x = dsl.reshape(row, (1, d))
    y = x * dsl.recip(dsl.sqrt(dsl.reduce(x * x, "sum", -1) / float(d) + op.eps.value.data)) * norm_w
    pairs = dsl.reshape(dsl.slice_(y, (0, d - lanes), (1, lanes)), (half, 2))
    a, b = dsl.slice_(pairs, (0, 0), (half, 1)), dsl.slice_(pairs, (0, 1), (half, 1))
    c = dsl.reshape(view(cos, (first_pos, 0), (1, half)), (half, 1))
    s = dsl.reshape(view(sin, (first_pos, 0), (1, half)), (half, 1))
    rotated = dsl.cast(dsl.reshape(dsl.concat([a * c - b * s, a * s + b * c], 1), (1, lanes)), "bf16")
    entry = rotated if d == lanes else dsl.concat([dsl.cast(dsl.slice_(y, (0, 0), (1, d - lanes)), "bf16"), rotated], 1)
    if rot_t is not None:  # entry @ R: lane j sums entry[i] * R[i, j] (R transposed: row j of rot_t)
        lane_sums = dsl.reduce(dsl.broadcast_to(dsl.cast(entry, "f32"), (d, d)) * rot_t, "sum", -1)
        entry = dsl.cast(dsl.reshape(lane_sums, (1, d)) * op.rotate_scale.value.data, "bf16")
    return dsl.reshape(entry, (1, 1, d))


def _entry_of_rows(op, pooled, B: int, S: int, ratio: int):
    """The cache entries of all token rows of the pooled [B, S, d] f32 (the schedules that pool per token, or
    in channel chunks): the op's RMSNorm, RoPE and rotation as their own ops, lowered by the passes after."""
    norm_w, cos, sin, *rot = (T(v) for v in op.entry_of)
    d = pooled.shape[-1]
    with dsl.token_dims((B, S)):
        first = dsl.to_tokens((dsl.reshape(T(op.start_pos), (B, 1)) + dsl.iota((B, S), 1)) // ratio * ratio)
        normed = dsl.rmsnorm(dsl.to_tokens(pooled), norm_w, op.eps.value.data, out="f32")
        entry = T(emit_op(RopeOp, [normed.value, cos.value, sin.value, first.value], [tensor_type((B * S, d), "bf16")],
                          {"inverse": bool_attr(False)}).results[0])
        if rot:
            entry = dsl.cast(dsl.matmul(entry, rot[0]) * op.rotate_scale.value.data, "bf16")
        return dsl.from_tokens(entry)


class _Schedule(RewritePattern):
    def __init__(self, schedule: str, pool_rows: int, chunk_rows: int, channel_chunk: int, fill_rows: int):
        self.schedule, self.pool_rows, self.chunk_rows = schedule, pool_rows, chunk_rows
        self.channel_chunk, self.fill_rows = channel_chunk, fill_rows

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: CompressPoolOp, rewriter: PatternRewriter):
        B, S, width = shape_of(op.values.type)
        ratio, dim = op.ratio.value.data, op.dim.value.data
        R = shape_of(op.kv_state.type)[1]
        blocks_whole = width == dim and R == ratio and S <= ratio  # a block is one ring row's R slots
        # overlap (m = 4): a ring of two blocks, each slot [older half | newer half]; block w-1's slots and block
        # w's earlier ones are whole blocks of the ring (a block starts at a multiple of ratio)
        pair = width == 2 * dim and R == 2 * ratio and S <= ratio
        schedule = self.schedule if self.schedule != "auto" else "block" if blocks_whole or pair else "token"
        if schedule == "block" and pair:
            with before(op):
                pooled = self._pair_block(op, B, S, ratio, dim)
            rewriter.replace(op, [], [pooled.value])
            return
        if schedule == "block" and not blocks_whole:
            raise PassError(f"{op_location(op)}: schedule-compressor{{schedule=block}}: needs a ring of one block "
                            f"without overlap and a step of at most {ratio} tokens (use schedule=token)")
        if schedule == "row" and S > ratio:
            raise PassError(f"schedule-compressor{{schedule=row}}: a step of {S} tokens may complete more than one "
                            f"block of {ratio} per batch row (use schedule=token)")
        with before(op):
            if schedule == "block":
                pooled = self._block(op, B, S, ratio, dim, math.gcd(dim, self.channel_chunk), self.fill_rows)
            elif schedule == "row":
                pooled = self._row(op, B, S, width, ratio, dim)
            else:
                pooled = self._token(op, B, S, width, ratio, dim, self.pool_rows, self.chunk_rows)
            if op.entry_of and dtype_of(pooled.value.type) != dtype_of(op.result.type):  # not in the pooling loop
                pooled = _entry_of_rows(op, pooled, B, S, ratio)
        rewriter.replace(op, [], [pooled.value])

    @staticmethod
    def _block(op, B, S, ratio, dim, dq, fill_rows: int):
        """One iteration per batch row; in it a loop over the blocks the row's step completes (a runtime count
        from start_pos: 0 or 1 for S <= ratio), whose body pools the block from views of the row's ring (slots
        0 .. k-1, k = start_pos mod ratio: the block's earlier positions) and step rows (0 .. ratio-k-1) in place
        and writes the entry at the completing token's row. A row completing nothing pools nothing."""
        loc = op_location(op)
        nq = dim // dq
        # the entry needs the whole row (its RMSNorm): in the loop unless the channels are chunked
        prepared = _entry_operands(op, dim) if op.entry_of and nq == 1 else None
        init = tile_full((B, S, dim), 0.0, "bf16" if prepared else "f32")
        # the zero fill in single-row tiles: every fill task is a predecessor of every pooling task (their
        # assembles are at runtime offsets), and pypto 0.2.0's AICPU resolves a finished task's successors on the
        # thread that owns its core, at a cost growing with the tile's rows times the pooling tasks: the 8 tiles of
        # 8 rows landed on one thread, which held the projections' successors behind them (flash m = 128 B = 64,
        # random starts: 132.1 -> 127.9 us whole channels, decode_hca 676.3 -> 663.8; 12 pooling tasks of 128
        # channels 179.2 -> 112.5 us)
        init.value.owner.attributes["tile_rows"] = IntegerAttr(fill_rows, i64)
        # in the loop below a row's step completes a block: k = sp mod ratio >= ratio - S, so ring slots
        # 0 .. ratio-S-1 are always the block's (no mask); only the last S ring slots (in when < k) and the S step
        # rows (in when < ratio - k) are masked, the masks of every row computed once from start_pos ([B, S, 1]:
        # per row [1, 128, 512] masks and selects were 64 tasks of 24 us)
        kb = dsl.reshape(T(op.start_pos), (B, 1)) % ratio
        slot = dsl.iota((B, S), 1)
        tail_in = dsl.reshape(slot + (ratio - S) < kb, (B, S, 1))  # ring slots ratio-S .. ratio-1
        step_in = dsl.reshape(slot < ratio - kb, (B, S, 1))  # positions sp .. the completing token's
        head = ratio - S
        body = Block(arg_types=[INDEX, init.value.type])
        b, acc = body.args
        with at_end(body, loc):
            sp = read(op.start_pos, (b,))
            first = floordiv_nonneg(sp, ratio)
            count = subi(floordiv_nonneg(addi(sp, S), ratio), first)  # blocks the step completes
            pool = Block(arg_types=[INDEX, acc.type])
            with at_end(pool, loc):
                # iteration j: channels q*dq .. of block first + j // nq (q = j mod nq): pooling is per channel, so
                # a block's chunks are iterations of their own, one task each, side by side on several cores, each
                # writing its columns of the completing token's row
                j = pool.args[0]
                w = addi(first, floordiv_nonneg(j, nq)) if nq > 1 else addi(first, j)
                c = muli(subi(j, muli(subi(w, first), nq)), dq) if nq > 1 else const(0)
                # power-of-two slot counts (pypto 0.2.0 SIM fails on an odd fold), largest first: the unmasked ring
                # slots 0 .. ratio-S-1, the ring's last S slots and the step rows (masked)
                parts = []
                for state, lo, n in _pow2_slices(head, S):
                    mask = None if state is None else view(tail_in if state else step_in, (b, lo, 0), (1, n, 1))
                    row = lo + head if state else lo  # a ring slot (the tail from slot head) or a step row
                    kv, sc = (op.kv_state, op.score_state) if state in (None, True) else (op.values, op.scores)
                    parts.append((view(kv, (b, row, c), (1, n, dq)), view(sc, (b, row, c), (1, n, dq)), mask))
                entry = pool_pieces(parts)
                if prepared:
                    entry = _entry_of_row(op, entry, muli(w, ratio), prepared)
                done = subi(muli(addi(w, 1), ratio), addi(sp, 1))  # the completing token's step row
                emit_op(scf.YieldOp, [[val(assemble(entry, pool.args[1], (b, done, c)))]], [])
            trips = muli(count, nq) if nq > 1 else count
            cond = emit_op(scf.ForOp, [const(0), trips, const(1), [acc]], [[acc.type]], regions=[Region(pool)])
            # a chunk's pooling as one merge scope: its fold levels' tile shapes otherwise split it into a chain of
            # tasks (flash m = 128 B = 64, whole channels: 174.2 -> 162.1 us at random starts, 259.6 -> 242.9
            # every row completing: 794 -> 474 tasks)
            cond.attributes["merge_scope"] = IntegerAttr(1, i64)
            emit_op(YieldOp, [[cond.results[0]]], [])
        loop = emit_op(ParallelOp, [const(0), const(B), [init.value]], [[init.value.type]],
                       {"rows": IntegerAttr(1, i64)}, regions=[Region(body)])
        return T(loop.results[0])

    @staticmethod
    def _pair_block(op, B, S, ratio, dim):
        """The block schedule of an overlapping compressor (ring of 2 blocks, slot = [older half | newer half]):
        one iteration per batch row, in it a loop over the blocks the row's step completes (a runtime count from
        start_pos: 0 or 1). A completing row pools block w-1's ratio ring slots (half [:dim]; absent for w = 0),
        block w's earlier ring slots (half [dim:]: slots 0 .. ratio-S-1 unmasked, the last S masked) and its step
        rows (half [dim:], masked), all views of the rings and the step in place: no gather, no copy of a ring."""
        loc = op_location(op)
        prepared = _entry_operands(op, dim) if op.entry_of else None
        init = tile_full((B, S, dim), 0.0, dtype_of(op.result.type))
        sp_ = dsl.reshape(T(op.start_pos), (B, 1))
        kb = sp_ % ratio
        slot = dsl.iota((B, S), 1)
        tail_in = dsl.reshape(slot + (ratio - S) < kb, (B, S, 1))  # block w's ring slots ratio-S .. ratio-1
        step_in = dsl.reshape(slot < ratio - kb, (B, S, 1))  # step rows up to the completing token's
        # block w-1 exists (w >= 1): its ring rows were written; for w = 0 they never were (may hold NaN)
        prev_in = dsl.reshape(dsl.iota((B, ratio), 1) * 0 + sp_ >= ratio, (B, ratio, 1))
        head = ratio - S
        body = Block(arg_types=[INDEX, init.value.type])
        b, acc = body.args
        with at_end(body, loc):
            sp = read(op.start_pos, (b,))
            first = floordiv_nonneg(sp, ratio)  # block w (when the step completes one)
            count = subi(floordiv_nonneg(addi(sp, S), ratio), first)
            pool = Block(arg_types=[INDEX, acc.type])
            with at_end(pool, loc):
                cur = muli(subi(first, muli(floordiv_nonneg(first, 2), 2)), ratio)  # block w's first ring slot
                prev = subi(const(ratio), cur)  # block w-1's
                parts = [(view(op.kv_state, (b, prev, 0), (1, ratio, dim)),
                          view(op.score_state, (b, prev, 0), (1, ratio, dim)),
                          view(prev_in, (b, 0, 0), (1, ratio, 1)))]
                for state, lo, n in _pow2_slices(head, S):
                    mask = None if state is None else view(tail_in if state else step_in, (b, lo, 0), (1, n, 1))
                    if state is None or state:
                        row = addi(cur, lo + head if state else lo)
                        kv, sc = op.kv_state, op.score_state
                    else:
                        row, kv, sc = lo, op.values, op.scores
                    parts.append((view(kv, (b, row, dim), (1, n, dim)), view(sc, (b, row, dim), (1, n, dim)), mask))
                parts.sort(key=lambda p: -shape_of(p[0].value.type)[1])  # stable: block w-1 first
                entry = pool_pieces(parts)
                if prepared:
                    entry = _entry_of_row(op, entry, muli(first, ratio), prepared)
                done = subi(muli(addi(first, 1), ratio), addi(sp, 1))  # the completing token's step row
                emit_op(scf.YieldOp, [[val(assemble(entry, pool.args[1], (b, done, 0)))]], [])
            cond = emit_op(scf.ForOp, [const(0), count, const(1), [acc]], [[acc.type]], regions=[Region(pool)])
            cond.attributes["merge_scope"] = IntegerAttr(1, i64)
            # a step of S <= ratio tokens completes at most one block: what the memory estimate counts as its calls
            cond.attributes["max_trips"] = IntegerAttr(1, i64)
            emit_op(YieldOp, [[cond.results[0]]], [])
        loop = emit_op(ParallelOp, [const(0), const(B), [init.value]], [[init.value.type]],
                       {"rows": IntegerAttr(1, i64)}, regions=[Region(body)])
        return T(loop.results[0])

    @staticmethod
    def _row(op, B, S, width, ratio, dim):
        overlap = width == 2 * dim
        R = shape_of(op.kv_state.type)[1]
        sp = dsl.reshape(T(op.start_pos), (B, 1))
        first = (sp // ratio) * ratio  # the block the row's step completes starts here (S <= ratio: one block)
        # the rings as [B, R*width] matrices (kernel parameters reshaped in place): slot j is columns j*width ..;
        # which columns take part, by column ranges from start_pos: the block's positions first .. sp-1 are ring
        # slots from (first mod R), its half [dim:] with overlap; block w-1's (overlap, w >= 1) the other m slots'
        # half [:dim]
        col = dsl.iota((B, R * width), 1)
        new_lo = (first % R) * width
        ok = (col >= new_lo) & (col < new_lo + (sp - first) * width)
        if overlap:
            old_lo = ((first + ratio) % R) * width
            ok = (ok & (col % width >= dim)) | (
                (col >= old_lo) & (col < old_lo + ratio * width) & (col % width < dim) & (first >= ratio))
        ring = (dsl.reshape(T(op.kv_state), (B, R * width)), dsl.reshape(T(op.score_state), (B, R * width)), ok)
        scol = dsl.iota((B, S * width), 1)
        step_ok = scol < (first + ratio - sp) * width  # the step's positions up to the completing token's
        if overlap:
            step_ok = step_ok & (scol % width >= dim)
        step = (dsl.reshape(T(op.values), (B, S * width)), dsl.reshape(T(op.scores), (B, S * width)), step_ok)
        pooled = pool_columns([ring, step], width, dim)
        s = dsl.iota((B, S, 1), 1)
        out = dsl.broadcast_to(dsl.reshape(pooled, (B, 1, dim)), (B, S, dim))
        return dsl.select(s.eq(dsl.reshape(first + ratio - 1 - sp, (B, 1, 1))), out, 0.0)  # the completing token

    @staticmethod
    def _token(op, B, S, width, ratio, dim, pool_rows: int, chunk_rows: int):
        overlap = width == 2 * dim
        R = shape_of(op.kv_state.type)[1]
        T_ = B * S
        with dsl.token_dims((B, S)):
            # the window ids as [B, S*R] matrices (column s*R + r: token s, slot r), reshaped to [B, S, R] once:
            # pypto 0.2.0's cost model charges a rank-3 op per leading row (an int32 op on [64, 2, 8]: 2-5k
            # cycles, on [64, 16] ~60), and ~40 of them made one 36.5 us task (flash B = 64)
            sp = dsl.reshape(T(op.start_pos), (B, 1))
            col = dsl.iota((B, S * R), 1)
            p = sp + col // R - (R - 1) + col % R  # window positions, oldest first
            local = dsl.reshape(dsl.select(p >= sp, p - sp + R, dsl.maximum(p, 0) % R), (B, S, R))
            t = sp + dsl.iota((B, S), 1)
            v = dsl.gather_pool([T(op.kv_state), T(op.values)], local, (T_, R))
            z = dsl.gather_pool([T(op.score_state), T(op.scores)], local, (T_, R))
            # only a completing token's result is kept, and its positions before the older half are >= 0: just
            # that half (overlap, block 0) may hold absent slots
            if overlap:
                h = R // 2
                present = dsl.reshape(dsl.to_tokens(dsl.reshape(p >= 0, (B, S, R))), (T_, R, 1))
                parts = [_halves(v, z, dsl.slice_(present, (0, 0, 0), (T_, h, 1)), dim, 0, h, True, False),
                         _halves(v, z, None, dim, h, h, True, True)]
                pooled = pool_slots(parts)
            else:
                pooled = pool_slots([_halves(v, z, None, dim, 0, R, False, False)])
            # only a completing token keeps its entry: selected on the pooling's row groups (a select of the
            # whole [B, S, d] after them was its own 2 tasks of 11.8 us on flash m = 4's critical path)
            completes = dsl.reshape(dsl.to_tokens(((t + 1) % ratio).eq(0)), (T_, 1, 1))
            pooled = dsl.select(completes, pooled, 0.0)
            cap_tile_rows(pooled, [v, z, completes] + ([present] if overlap else []), pool_rows, chunk_rows)
            return dsl.from_tokens(dsl.reshape(pooled, (T_, dim)))


@register
@dataclass(frozen=True)
class ScheduleCompressor(PatternPass):
    name = "schedule-compressor"
    summary = "compress_pool -> per-row pooling of the completed block from the state rings in place (or per token)"
    tolerance = 1e-2
    schedule: str = "auto"
    pool_rows: int = 4  # token schedule: row cap of the pooling's vector tiles (a large value: the target's tiles)
    chunk_rows: int = 8  # token schedule: token rows per chunk of the pooling's loop (a large value: parallelize-tokens' rows)
    # block schedule: channels per pooling task (its gcd with d; a multiple of d: all), each chunk an iteration of
    # the block's loop writing its columns. Flash m = 128 B = 64 S = 2 at random starts (single-row zero fill):
    # all 127.9, 256 114.6, 128 112.5 (a [1, 128, 128] piece per tile: 12 copies per task, 17 us), 64 142.6 us;
    # but decode_hca (one program) all 663.8, 128 692.0: all by default
    channel_chunk: int = 4096
    fill_rows: int = 1  # block schedule: rows of the pooled buffer's zero-fill tiles (`tile_rows`; see _block)
    option_choices = {"schedule": SCHEDULES}
    option_ranges = {"fill_rows": (1, 1 << 16)}

    def pattern(self):
        return _Schedule(self.schedule, self.pool_rows, self.chunk_rows, self.channel_chunk, self.fill_rows)
