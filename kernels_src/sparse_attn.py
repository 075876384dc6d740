"""Stages sparse_attn and sparse_attn_core: per-token window + compressed sparse attention with sinks,
de-rotation and the grouped output projection."""
from attnc.ir.dsl import (
    In, concat, full, gather_rows, iota, matmul, maximum, minimum, reshape, rope, select, slice_,
    sparse_attention, stage, token_positions, broadcast_to, cast,
)

_CORE_PARAMS = dict(
    q=In("batch", "seq", "n_heads", "head_dim"),
    kv_ring=In("batch", "window", "head_dim"),
    kv_step=In("batch", "seq", "head_dim"),
    kv_cmp=In("batch", "n_cmp", "head_dim"),
    cmp_idx=In("batch", "seq", "cmp_topk", dtype="i32"),
    start_pos=In("batch", dtype="i32"),
    attn_sink=In("n_heads", dtype="f32"),
)


def visible_keys(cfg, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos):
    """Gather, for every token t = start_pos[b] + s, its candidate keys [T, N, hd] and their validity [T, N].

    Candidates: the WIN ring slots, the step's S rows, the KC listed compressed entries. Visibility is derived
    per token from its own position only: window positions max(0, t-WIN+1)..t (ring for p < start_pos, step row
    s' <= s otherwise) and listed entries 0 <= w < min(NCMP, floor((t+1)/m)).
    """
    B, S, T, W, NC, KC = cfg["batch"], cfg["seq"], cfg["tokens"], cfg["window"], cfg["n_cmp"], cfg["cmp_topk"]
    m, hd = cfg["compress_ratio"], cfg["head_dim"]
    pool = reshape(concat([kv_ring, kv_step, kv_cmp], axis=1), (B * (W + S + NC), hd))
    t = token_positions(start_pos, S)                                   # [B,S]
    t3 = reshape(t, (B, S, 1))
    sp3 = reshape(start_pos, (B, 1, 1))
    oldest = t3 - (W - 1)                                               # window start (may be negative)
    # ring slot j holds the newest position p < start_pos with p mod W == j
    slot = iota((B, S, W), 2)
    ring_pos = (sp3 - 1) - ((sp3 - 1 - slot) % W)
    ring_ok = (ring_pos >= 0) & (ring_pos >= oldest)
    # step row s' holds position start_pos + s'; visible to s only if s' <= s
    step_pos = sp3 + iota((B, S, S), 2)
    step_ok = (step_pos <= t3) & (step_pos >= oldest)
    # compressed entries: listed, complete by t (w < floor((t+1)/m)), inside the cache
    if m > 0:
        n_done = minimum((t3 + 1) // m, NC)
        cmp_ok = (cmp_idx >= 0) & (cmp_idx < n_done)
    else:
        cmp_ok = cmp_idx < -1  # no compressed entries in a window-only layer
    cmp_row = select(cmp_ok, cmp_idx, 0)
    local = concat([iota((B, S, W), 2), iota((B, S, S), 2) + W, cmp_row + (W + S)], axis=2)
    rows = local + reshape(iota((B, 1, 1), 0), (B, 1, 1)) * (W + S + NC)
    valid = concat([ring_ok, step_ok, cmp_ok], axis=2)
    N = W + S + KC
    kv = gather_rows(pool, reshape(rows, (T, N)))
    return kv, reshape(valid, (T, N))


def attention_core(cfg, q, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos, attn_sink):
    T, H, hd = cfg["tokens"], cfg["n_heads"], cfg["head_dim"]
    kv, valid = visible_keys(cfg, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos)
    return sparse_attention(reshape(q, (T, H, hd)), kv, valid, attn_sink, cfg["softmax_scale"], out="bf16")


def _core_stage(cfg, q, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos, attn_sink):
    """Attention core only: per-head output before de-rotation, [B,S,H,hd] bf16."""
    o = attention_core(cfg, q, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos, attn_sink)
    return {"core": reshape(o, (cfg["batch"], cfg["seq"], cfg["n_heads"], cfg["head_dim"]))}


_core_stage.__annotations__ = dict(_CORE_PARAMS)
stage("sparse_attn_core", outputs=("core",))(_core_stage)


def _full_stage(cfg, q, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos, attn_sink, rope_cos, rope_sin, wo_a, wo_b):
    """Sparse attention with sinks, de-rotation at t, grouped projection wo_a then wo_b: out [B,S,D] bf16."""
    B, S, T, G, hd = cfg["batch"], cfg["seq"], cfg["tokens"], cfg["o_groups"], cfg["head_dim"]
    K, OL = cfg["group_in"], cfg["o_lora_rank"]
    o = attention_core(cfg, q, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos, attn_sink)
    pos = reshape(token_positions(start_pos, S), (T,))
    o = reshape(rope(o, rope_cos, rope_sin, pos, out="bf16", inverse=True), (T, G * K))
    # group g = heads g*H/G .. (g+1)*H/G-1 (contiguous), each through its own wo_a[g]
    z = concat([matmul(slice_(o, (0, g * K), (T, K)), reshape(slice_(wo_a, (g, 0, 0), (1, K, OL)), (K, OL)),
                       out="bf16") for g in range(G)], axis=1)
    return {"out": reshape(matmul(z, wo_b, out="bf16"), (B, S, cfg["dim"]))}


_full_stage.__annotations__ = dict(
    _CORE_PARAMS,
    rope_cos=In("max_pos", "rope_half", dtype="f32"),
    rope_sin=In("max_pos", "rope_half", dtype="f32"),
    wo_a=In("o_groups", "group_in", "o_lora_rank"),
    wo_b=In("o_cat", "dim"),
)
stage("sparse_attn", outputs=("out",))(_full_stage)
