"""Independent FP32 reference for the DeepSeek-V4 decode stages, written from ../shared/spec/dsv4-attention.md.

It shares no code with attnc (only torch and math): per token it builds the set of visible keys explicitly and
applies the spec's formulas in float32. Slow on purpose-free clarity; fine for tests at small batch.
"""
from __future__ import annotations

import math

import torch


def _f32(inputs: dict) -> dict:
    return {k: (v.float() if v.dtype.is_floating_point else v.long()) for k, v in inputs.items()}


def rms_norm(u: torch.Tensor, gamma: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMS_γ(u) = γ ⊙ u / sqrt(mean(u²) + eps) over the last axis (spec §2)."""
    y = u / torch.sqrt(u.pow(2).mean(-1, keepdim=True) + eps)
    return y if gamma is None else y * gamma


def rotate(u: torch.Tensor, cos_row: torch.Tensor, sin_row: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Interleaved-pair RoPE on the trailing 2*len(cos_row) lanes of u (spec §2); inverse uses -sin."""
    n, half = u.shape[-1], cos_row.shape[-1]
    out = u.clone()
    sin_row = -sin_row if inverse else sin_row
    for i in range(half):
        a = u[..., n - 2 * half + 2 * i]
        b = u[..., n - 2 * half + 2 * i + 1]
        out[..., n - 2 * half + 2 * i] = a * cos_row[i] - b * sin_row[i]
        out[..., n - 2 * half + 2 * i + 1] = a * sin_row[i] + b * cos_row[i]
    return out


def qkv_proj_rope_reference(inputs: dict, cfg: dict) -> dict:
    """§3.1 / §3.2: q [B,S,H,hd] (weightless per-head norm, RoPE at t), kv [B,S,hd], qr [B,S,q_lora]."""
    x = _f32(inputs)
    B, S, H, hd, eps = cfg["batch"], cfg["seq"], cfg["n_heads"], cfg["head_dim"], cfg["norm_eps"]
    q_out = torch.zeros(B, S, H, hd)
    kv_out = torch.zeros(B, S, hd)
    qr_out = torch.zeros(B, S, cfg["q_lora_rank"])
    for b in range(B):
        for s in range(S):
            t = int(x["start_pos"][b]) + s
            c, sn = x["rope_cos"][t], x["rope_sin"][t]
            xn = rms_norm(x["x"][b, s], x["attn_norm_w"], eps)
            qr = rms_norm(xn @ x["wq_a"], x["q_norm_w"], eps)
            q = (qr @ x["wq_b"]).reshape(H, hd)
            q = rms_norm(q, None, eps)
            q_out[b, s] = rotate(q, c, sn)
            kv_out[b, s] = rotate(rms_norm(xn @ x["wkv"], x["kv_norm_w"], eps), c, sn)
            qr_out[b, s] = qr
    return {"q": q_out, "kv": kv_out, "qr": qr_out}


def visible_key_rows(x: dict, cfg: dict, b: int, s: int) -> list[torch.Tensor]:
    """§3.5: the raw window of token t (ring for positions before the step, the step's own rows s' <= s) and
    the listed compressed entries that are complete by t. Listed ids are used as listed (a duplicate counts
    twice, as any gather-based kernel does); ids that are padding, not yet complete or outside the cache are
    ignored."""
    W, m, NC = cfg["window"], cfg["compress_ratio"], cfg["n_cmp"]
    start = int(x["start_pos"][b])
    t = start + s
    keys = []
    for p in range(max(0, t - W + 1), t + 1):
        if p < start:
            keys.append(x["kv_ring"][b, p % W])
        else:
            keys.append(x["kv_step"][b, p - start])
    if m > 0:
        complete = (t + 1) // m
        for w in x["cmp_idx"][b, s].tolist():
            if 0 <= w < complete and w < NC:
                keys.append(x["kv_cmp"][b, w])
    return keys


def attend(q: torch.Tensor, keys: list[torch.Tensor], sink: torch.Tensor, head_dim: int) -> torch.Tensor:
    """§3.6 for all heads: o_h = Σ e^{l_j-M} k_j / (Σ e^{l_j-M} + e^{σ_h-M}); zero without keys and sink."""
    H = q.shape[0]
    if not keys:  # only the sink (value 0) remains: the output is 0
        return torch.zeros(H, head_dim)
    K = torch.stack(keys)  # [N, hd], K ≡ V
    logits = (q @ K.T) / math.sqrt(head_dim)  # [H, N]
    M = logits.max(-1, keepdim=True).values
    e = torch.exp(logits - M)
    denom = e.sum(-1, keepdim=True) + torch.exp(sink[:, None] - M)
    return (e @ K) / denom


def sparse_attn_reference(inputs: dict, cfg: dict) -> dict:
    """§3.5-§3.7: core [B,S,H,hd] (before de-rotation) and out [B,S,D]."""
    x = _f32(inputs)
    B, S, H, hd = cfg["batch"], cfg["seq"], cfg["n_heads"], cfg["head_dim"]
    G = cfg["o_groups"]
    core = torch.zeros(B, S, H, hd)
    out = torch.zeros(B, S, cfg["dim"]) if "wo_a" in x else None
    for b in range(B):
        for s in range(S):
            t = int(x["start_pos"][b]) + s
            o = attend(x["q"][b, s], visible_key_rows(x, cfg, b, s), x["attn_sink"], hd)
            core[b, s] = o
            if out is None:
                continue
            o = rotate(o, x["rope_cos"][t], x["rope_sin"][t], inverse=True)
            per_group = H // G
            z = [o[g * per_group:(g + 1) * per_group].reshape(-1) @ x["wo_a"][g] for g in range(G)]
            out[b, s] = torch.cat(z) @ x["wo_b"]
    result = {"core": core}
    if out is not None:
        result["out"] = out
    return result
