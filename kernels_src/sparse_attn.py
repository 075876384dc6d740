"""Stages sparse_attn and sparse_attn_core: per-token window + compressed sparse attention with sinks,
de-rotation and the grouped output projection."""
from attnc.ir.dsl import In, cache_attention, concat, matmul, reshape, rope, slice_, stage, token_positions

from .configs import with_compress_ratio

_CORE_PARAMS = dict(
    q=In("batch", "seq", "n_heads", "head_dim"),
    kv_ring=In("batch", "window", "head_dim"),
    kv_step=In("batch", "seq", "head_dim"),
    kv_cmp=In("batch", "n_cmp", "head_dim"),
    cmp_idx=In("batch", "seq", "cmp_topk", dtype="i32"),
    start_pos=In("batch", dtype="i32"),
    attn_sink=In("n_heads", dtype="f32"),
)


def attention_core(cfg, q, kv_ring, kv_step, kv_cmp, cmp_idx, start_pos, attn_sink):
    """Per-head attention output [B,S,H,hd] bf16 of every token t = start_pos[b]+s over the window t-W+1 .. t (the
    ring for earlier positions, the step's own rows otherwise, never a later token) and, in a layer with
    compressed entries (m > 0), the entries w < min(NCMP, floor((t+1)/m)): those listed in `cmp_idx` (-1 padding),
    or every entry when `cmp_idx` is None (HCA). Visibility comes from each token's own position."""
    B, S, H, hd, m = cfg["batch"], cfg["seq"], cfg["n_heads"], cfg["head_dim"], cfg["compress_ratio"]
    # listed ids (the indexer's top-k picks; the cmp_idx contract of the attention stages) are a visible prefix
    extra = dict(cache=kv_cmp, index=cmp_idx, ratio=m, listed_prefix=cmp_idx is not None) if m > 0 else {}
    return cache_attention(reshape(q, (B, S, H, hd)), attn_sink, start_pos, kv_ring, kv_step, cfg["softmax_scale"],
                           out="bf16", **extra)


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
    o = reshape(o, (T, cfg["n_heads"], cfg["head_dim"]))
    K, OL = cfg["group_in"], cfg["o_lora_rank"]
    pos = reshape(token_positions(start_pos, S), (T,))
    o = reshape(rope(o, rope_cos, rope_sin, pos, out="bf16", inverse=True), (T, G * K))
    # group g = heads g*H/G .. (g+1)*H/G-1 (contiguous), each through its own wo_a[g]
    z = concat([matmul(slice_(o, (0, g * K), (T, K)), reshape(slice_(wo_a, (g, 0, 0), (1, K, OL)), (K, OL)),
                       out="bf16") for g in range(G)], axis=1)
    return reshape(matmul(z, wo_b, out="bf16"), (B, S, cfg["dim"]))


_full_stage.__annotations__ = dict(
    _CORE_PARAMS,
    rope_cos=In("max_pos", "rope_half", dtype="f32"),
    rope_sin=In("max_pos", "rope_half", dtype="f32"),
    wo_a=In("o_groups", "group_in", "o_lora_rank"),
    wo_b=In("o_cat", "dim"),
)
stage("sparse_attn", outputs=("out",))(_full_stage)
