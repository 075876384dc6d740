"""Stages sparse_attn and sparse_attn_core: per-token window + compressed sparse attention with sinks,
de-rotation and the grouped output projection."""
from attnc.ir.dsl import (
    In, concat, from_tokens, matmul, minimum, reshape, rope, select, slice_, sparse_attention, stage, to_tokens,
    token_positions,
)

from .rings import gather_pool, window_positions

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

    Candidates: the W window positions t-W+1 .. t (self included; the ring for p < start_pos, the step's own
    rows otherwise, never a later token), then, in a layer with compressed entries (m > 0), the KC listed
    entries, valid iff 0 <= w < min(NCMP, floor((t+1)/m)). Visibility comes from each token's own position.
    """
    B, S, T, W, m = cfg["batch"], cfg["seq"], cfg["tokens"], cfg["window"], cfg["compress_ratio"]
    local, valid = window_positions(cfg, start_pos, W, W)
    tables = [kv_ring, kv_step]
    if m > 0:
        t3 = reshape(token_positions(start_pos, S), (B, S, 1))
        cmp_ok = (cmp_idx >= 0) & (cmp_idx < minimum((t3 + 1) // m, cfg["n_cmp"]))
        local = concat([local, select(cmp_ok, cmp_idx, 0) + (W + S)], axis=2)
        valid = concat([valid, cmp_ok], axis=2)
        tables.append(kv_cmp)
    N = local.shape[2]
    return gather_pool(tables, local, (T, N)), to_tokens(valid)


def attention_core(cfg, q, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos, attn_sink):
    T, H, hd = cfg["tokens"], cfg["n_heads"], cfg["head_dim"]
    kv, valid = visible_keys(cfg, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos)
    return sparse_attention(to_tokens(q), kv, valid, attn_sink, cfg["softmax_scale"], out="bf16")


def _core_stage(cfg, q, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos, attn_sink):
    """Attention core only: per-head output before de-rotation, [B,S,H,hd] bf16."""
    o = attention_core(cfg, q, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos, attn_sink)
    return {"core": from_tokens(o)}


_core_stage.__annotations__ = dict(_CORE_PARAMS)
stage("sparse_attn_core", outputs=("core",))(_core_stage)


def _full_stage(cfg, q, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos, attn_sink, rope_cos, rope_sin, wo_a, wo_b):
    """Sparse attention with sinks, de-rotation at t, grouped projection wo_a then wo_b: out [B,S,D] bf16."""
    o = attention_core(cfg, q, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos, attn_sink)
    return {"out": output_projection(cfg, o, start_pos, rope_cos, rope_sin, wo_a, wo_b)}


def output_projection(cfg, o, start_pos, rope_cos, rope_sin, wo_a, wo_b):
    """Per-head attention output [T,H,hd] -> de-rotated at t -> grouped wo_a -> wo_b: [B,S,D] bf16."""
    B, S, T, G = cfg["batch"], cfg["seq"], cfg["tokens"], cfg["o_groups"]
    K, OL = cfg["group_in"], cfg["o_lora_rank"]
    pos = to_tokens(token_positions(start_pos, S))
    o = reshape(rope(o, rope_cos, rope_sin, pos, out="bf16", inverse=True), (T, G * K))
    # group g = heads g*H/G .. (g+1)*H/G-1 (contiguous), each through its own wo_a[g]
    z = concat([matmul(slice_(o, (0, g * K), (T, K)), reshape(slice_(wo_a, (g, 0, 0), (1, K, OL)), (K, OL)),
                       out="bf16") for g in range(G)], axis=1)
    return from_tokens(matmul(z, wo_b, out="bf16"))


_full_stage.__annotations__ = dict(
    _CORE_PARAMS,
    rope_cos=In("max_pos", "rope_half", dtype="f32"),
    rope_sin=In("max_pos", "rope_half", dtype="f32"),
    wo_a=In("o_groups", "group_in", "o_lora_rank"),
    wo_b=In("o_cat", "dim"),
)
stage("sparse_attn", outputs=("out",))(_full_stage)
