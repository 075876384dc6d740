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
"""
from attnc.ir.dsl import gather_pool, iota, maximum, minimum, reshape, scatter_rows, select, to_tokens, token_positions


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
    local, valid = window_positions(cfg, start_pos, old.shape[1], span)
    return gather_pool([old, step], local, (T, span)), to_tokens(valid)


def dense_rows(length: int):
    """Row ids of slots [B, ...] of a dense per-row table [B, length, ...]: b * length + slot."""
    return lambda slot: iota(slot.shape, 0) * length + slot


def ring_store(cfg, old, step, start_pos, rows_of=None):
    """The ring after the step: token s of row b (position p = start_pos[b] + s) is stored at slot p mod R when it
    is among the row's newest R positions (s >= S - R), so slot j holds the newest position p with p mod R == j.
    `rows_of(slot [B, S])` gives the table row ids of the slots (default: the dense [B, R, ...] layout; a paged
    cache maps them through its block table, see paged.py)."""
    B, S, R = cfg["batch"], cfg["seq"], cfg["window"] if rows_of else old.shape[1]
    s = iota((B, S), 1)
    p = reshape(start_pos, (B, 1)) + s
    ids = select(s >= S - R, (rows_of or dense_rows(R))(p % R), -1)
    return scatter_rows(old, step, ids)


def store_completed(cfg, cache, entries, start_pos, ratio: int, rows_of=None):
    """The compressed cache after the step: the token at position p = (w+1)*ratio - 1 completes block w and stores
    its candidate entry (`entries` [B, S, ...], one per token) at slot w < N; every other slot keeps its value.
    `rows_of` as in ring_store."""
    B, S, N = cfg["batch"], cfg["seq"], cfg["n_cmp"] if rows_of else cache.shape[1]
    p = reshape(start_pos, (B, 1)) + iota((B, S), 1)
    w = (p + 1) // ratio - 1
    completes = ((p + 1) % ratio).eq(0) & (w < N)
    slot = maximum(minimum(w, N - 1), 0)  # a slot id for every token (only completing ones are stored)
    return scatter_rows(cache, entries, select(completes, (rows_of or dense_rows(N))(slot), -1))
