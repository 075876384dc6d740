"""Position rings: the one mechanism behind the attention window, the compressor state and the compressed caches.

A ring of R rows per batch row holds position p at slot p mod R. A step brings S new rows (positions
start_pos[b] + s). Reads are per token and per position: token t reads position p from the step row p - start_pos
when p >= start_pos (p <= t always, so never a later token of the same step), else from the ring. Writes happen
after the reads, as a new value of the ring (old ring + step rows overlaid at their slots), so no token of a step
ever sees a row its predecessors overwrote (pypto-lib#492).

All tables are gathered from one pool [B * (n_1 + n_2 + ...), ...] made of per-batch-row blocks, so a row id is
`local + b * width` and each batch row only ever reads its own rows.
"""
from attnc.ir.dsl import gather_pool, iota, maximum, reshape, select, token_positions


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
    return gather_pool([old, step], local, (T, span)), reshape(valid, (T, span))


def ring_store(cfg, old, step, start_pos):
    """The ring after the step: slot j holds the newest position p <= start_pos + S - 1 with p mod R == j."""
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
    B, S, N = cfg["batch"], cfg["seq"], cache.shape[1]
    sp = reshape(start_pos, (B, 1))
    s_done = (iota((B, N), 1) + 1) * ratio - 1 - sp  # the step index that completes slot w, if any
    local = select((s_done >= 0) & (s_done < S), s_done + N, iota((B, N), 1))
    return gather_pool([cache, entries], local, (B, N))
