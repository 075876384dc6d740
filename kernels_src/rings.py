"""Position rings: the one mechanism behind the attention window, the compressor state and the compressed caches.

A ring of R rows per batch row holds position p at slot p mod R. A step brings S new rows (positions
start_pos[b] + s). Reads are per token and per position: token t reads position p from the step row p - start_pos
when p >= start_pos (p <= t always, so never a later token of the same step), else from the ring. Writes happen
after the reads, as a new value of the ring (old ring + step rows overlaid at their slots), so no token of a step
ever sees a row its predecessors overwrote (pypto-lib#492). S may exceed R (a prefill chunk): positions before
the step are read from the ring only when they are within R of the token, the rest from the step, and the ring
after the step keeps the newest R positions.

Reads gather from one pool [B * (n_1 + n_2 + ...), ...] made of per-batch-row blocks, so a row id is
`local + b * width` and each batch row only ever reads its own rows. Writes are `scatter_rows` of the step's rows
(only those that land: the newest R positions of a ring, the completing tokens of a cache) at row ids
`b * R + slot` of the table; every other row keeps its value, so a step's update costs its S rows, not the table.

Packed layout (`start_pos` is a PackedRows: position_ids [T], cu_seqlens [B+1]): the same definitions per token,
with each token's row and position from the metadata instead of (b, start_pos[b] + s). Reads gather from one pool
[every row's ring rows (B*R) | the step's T token rows]: position p of token t's row is the step token
t - (pos[t] - p) when p is not before the row's first position in the step (rows are contiguous, in position
order), else ring row row[t]*R + p mod R. Writes scatter a token's row to its row's slot when it is among its
row's newest R positions (caches: when it completes a block). A row with 0 tokens keeps its rows unchanged.
"""
from attnc.ir.dsl import (
    PackedRows, broadcast_to, concat, gather_pool, gather_rows, iota, maximum, minimum, reshape, scatter_rows, select,
    to_tokens, token_positions,
)


def window_positions(cfg, start_pos, ring: int, span: int):
    """For every token t: local ids of positions t-span+1 .. t (oldest first) in a [ring | step] block, and their
    validity (p >= 0). Requires ring >= span - 1 so that every earlier position of the span is still in the ring."""
    assert ring >= span - 1, (ring, span)
    B, S = cfg["batch"], cfg["seq"]
    t = reshape(token_positions(start_pos, S), (B, S, 1))
    sp = reshape(start_pos, (B, 1, 1))
    p = t - (span - 1) + iota((B, S, span), 2)
    local = select(p >= sp, p - sp + ring, maximum(p, 0) % ring)
    return local, p >= 0


def ring_window(cfg, old, step, start_pos, span: int):
    """Rows of positions t-span+1 .. t for every token: [T, span, ...] and validity [T, span]."""
    T = cfg["tokens"]
    if isinstance(start_pos, PackedRows):
        return packed_ring_window(old, step, start_pos, span)
    local, valid = window_positions(cfg, start_pos, old.shape[1], span)
    return gather_pool([old, step], local, (T, span)), to_tokens(valid)


def dense_rows(length: int):
    """Row ids of slots [B, ...] of a dense per-row table [B, length, ...]: b * length + slot (`row`: each slot's
    batch row when it is not the leading index, e.g. the packed layout's per-token rows)."""
    return lambda slot, row=None: (iota(slot.shape, 0) if row is None else row) * length + slot


def ring_store(cfg, old, step, start_pos, rows_of=None, length: int | None = None):
    """The ring after the step: token s of row b (position p = start_pos[b] + s) is stored at slot p mod R when it
    is among the row's newest R positions (s >= S - R), so slot j holds the newest position p with p mod R == j.
    `rows_of(slot [B, S])` gives the table row ids of the slots (default: the dense [B, R, ...] layout; a paged
    cache maps them through its block table, see paged.py, and gives the ring's `length` R)."""
    B, S, R = cfg["batch"], cfg["seq"], length or old.shape[1]
    if isinstance(start_pos, PackedRows):
        return packed_ring_store(old, step, start_pos, R, rows_of)
    s = iota((B, S), 1)
    p = reshape(start_pos, (B, 1)) + s
    ids = select(s >= S - R, (rows_of or dense_rows(R))(p % R), -1)
    return scatter_rows(old, step, ids)


def store_completed(cfg, cache, entries, start_pos, ratio: int, rows_of=None, length: int | None = None):
    """The compressed cache after the step: the token at position p = (w+1)*ratio - 1 completes block w and stores
    its candidate entry (`entries` [B, S, ...], one per token) at slot w < N; every other slot keeps its value.
    `rows_of` and `length` (N) as in ring_store."""
    B, S, N = cfg["batch"], cfg["seq"], length or cache.shape[1]
    if isinstance(start_pos, PackedRows):
        return packed_store_completed(cache, entries, start_pos, ratio, N, rows_of)
    p = reshape(start_pos, (B, 1)) + iota((B, S), 1)
    w = (p + 1) // ratio - 1
    completes = ((p + 1) % ratio).eq(0) & (w < N)
    slot = maximum(minimum(w, N - 1), 0)  # a slot id for every token (only completing ones are stored)
    return scatter_rows(cache, entries, select(completes, (rows_of or dense_rows(N))(slot), -1))


# -------------------------------------------------------------------------------------------------- packed layout


def _row_major(table):
    """[B, n, ...] -> [B*n, ...]: row b's slot j is row b*n + j."""
    return reshape(table, (table.shape[0] * table.shape[1], *table.shape[2:]))


def stacked_pool(tables):
    """Row-major tables [n_i, ...] stacked into one [sum n_i, ...] pool (as one [1, sum n_i, ...] block, the form
    the dense pools have, which pypto 0.2.0 gathers from without splitting it into ragged tiles)."""
    blocks = [reshape(t, (1, *t.shape)) for t in tables]
    stacked = concat(blocks, axis=1)
    return reshape(stacked, stacked.shape[1:])


def packed_window_ids(rows: PackedRows, ring: int, span: int, step_base: int, rows_of=None):
    """For every token t (values [T, span], not yet token rows): ids of positions t-span+1 .. t (oldest first) in a
    pool [rings of every row (B*ring rows) | ... | the step's token rows from `step_base`], and their validity.
    `rows_of`: the rings are a paged pool, ring slots mapped to its rows by it (paged.py)."""
    assert ring >= span - 1, (ring, span)
    T = rows.tokens
    t = reshape(rows.positions, (T, 1))
    p = t - (span - 1) + iota((T, span), 1)
    in_step = reshape(rows.token_index(), (T, 1)) + (p - t) + step_base  # the step token holding position p
    row = reshape(rows.token_row(), (T, 1))
    in_ring = row * ring + maximum(p, 0) % ring if rows_of is None else rows_of(maximum(p, 0) % ring, row)
    return select(p >= reshape(rows.row_first_position(), (T, 1)), in_step, in_ring), p >= 0


def packed_ring_window(old, step, rows: PackedRows, span: int):
    """ring_window of the packed layout: old [B, R, ...], step [T, ...] -> [T, span, ...] rows and [T, span]."""
    ids, valid = packed_window_ids(rows, old.shape[1], span, old.shape[0] * old.shape[1])
    return gather_rows(stacked_pool([_row_major(old), step]), to_tokens(ids)), to_tokens(valid)


def packed_ring_store(old, step, rows: PackedRows, ring: int, rows_of=None):
    """ring_store of the packed layout (step [T, ...]): token t is stored at its row's slot pos[t] mod R when it is
    among its row's newest R positions of the step."""
    in_row = rows.token_index() - rows.row_first_token()
    slot = rows.positions % ring
    ids = select(in_row >= rows.token_row_length() - ring, (rows_of or dense_rows(ring))(slot, rows.token_row()), -1)
    return scatter_rows(old, step, ids)


def packed_store_completed(cache, entries, rows: PackedRows, ratio: int, n: int, rows_of=None):
    """store_completed of the packed layout (entries [T, ...]): the token at position (w+1)*ratio - 1 stores its
    entry at slot w < n of its row."""
    p = rows.positions
    w = (p + 1) // ratio - 1
    completes = ((p + 1) % ratio).eq(0) & (w < n)
    slot = maximum(minimum(w, n - 1), 0)
    return scatter_rows(cache, entries, select(completes, (rows_of or dense_rows(n))(slot, rows.token_row()), -1))


def row_entries(cfg, table, start_pos, rows_of=None, length: int | None = None):
    """Every row of each token's batch row of `table` [B, N, ...], gathered as token rows [T, N, ...]. `rows_of`:
    the table is a paged pool of `length` slots per row, slots mapped to pool rows by it (paged.py), gathered the
    same way straight from the pool."""
    B, S, T, N = cfg["batch"], cfg["seq"], cfg["tokens"], table.shape[1] if rows_of is None else length
    if rows_of is not None:
        if isinstance(start_pos, PackedRows):
            row = broadcast_to(reshape(start_pos.token_row(), (T, 1)), (T, N))
            return gather_rows(_row_major(table), to_tokens(rows_of(iota((T, N), 1), row)))
        # each batch row's ids once ([B, N]: pypto 0.2.0 gathers with at most 2-D indices), then per token
        ids = broadcast_to(reshape(rows_of(iota((B, N), 1)), (B, 1, N)), (B, S, N))
        return gather_rows(_row_major(table), to_tokens(ids))
    if isinstance(start_pos, PackedRows):
        ids = reshape(start_pos.token_row(), (T, 1)) * N + iota((T, N), 1)
        return gather_rows(_row_major(table), to_tokens(ids))
    return gather_pool([table], iota((B, S, N), 2), (T, N))
