"""Independent FP32 reference for two DeepSeek-V4 attention stages, written from
/work/shared/spec/dsv4-attention.md (§2, §3.1, §3.2, §3.5-§3.7).

It imports nothing but torch and math and shares no code with attnc. Clarity is preferred over speed:
loops run over batch rows and tokens, and the visible key set of every token is built as an explicit
list of rows. Only the heads are vectorised.

Conventions (spec §2 and the stage contract):
  * every floating input is converted to float32 on entry, integer inputs to int64;
  * weights are stored [in, out], so a projection is ``y = x @ W``;
  * ``rope_cos`` / ``rope_sin`` are [max_pos, rope_dim/2]; column i is the angle of pair i, which is the
    *interleaved* pair of dims (n - rope_dim + 2i, n - rope_dim + 2i + 1) of a length-n vector;
  * token s of batch row b has absolute position t = start_pos[b] + s.

Semantic decisions of ``sparse_attn_reference`` (see ``visible_keys``):
  * a ring slot is read only for a position p < start_pos[b] inside the window of the token; all other slots
    are never touched, so garbage (even NaN) there cannot leak into the result;
  * a step row s' is read only by tokens s >= s' (never a later row of the same step);
  * a listed compressed id w is used only if 0 <= w < n_cmp, m > 0 and w < floor((t+1)/m); other listed ids
    (padding -1, not-yet-complete blocks, out-of-range ids) are ignored;
  * the listed ids are treated as a SET: an id listed twice contributes its entry once. This is the spec's
    meaning (the visible set K_t of §3.5 is a set of entries); a kernel that gathers duplicates twice would
    differ from this reference, so index lists fed to kernels should not contain duplicate visible ids;
  * window rows and compressed entries are NOT de-duplicated against each other (spec §3.5 note);
  * the sink enters the denominator only, and M is the max over the real logits, so a sink of -inf
    ("sink off") contributes exp(-inf) = 0 and yields no NaN.
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "rms_norm",
    "rope",
    "qkv_proj_rope_reference",
    "visible_keys",
    "sink_attention",
    "sparse_attn_reference",
]


# ------------------------------------------------------------------------------------------ helpers


def _as_f32(inputs: dict) -> dict:
    """Float tensors -> float32, integer tensors -> int64 (bf16 inputs may arrive as bf16 or f32)."""
    out = {}
    for name, value in inputs.items():
        value = torch.as_tensor(value)
        out[name] = value.to(torch.float32) if value.is_floating_point() else value.to(torch.int64)
    return out


def rms_norm(u: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMS_w(u) = w * u / sqrt(mean(u^2) + eps) over the last axis; ``weight=None`` is the weightless norm."""
    y = u / torch.sqrt(torch.mean(u * u, dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    return y


def rope(u: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Interleaved-pair RoPE on the trailing 2*len(cos) dims of the last axis of ``u``.

    ``cos``/``sin`` are the rows of the tables at one position, shape [rd/2]. For pair i, with
    a = u[n-rd+2i] and b = u[n-rd+2i+1]:  a' = a cos - b sin,  b' = a sin + b cos.
    The inverse rotation uses -sin. The leading n-rd dims are returned unchanged.
    """
    half = cos.shape[-1]
    rd = 2 * half
    n = u.shape[-1]
    if inverse:
        sin = -sin
    head, tail = u[..., : n - rd], u[..., n - rd:]
    pairs = tail.reshape(*tail.shape[:-1], half, 2)  # [..., i, (a, b)] = dims (n-rd+2i, n-rd+2i+1)
    a, b = pairs[..., 0], pairs[..., 1]
    a_new = a * cos - b * sin
    b_new = a * sin + b * cos
    tail_new = torch.stack([a_new, b_new], dim=-1).reshape(tail.shape)
    return torch.cat([head, tail_new], dim=-1)


def _position(start_pos: torch.Tensor, b: int, s: int, cfg: dict) -> int:
    t = int(start_pos[b]) + s
    if not 0 <= t < cfg["max_pos"]:
        raise ValueError(f"position {t} of batch row {b} is outside [0, max_pos={cfg['max_pos']})")
    return t


# ------------------------------------------------------------------------------------------ stage 1


def qkv_proj_rope_reference(inputs: dict, cfg: dict) -> dict:
    """Spec §3.1/§3.2 for every token of the call.

    inputs: x [B,S,D], attn_norm_w [D], wq_a [D,QL], q_norm_w [QL], wq_b [QL,H*hd], wkv [D,hd],
            kv_norm_w [hd], start_pos [B], rope_cos / rope_sin [max_pos, rd/2].
    returns {"q": [B,S,H,hd], "kv": [B,S,hd], "qr": [B,S,QL]} in float32.
    """
    x = _as_f32(inputs)
    B, S = cfg["batch"], cfg["seq"]
    H, hd, eps = cfg["n_heads"], cfg["head_dim"], cfg["norm_eps"]
    QL = cfg["q_lora_rank"]

    q_out = torch.empty(B, S, H, hd)
    kv_out = torch.empty(B, S, hd)
    qr_out = torch.empty(B, S, QL)
    for b in range(B):
        for s in range(S):
            t = _position(x["start_pos"], b, s, cfg)
            cos, sin = x["rope_cos"][t], x["rope_sin"][t]

            xn = rms_norm(x["x"][b, s], x["attn_norm_w"], eps)           # attn_norm output, [D]

            qr = rms_norm(xn @ x["wq_a"], x["q_norm_w"], eps)            # [QL]
            q = (qr @ x["wq_b"]).reshape(H, hd)                          # head-major
            q = rms_norm(q, None, eps)                                   # weightless, per head over hd
            q = rope(q, cos, sin)                                        # last rd dims of every head

            kv = rope(rms_norm(xn @ x["wkv"], x["kv_norm_w"], eps), cos, sin)  # [hd], K == V

            q_out[b, s], kv_out[b, s], qr_out[b, s] = q, kv, qr
    return {"q": q_out, "kv": kv_out, "qr": qr_out}


# ------------------------------------------------------------------------------------------ stage 2


def visible_keys(x: dict, cfg: dict, b: int, s: int) -> torch.Tensor:
    """Spec §3.5: the rows [N, hd] visible to token s of batch row b (already float32 inputs).

    Window: positions p in [max(0, t-W+1), t]; p < start_pos[b] comes from ring slot p mod W, otherwise
    from step row p - start_pos[b] (which is <= s). Compressed: the SET of listed ids w with
    0 <= w < n_cmp and w < floor((t+1)/m) (none when m == 0). Rows are selected, never masked, so
    unselected ring slots / entries are never read.
    """
    W, m, n_cmp = cfg["window"], cfg["compress_ratio"], cfg["n_cmp"]
    start = int(x["start_pos"][b])
    t = _position(x["start_pos"], b, s, cfg)

    rows = []
    for p in range(max(0, t - W + 1), t + 1):
        if p < start:
            rows.append(x["kv_ring"][b, p % W])
        else:
            s_prime = p - start
            assert s_prime <= s
            rows.append(x["kv_step"][b, s_prime])

    if m > 0:
        n_complete = (t + 1) // m
        used = set()
        for w in x["cmp_idx"][b, s].tolist():
            w = int(w)
            if w < 0 or w >= n_cmp or w >= n_complete or w in used:
                continue
            used.add(w)
            rows.append(x["kv_cmp"][b, w])

    return torch.stack(rows)  # never empty: the token itself is always in its window


def sink_attention(q: torch.Tensor, keys: torch.Tensor, sink: torch.Tensor) -> torch.Tensor:
    """Spec §3.6 for all heads at once. q [H,hd], keys [N,hd] (values = keys), sink [H] -> [H,hd].

    o_h = sum_j e^{l_j - M} k_j / (sum_j e^{l_j - M} + e^{sigma_h - M}), l_j = q_h . k_j / sqrt(hd),
    M = max_j l_j (the sink is not part of M, so sigma = -inf adds exactly 0).
    """
    hd = q.shape[-1]
    logits = (q @ keys.T) / math.sqrt(hd)                  # [H, N]
    M = logits.max(dim=-1, keepdim=True).values           # [H, 1], finite
    e = torch.exp(logits - M)                              # [H, N]
    denom = e.sum(dim=-1, keepdim=True) + torch.exp(sink.reshape(-1, 1) - M)
    return (e @ keys) / denom


def sparse_attn_reference(inputs: dict, cfg: dict) -> dict:
    """Spec §3.5-§3.7 for every token of the call.

    inputs: q [B,S,H,hd], kv_ring [B,W,hd], kv_step [B,S,hd], kv_cmp [B,NCMP,hd], cmp_idx [B,S,KC],
            start_pos [B], attn_sink [H], and for the output projection rope_cos / rope_sin [max_pos, rd/2],
            wo_a [G,(H/G)*hd,OL], wo_b [G*OL,D].
    returns {"core": [B,S,H,hd]} (attention output before de-rotation) and, when wo_a and wo_b are
    given, "out": [B,S,D] (de-rotated at t, grouped low-rank output projection).
    """
    x = _as_f32(inputs)
    B, S = cfg["batch"], cfg["seq"]
    H, hd, G = cfg["n_heads"], cfg["head_dim"], cfg["o_groups"]
    heads_per_group = H // G
    with_out = "wo_a" in x and "wo_b" in x

    core = torch.empty(B, S, H, hd)
    out = torch.empty(B, S, cfg["dim"]) if with_out else None
    for b in range(B):
        for s in range(S):
            keys = visible_keys(x, cfg, b, s)
            o = sink_attention(x["q"][b, s], keys, x["attn_sink"])   # [H, hd]
            core[b, s] = o
            if not with_out:
                continue
            t = _position(x["start_pos"], b, s, cfg)
            o = rope(o, x["rope_cos"][t], x["rope_sin"][t], inverse=True)
            z = []
            for g in range(G):
                u_g = o[g * heads_per_group:(g + 1) * heads_per_group].reshape(-1)  # heads concatenated
                z.append(u_g @ x["wo_a"][g])
            out[b, s] = torch.cat(z) @ x["wo_b"]

    result = {"core": core}
    if with_out:
        result["out"] = out
    return result
