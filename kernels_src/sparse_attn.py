"""Stages sparse_attn and sparse_attn_core: per-token window + compressed sparse attention with sinks,
de-rotation and the grouped output projection."""
from attnc.ir.dsl import (
    In, PackedRows, cache_attention, concat, from_tokens, gather_rows, iota, matmul, minimum, reshape, rope, select,
    slice_, sparse_attention, stage, to_tokens, token_positions,
)

from .configs import with_compress_ratio
from .paged import paged_rows
from .rings import packed_window_ids, stacked_pool

_CORE_PARAMS = dict(
    q=In("batch", "seq", "n_heads", "head_dim"),
    kv_ring=In("batch", "window", "head_dim"),
    kv_step=In("batch", "seq", "head_dim"),
    kv_cmp=In("batch", "n_cmp", "head_dim"),
    cmp_idx=In("batch", "seq", "cmp_topk", dtype="i32"),
    start_pos=In("batch", dtype="i32"),
    attn_sink=In("n_heads", dtype="f32"),
)


def attention_core(cfg, q, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos, attn_sink, ring_table=None, cmp_table=None):
    """Per-head attention output [B,S,H,hd] bf16 of every token t = start_pos[b]+s over the window t-W+1 .. t (the
    ring for earlier positions, the step's own rows otherwise, never a later token) and, in a layer with
    compressed entries (m > 0), the entries w < min(NCMP, floor((t+1)/m)): those listed in `cmp_idx` (distinct
    ids in any order, -1 anywhere for none), or every entry when `cmp_idx` is None (HCA). Visibility comes from each token's own position.
    `ring_table` / `cmp_table`: kv_ring / kv_cmp are block pools read through these block tables (paged.py)."""
    m = cfg["compress_ratio"]
    if isinstance(start_pos, PackedRows):
        return packed_attention_core(cfg, q, kv_ring, kv_step, kv_cmp if m > 0 else None, cmp_idx, start_pos,
                                     attn_sink, None if ring_table is None else paged_rows(cfg, ring_table),
                                     None if cmp_table is None else paged_rows(cfg, cmp_table))
    extra = dict(cache=kv_cmp, index=cmp_idx, ratio=m) if m > 0 else {}
    if ring_table is not None:
        extra.update(ring_table=ring_table, window=cfg["window"])
    if cmp_table is not None and m > 0:
        extra.update(cache_table=cmp_table, entries=cfg["n_cmp"])
    return cache_attention(q, attn_sink, start_pos, kv_ring, kv_step, cfg["softmax_scale"],
                           out="bf16", **extra)


def packed_attention_core(cfg, q, kv_ring, kv_step, kv_cmp, cmp_idx, rows: PackedRows, attn_sink,
                          ring_rows_of=None, cmp_rows_of=None):
    """attention_core of the packed layout (q [T,H,hd], kv_step [T,hd], cmp_idx [T,K]): the same keys in the same
    order as cache_attention's definition (window oldest first, then the compressed entries), gathered per token
    from [every row's ring | the step's rows | every row's cache] with each token's row and position, and
    attended by sparse_attention — the generic per-token path (schedule-attention reads batch-major tables).
    `ring_rows_of` / `cmp_rows_of`: kv_ring / kv_cmp are paged pools, slots mapped to pool rows by these (paged.py)."""
    T, W, hd = rows.tokens, cfg["window"], kv_ring.shape[2]
    ring_rows = kv_ring.shape[0] * kv_ring.shape[1]  # B * W dense, every pool row paged
    ids, valid = packed_window_ids(rows, W, W, ring_rows, ring_rows_of)
    tables = [reshape(kv_ring, (ring_rows, hd)), kv_step]
    if kv_cmp is not None:
        m, N = cfg["compress_ratio"], cfg["n_cmp"]
        t = reshape(rows.positions, (T, 1))
        listed = cmp_idx if cmp_idx is not None else iota((T, N), 1)
        complete = minimum((t + 1) // m, N)  # entries w < complete are visible to token t
        ok = (listed >= 0) & (listed < complete)  # any order, -1 anywhere
        row = reshape(rows.token_row(), (T, 1))
        cache_ids = (select(ok, listed, 0) + (row * N + (ring_rows + T)) if cmp_rows_of is None else
                     cmp_rows_of(select(ok, listed, 0), row) + (ring_rows + T))
        ids = concat([ids, cache_ids], axis=1)
        valid = concat([valid, ok], axis=1)
        tables.append(reshape(kv_cmp, (kv_cmp.shape[0] * kv_cmp.shape[1], hd)))
    keys = gather_rows(stacked_pool(tables), to_tokens(ids))
    o = sparse_attention(to_tokens(q), keys, to_tokens(valid), attn_sink, cfg["softmax_scale"], out="bf16")
    return from_tokens(o)


def _core_stage(cfg, q, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos, attn_sink):
    """Attention core only: per-head output before de-rotation, [B,S,H,hd] bf16."""
    return {"core": attention_core(cfg, q, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos, attn_sink)}


_core_stage.__annotations__ = dict(_CORE_PARAMS)
stage("sparse_attn_core", outputs=("core",))(_core_stage)


def _hca_core_stage(cfg, q, kv_ring, kv_step, kv_cmp, start_pos, attn_sink):
    """Attention core of an HCA layer: window + every complete ratio-128 entry (no index list), [B,S,H,hd] bf16."""
    return {"core": attention_core(cfg, q, kv_ring, kv_step, kv_cmp, None, start_pos, attn_sink)}


_hca_core_stage.__annotations__ = {k: v for k, v in _CORE_PARAMS.items() if k != "cmp_idx"}
stage("hca_attn_core", outputs=("core",), configure=lambda cfg: with_compress_ratio(cfg, 128))(_hca_core_stage)


def _full_stage(cfg, q, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos, attn_sink, rope_cos, rope_sin, wo_a, wo_b):
    """Sparse attention with sinks, de-rotation at t, grouped projection wo_a then wo_b: out [B,S,D] bf16."""
    o = attention_core(cfg, q, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos, attn_sink)
    return {"out": output_projection(cfg, o, start_pos, rope_cos, rope_sin, wo_a, wo_b)}


def output_projection(cfg, o, start_pos, rope_cos, rope_sin, wo_a, wo_b):
    """Per-head attention output [B,S,H,hd] -> de-rotated at t -> grouped wo_a -> wo_b: [B,S,D] bf16."""
    B, S, T, G = cfg["batch"], cfg["seq"], cfg["tokens"], cfg["o_groups"]
    o = to_tokens(o)
    K, OL = cfg["group_in"], cfg["o_lora_rank"]
    pos = to_tokens(token_positions(start_pos, S))
    o = reshape(rope(o, rope_cos, rope_sin, pos, out="bf16", inverse=True), (T, G * K))
    # group g = heads g*H/G .. (g+1)*H/G-1 (contiguous), each through its own wo_a[g]: rows g*K.. of wo_a
    # flattened (a parameter reshaped whole is its buffer in place; a reshaped slice of it would be a copy)
    wo = reshape(wo_a, (G * K, OL))
    z = concat([matmul(slice_(o, (0, g * K), (T, K)), slice_(wo, (g * K, 0), (K, OL)), out="bf16", side_by_side=G)
                for g in range(G)], axis=1)
    return from_tokens(matmul(z, wo_b, out="bf16"))


_full_stage.__annotations__ = dict(
    _CORE_PARAMS,
    rope_cos=In("max_pos", "rope_half", dtype="f32"),
    rope_sin=In("max_pos", "rope_half", dtype="f32"),
    wo_a=In("o_groups", "group_in", "o_lora_rank"),
    wo_b=In("o_cat", "dim"),
)
stage("sparse_attn", outputs=("out",))(_full_stage)
