"""Position rings: the one mechanism behind the attention window, the compressor state and the compressed caches.

A ring of R rows per batch row holds position p at slot p mod R. A step brings S new rows (positions
start_pos[b] + s). Reads are per token and per position: token t reads position p from the step row p - start_pos
when p >= start_pos (p <= t always, so never a later token of the same step), else from the ring. Writes happen
after the reads, as a new value of the ring (old ring + step rows overlaid at their slots), so no token of a step
ever sees a row its predecessors overwrote (pypto-lib#492). S may exceed R (a prefill chunk): positions before
the step are read from the ring only when they are within R of the token, the rest from the step, and the ring
after the step keeps the newest R positions.

All tables are gathered from one pool [B * (n_1 + n_2 + ...), ...] made of per-batch-row blocks, so a row id is
`local + b * width` and each batch row only ever reads its own rows.

Packed layout (`start_pos` is a PackedRows: position_ids [T], cu_seqlens [B+1]): the same definitions per token,
with each token's row and position from the metadata instead of (b, start_pos[b] + s). The pool is
[every row's ring rows (B*R) | the step's T token rows]; position p of token t's row is the step token
t - (pos[t] - p) when p is not before the row's first position of the step (rows are contiguous, in position
order), else the ring row row[t]*R + p mod R. A row with 0 tokens keeps its ring and cache unchanged.
"""
from attnc.ir.dsl import (
    PackedRows, batch_rows, concat, gather_pool, gather_rows, iota, maximum, reshape, select, to_tokens,
    token_positions,
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


def ring_store(cfg, old, step, start_pos):
    """The ring after the step: slot j holds the newest position p <= start_pos + S - 1 with p mod R == j."""
    if isinstance(start_pos, PackedRows):
        return packed_ring_store(old, step, start_pos)
    B, S, R = cfg["batch"], cfg["seq"], old.shape[1]
    last = reshape(start_pos, (B, 1)) + (S - 1)
    slot = iota((B, R), 1)
    p = last - (last - slot + R) % R
    sp = reshape(start_pos, (B, 1))
    local = select(p >= sp, p - sp + R, slot)
    return gather_pool([old, step], local, (B, R))


def store_completed(cfg, cache, entries, start_pos, ratio: int):
    """The compressed cache after the step: slot w takes the entry of the step token that completed block w
    (position (w+1)*ratio - 1), every other slot keeps its value. `entries` [B, S, ...] holds one candidate per
    token; only completing tokens' candidates are ever stored."""
    if isinstance(start_pos, PackedRows):
        return packed_store_completed(cache, entries, start_pos, ratio)
    B, S, N = cfg["batch"], cfg["seq"], cache.shape[1]
    sp = reshape(start_pos, (B, 1))
    s_done = (iota((B, N), 1) + 1) * ratio - 1 - sp  # the step index that completes slot w, if any
    local = select((s_done >= 0) & (s_done < S), s_done + N, iota((B, N), 1))
    return gather_pool([cache, entries], local, (B, N))


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


def packed_window_ids(rows: PackedRows, ring: int, span: int, step_base: int):
    """For every token t (values [T, span], not yet token rows): ids of positions t-span+1 .. t (oldest first) in a
    pool [rings of every row (B*ring rows) | ... | the step's token rows from `step_base`], and their validity."""
    assert ring >= span - 1, (ring, span)
    T = rows.tokens
    t = reshape(rows.positions, (T, 1))
    p = t - (span - 1) + iota((T, span), 1)
    in_step = reshape(rows.token_index(), (T, 1)) + (p - t) + step_base  # the step token holding position p
    in_ring = reshape(rows.token_row(), (T, 1)) * ring + maximum(p, 0) % ring
    return select(p >= reshape(rows.row_first_position(), (T, 1)), in_step, in_ring), p >= 0


def packed_ring_window(old, step, rows: PackedRows, span: int):
    """ring_window of the packed layout: old [B, R, ...], step [T, ...] -> [T, span, ...] rows and [T, span]."""
    ids, valid = packed_window_ids(rows, old.shape[1], span, old.shape[0] * old.shape[1])
    return gather_rows(stacked_pool([_row_major(old), step]), to_tokens(ids)), to_tokens(valid)


def _row_facts(rows: PackedRows):
    """[B, 1] token count, first token index and first position of every row in this step."""
    B = rows.rows
    return (reshape(rows.row_lengths(), (B, 1)), reshape(rows.row_starts(), (B, 1)),
            reshape(rows.row_start_positions(), (B, 1)))


def packed_ring_store(old, step, rows: PackedRows):
    """ring_store of the packed layout: slot j of row b takes the newest position p of the row with p mod R == j
    when that position is one of this step's tokens of row b (among its newest R), else keeps its row."""
    B, R = old.shape[0], old.shape[1]
    n, first_token, first_pos = _row_facts(rows)
    last = first_pos + n - 1
    slot = iota((B, R), 1)
    p = last - (last - slot + R) % R
    ids = select((n > 0) & (p >= first_pos), first_token + (p - first_pos) + B * R, batch_rows(slot, R))
    return gather_rows(stacked_pool([_row_major(old), step]), ids)


def packed_store_completed(cache, entries, rows: PackedRows, ratio: int):
    """store_completed of the packed layout: slot w of row b takes the entry of row b's step token at position
    (w+1)*ratio - 1, if the step has it; entries [T, ...]."""
    B, N = cache.shape[0], cache.shape[1]
    n, first_token, first_pos = _row_facts(rows)
    w = iota((B, N), 1)
    s_done = (w + 1) * ratio - 1 - first_pos  # the index within the row of the token completing slot w
    done = (n > 0) & (s_done >= 0) & (s_done < n)
    ids = select(done, first_token + s_done + B * N, batch_rows(w, N))
    return gather_rows(stacked_pool([_row_major(cache), entries]), ids)


def row_entries(cfg, table, start_pos):
    """Every row of each token's batch row of `table` [B, N, ...], gathered as token rows [T, N, ...]."""
    B, S, T, N = cfg["batch"], cfg["seq"], cfg["tokens"], table.shape[1]
    if isinstance(start_pos, PackedRows):
        ids = reshape(start_pos.token_row(), (T, 1)) * N + iota((T, N), 1)
        return gather_rows(_row_major(table), to_tokens(ids))
    return gather_pool([table], iota((B, S, N), 2), (T, N))
