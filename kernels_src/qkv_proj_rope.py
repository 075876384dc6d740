"""Stage qkv_proj_rope: attention norm, q/kv projections with their norms, RoPE at each token's position."""
from attnc.ir.dsl import In, from_tokens, linear, matmul, reshape, rmsnorm, rope, stage, to_tokens, token_positions


@stage("qkv_proj_rope", outputs=("q", "kv", "qr"))
def qkv_proj_rope(cfg,
                  x: In("batch", "seq", "dim"),
                  attn_norm_w: In("dim", dtype="f32"),
                  wq_a: In("dim", "q_lora_rank"),
                  q_norm_w: In("q_lora_rank", dtype="f32"),
                  wq_b: In("q_lora_rank", "q_dim", quantizable=True),
                  wkv: In("dim", "head_dim"),
                  kv_norm_w: In("head_dim", dtype="f32"),
                  start_pos: In("batch", dtype="i32"),
                  rope_cos: In("max_pos", "rope_half", dtype="f32"),
                  rope_sin: In("max_pos", "rope_half", dtype="f32"),
                  **scales):
    """x -> q [B,S,H,hd], kv [B,S,hd], qr [B,S,q_lora] (bf16)."""
    B, S, H, hd = cfg["batch"], cfg["seq"], cfg["n_heads"], cfg["head_dim"]
    q, kv, qr, _ = project(cfg, x, attn_norm_w, wq_a, q_norm_w, wq_b, wkv, kv_norm_w, start_pos, rope_cos, rope_sin,
                           scales.get("wq_b_scale"))
    return {"q": from_tokens(q), "kv": from_tokens(kv), "qr": from_tokens(qr)}


def project(cfg, x, attn_norm_w, wq_a, q_norm_w, wq_b, wkv, kv_norm_w, start_pos, rope_cos, rope_sin, wq_b_scale=None):
    """Token rows [T, ...]: q (normed per head, rotated), kv (normed, rotated), qr, and xn = attn_norm(x), the
    input of q, kv, the compressors and the indexer weights (pypto-lib#440). wq_b may be i8 with its per-channel
    scales (quant=w8a8)."""
    S, T, H, hd, eps = cfg["seq"], cfg["tokens"], cfg["n_heads"], cfg["head_dim"], cfg["norm_eps"]
    pos = to_tokens(token_positions(start_pos, S))
    xn = rmsnorm(to_tokens(x), attn_norm_w, eps, out="bf16")
    qr = rmsnorm(matmul(xn, wq_a), q_norm_w, eps, out="bf16")
    q = reshape(linear(qr, wq_b, wq_b_scale, "wq_b"), (T, H, hd))
    q = rope(rmsnorm(q, None, eps, out="f32"), rope_cos, rope_sin, pos, out="bf16")
    kv = rope(rmsnorm(matmul(xn, wkv), kv_norm_w, eps, out="f32"), rope_cos, rope_sin, pos, out="bf16")
    return q, kv, qr, xn
