"""Independent FP32 reference (test oracle) for one whole DeepSeek-V4 attention layer (SWA, HCA or CSA).

Written from /work/shared/spec/dsv4-attention.md, sections 1-5 and 7. It imports nothing but torch, math and
the sibling stage reference ``dsv4_reference`` (rms_norm, rope, sink_attention). It shares no code with attnc.

Following spec §5, everything is recomputed from the token rows of the layer input on every call: window keys
k_p, compressed entries C^_w and indexer keys K^I_w. No cache or compressor state is used, so the oracle does not
depend on any state layout, and every execution mode (prefill, chunked prefill, decode, S>1) is the same
computation. Clarity is preferred over speed. Loops run over batch rows and query tokens;
heads, channels and compressed blocks are vectorised.

Conventions (the same as dsv4_reference):
  * every floating input is converted to float32 on entry, integer inputs to int64;
  * weights are stored [in, out], so a projection is ``y = x @ W``;
  * RoPE tables are [max_pos, rope_dim/2]. Column i holds the angle of interleaved pair i, which is the pair of
    dims (n - rope_dim + 2i, n - rope_dim + 2i + 1) of a length-n vector;
  * token s of batch row b has absolute position t = start_pos[b] + s.

Decisions on points the spec leaves open (also listed in the docstrings below):
  * YaRN correction range: ``low = max(floor(cd(beta_fast)), 0)`` and ``high = min(ceil(cd(beta_slow)), rope_dim-1)``,
    as in the official precompute code. With rope_dim 64 and base 160000 no clamp applies (15, 25). When
    high == low, the denominator is nudged by 1e-3, as in the official code.
  * YaRN is always applied for "csa"/"hca", whatever max_pos is. (The official code applies it only when
    max_seq_len > original_seq_len, which holds for the released 1M-position models.)
  * indexer top-k ties: the lower entry id wins (deterministic; the spec says ties are implementation defined).
  * ``selection`` override: entries -1 are padding and are ignored. Every other id must satisfy 0 <= w < V_t,
    and a visible id listed twice is rejected. Both raise ValueError. Any count is accepted, including fewer than
    min(K, V_t); use ``topk_sets_match`` to judge the kernel's set itself.
"""
from __future__ import annotations

import math

import torch

from tests.reference.dsv4_reference import _as_f32, rms_norm, rope, sink_attention

__all__ = [
    "rope_tables_from_spec",
    "sylvester_hadamard",
    "compress_entries",
    "layer_reference",
    "topk_sets_match",
    "COMPRESS_RATIO",
]

COMPRESS_RATIO = {"swa": 0, "hca": 128, "csa": 4}

# YaRN constants of spec §1 (the same for V4-Flash and V4-Pro).
_YARN_FACTOR = 16.0
_YARN_ORIGINAL_LEN = 65536
_YARN_BETA_FAST = 32.0
_YARN_BETA_SLOW = 1.0


# ------------------------------------------------------------------------------------------ RoPE tables


def _yarn_correction_dim(n_rot: float, rope_dim: int, base: float, original_len: int) -> float:
    """cd(r) = rd * ln(L0 / (2 pi r)) / (2 ln base): the pair index whose wavelength fits r times into L0."""
    return rope_dim * math.log(original_len / (2.0 * math.pi * n_rot)) / (2.0 * math.log(base))


def rope_tables_from_spec(kind: str, rope_dim: int, max_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), both float32 [max_pos, rope_dim/2], for the layer profile of spec §1/§2.

    kind "swa": theta 10000 and no YaRN. Kinds "csa" and "hca": theta 160000 with YaRN (factor 16, original
    length 65536, beta_fast 32, beta_slow 1, no mscale):
        low = floor(cd(32)), high = ceil(cd(1)), r_i = clamp((i - low) / (high - low), 0, 1),
        w'_i = w_i (1 - r_i) + (w_i / 16) r_i.
    The angles t * w'_i are computed in float64 and only cos/sin are cast to float32.
    """
    if kind not in COMPRESS_RATIO:
        raise ValueError(f"unknown layer kind {kind!r}; expected one of {sorted(COMPRESS_RATIO)}")
    if rope_dim % 2:
        raise ValueError(f"rope_dim must be even, got {rope_dim}")
    half = rope_dim // 2
    i = torch.arange(half, dtype=torch.float64)
    if kind == "swa":
        freqs = 10000.0 ** (-2.0 * i / rope_dim)
    else:
        base = 160000.0
        freqs = base ** (-2.0 * i / rope_dim)
        low = math.floor(_yarn_correction_dim(_YARN_BETA_FAST, rope_dim, base, _YARN_ORIGINAL_LEN))
        high = math.ceil(_yarn_correction_dim(_YARN_BETA_SLOW, rope_dim, base, _YARN_ORIGINAL_LEN))
        low, high = max(low, 0), min(high, rope_dim - 1)
        span = (high - low) if high != low else 1e-3
        ramp = torch.clamp((i - low) / span, 0.0, 1.0)
        freqs = freqs * (1.0 - ramp) + (freqs / _YARN_FACTOR) * ramp
    angles = torch.arange(max_pos, dtype=torch.float64)[:, None] * freqs[None, :]
    return torch.cos(angles).to(torch.float32), torch.sin(angles).to(torch.float32)


# ------------------------------------------------------------------------------------------ Hadamard


def sylvester_hadamard(n: int) -> torch.Tensor:
    """Orthonormal Sylvester Hadamard matrix, float32 [n, n]: H[i, j] = (-1)^popcount(i & j) / sqrt(n)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Sylvester Hadamard needs a power of two, got {n}")
    idx = torch.arange(n, dtype=torch.int64)
    both = idx[:, None] & idx[None, :]
    parity = torch.zeros_like(both)
    while bool((both != 0).any()):
        parity ^= both & 1
        both = both >> 1
    signs = 1.0 - 2.0 * parity.to(torch.float64)
    return (signs / math.sqrt(n)).to(torch.float32)


# ------------------------------------------------------------------------------------------ compressor


def compress_entries(xn: torch.Tensor, w_kv: torch.Tensor, w_gate: torch.Tensor, ape: torch.Tensor,
                     norm_w: torch.Tensor, m: int, overlap: bool, cos: torch.Tensor, sin: torch.Tensor,
                     eps: float) -> torch.Tensor:
    """Spec §3.3: every complete entry C^_w = RoPE_{w m}(RMS_{norm_w}(C_w)) of one sequence.

    xn [T, dim] are the normalised token rows of positions 0..T-1. Returns [T // m, d] (d = norm_w.numel()).
    Token p has value row a_p = xn_p @ w_kv and score row z_p = xn_p @ w_gate + ape[p mod m].
    Non-overlapping (HCA): C_w[k] = sum over the m tokens of block w of softmax(z[k]) a[k], per channel k.
    Overlapping (CSA, rows of width 2d): the slots are the A-half [:d] of the m tokens of block w-1, then the
    B-half [d:] of the m tokens of block w. Entry 0 has no A-slots (score -inf, weight 0), so it pools only m slots.
    """
    T = xn.shape[0]
    d = norm_w.shape[0]
    c = 2 if overlap else 1
    if w_kv.shape[1] != c * d or w_gate.shape[1] != c * d or tuple(ape.shape) != (m, c * d):
        raise ValueError(f"compressor weights do not match m={m}, overlap={overlap}, d={d}: "
                         f"{tuple(w_kv.shape)}, {tuple(w_gate.shape)}, {tuple(ape.shape)}")
    n_w = T // m
    if n_w == 0:
        return torch.zeros(0, d)

    a = (xn[: n_w * m] @ w_kv).reshape(n_w, m, c * d)                  # [w, j, c*d], token w*m + j
    offsets = torch.arange(n_w * m) % m
    z = (xn[: n_w * m] @ w_gate + ape[offsets]).reshape(n_w, m, c * d)

    if overlap:
        # Slots 0..m-1: A-half [:d] of block w-1; slots m..2m-1: B-half [d:] of block w.
        # Block -1 does not exist: value 0 and score -inf, so entry 0 pools only its m B-slots.
        prev_a = torch.cat([torch.zeros(1, m, d), a[:-1, :, :d]], dim=0)
        prev_z = torch.cat([torch.full((1, m, d), float("-inf")), z[:-1, :, :d]], dim=0)
        values = torch.cat([prev_a, a[:, :, d:]], dim=1)                 # [w, 2m, d]
        scores = torch.cat([prev_z, z[:, :, d:]], dim=1)
    else:
        values, scores = a, z                                           # [w, m, d]
    weights = torch.softmax(scores, dim=1)                              # over the slots, per channel
    pooled = (weights * values).sum(dim=1)                              # [w, d]
    normed = rms_norm(pooled, norm_w, eps)
    first = torch.arange(n_w) * m                                       # RoPE at the block's first token
    return rope(normed, cos[first], sin[first])


# ------------------------------------------------------------------------------------------ top-k


def _top_ids(scores: list[float], ids: list[int], k: int) -> list[int]:
    """The k ids with the largest scores; ties broken by the lower id."""
    order = sorted(zip(ids, scores), key=lambda pair: (-pair[1], pair[0]))
    return [w for w, _ in order[:k]]


def topk_sets_match(scores, chosen, k: int, eps: float) -> tuple[bool, str]:
    """Tie-aware comparison of one query's selected set with the exact top-k (spec §7a).

    scores: 1-D scores over entry ids; invisible entries are -inf. chosen: iterable of ids, -1 = padding.
    Accepted iff chosen holds exactly min(k, #visible) distinct visible ids, and every entry in the symmetric
    difference between chosen and the exact top set has a score within eps of the k-th largest visible score.
    Returns (ok, reason); reason is "" on success.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    if torch.isnan(scores).any():
        return False, "scores contain NaN"
    n = scores.numel()
    visible = [w for w in range(n) if scores[w].item() != float("-inf")]
    need = min(int(k), len(visible))

    ids = [int(w) for w in torch.as_tensor(list(chosen), dtype=torch.int64).reshape(-1).tolist()]
    ids = [w for w in ids if w != -1]
    bad = [w for w in ids if not (0 <= w < n) or scores[w].item() == float("-inf")]
    if bad:
        return False, f"chosen ids {bad} are not visible (n={n}, visible={len(visible)})"
    if len(set(ids)) != len(ids):
        dup = sorted({w for w in ids if ids.count(w) > 1})
        return False, f"chosen ids {dup} are listed more than once"
    if len(ids) != need:
        return False, f"chosen has {len(ids)} ids, expected min(k={k}, visible={len(visible)}) = {need}"
    if need == 0:
        return True, ""

    exact = _top_ids([scores[w].item() for w in visible], visible, need)
    kth = scores[exact[-1]].item()
    diff = sorted(set(ids) ^ set(exact))
    far = [(w, scores[w].item()) for w in diff if abs(scores[w].item() - kth) > eps]
    if far:
        return False, (f"selection differs from the exact top-{need} by entries whose scores are not within "
                       f"eps={eps} of the k-th score {kth}: {far}")
    return True, ""


# ------------------------------------------------------------------------------------------ the layer


def _check_selection(ids, n_visible: int, b: int, s: int, t: int) -> list[int]:
    ids = [int(w) for w in torch.as_tensor(list(ids), dtype=torch.int64).reshape(-1).tolist()]
    ids = [w for w in ids if w != -1]
    bad = [w for w in ids if not 0 <= w < n_visible]
    if bad:
        raise ValueError(f"selection for (b={b}, s={s}) at t={t} lists ids {bad} that are not visible "
                         f"(visible: 0..{n_visible - 1})")
    if len(set(ids)) != len(ids):
        raise ValueError(f"selection for (b={b}, s={s}) lists an id more than once: {ids}")
    return sorted(ids)


def layer_reference(kind: str, cfg: dict, weights: dict, x_hist: torch.Tensor, start_pos, seq: int,
                    selection: dict | None = None) -> dict:
    """One DeepSeek-V4 attention layer, spec §3 and §5, for queries t = start_pos[b] + s, s < seq.

    kind: "swa" (m=0), "hca" (m=128, non-overlapping) or "csa" (m=4, overlapping, with the lightning indexer).
    cfg: dim, n_heads, head_dim, rope_dim, q_lora_rank, o_lora_rank, o_groups, window, index_heads, index_dim,
         cmp_topk (index_topk K), norm_eps, max_pos.
    weights (stored [in, out]): attn_norm_w, wq_a, q_norm_w, wq_b, wkv, kv_norm_w, attn_sink, wo_a [G, (H/G) hd, R],
         wo_b; hca/csa: wc_kv, wc_gate, c_ape, c_norm_w; csa: wi_q, wi_w, ic_kv, ic_gate, ic_ape, ic_norm_w.
    x_hist [B, L, dim]: the layer input BEFORE attn_norm for positions 0..L-1. Row b uses 0..start_pos[b]+seq-1.
    selection: optional {(b, s): ids} replacing Sel_t of CSA query (b, s) (spec §7c); see the module docstring.

    Returns float32 tensors unless stated otherwise:
      y [B, seq, dim]; qr [B, seq, q_lora_rank]; q [B, seq, H, hd] (after norm and RoPE); kv [B, seq, hd] (k_t of
      the step tokens); window_keys: list per b of [T_b, hd] with T_b = start_pos[b] + seq; entries: list per b of
      [T_b // m, hd] (empty [0, hd] for swa); index_entries: list per b of [T_b // 4, index_dim], Hadamard-rotated
      (csa only); index_scores [B, seq, n_max] with -inf where invisible, n_max = max_b T_b // 4 (csa only);
      selection: {(b, s): sorted ids actually used} (csa only); o [B, seq, H, hd] (attention output before
      de-rotation); o_derot [B, seq, H, hd] (after the inverse RoPE at t).
    """
    if kind not in COMPRESS_RATIO:
        raise ValueError(f"unknown layer kind {kind!r}; expected one of {sorted(COMPRESS_RATIO)}")
    m = COMPRESS_RATIO[kind]
    W = _as_f32(weights)
    x_hist = torch.as_tensor(x_hist).to(torch.float32)
    start = torch.as_tensor(start_pos).to(torch.int64).reshape(-1)
    seq = int(seq)

    dim, H, hd, rd = cfg["dim"], cfg["n_heads"], cfg["head_dim"], cfg["rope_dim"]
    G, eps, window, max_pos = cfg["o_groups"], cfg["norm_eps"], cfg["window"], cfg["max_pos"]
    B = x_hist.shape[0]
    if start.numel() != B:
        raise ValueError(f"start_pos has {start.numel()} entries for {B} batch rows")
    if seq < 1:
        raise ValueError(f"seq must be >= 1, got {seq}")
    if H % G:
        raise ValueError(f"n_heads={H} is not a multiple of o_groups={G}")
    heads_per_group = H // G
    if kind != "csa" and selection:
        raise ValueError("selection overrides only exist for csa layers")
    selection = {} if selection is None else {(int(b), int(s)): ids for (b, s), ids in selection.items()}

    lengths = [int(start[b]) + seq for b in range(B)]
    for b in range(B):
        if int(start[b]) < 0:
            raise ValueError(f"start_pos[{b}] = {int(start[b])} is negative")
        if lengths[b] > x_hist.shape[1]:
            raise ValueError(f"row {b} needs {lengths[b]} positions of x_hist, which has {x_hist.shape[1]}")
        if lengths[b] > max_pos:
            raise ValueError(f"row {b} reaches position {lengths[b] - 1} >= max_pos={max_pos}")

    cos, sin = rope_tables_from_spec(kind, rd, max_pos)    # one profile for every rotation of the layer

    if kind == "csa":
        I_heads, I_dim, K = cfg["index_heads"], cfg["index_dim"], cfg["cmp_topk"]
        hadamard = sylvester_hadamard(I_dim)
        n_max = max(lengths) // 4
        index_scores = torch.full((B, seq, n_max), float("-inf"))
        index_entries_out, used_selection = [], {}

    y = torch.empty(B, seq, dim)
    qr_out = torch.empty(B, seq, cfg["q_lora_rank"])
    q_out = torch.empty(B, seq, H, hd)
    kv_out = torch.empty(B, seq, hd)
    o_out = torch.empty(B, seq, H, hd)
    o_derot_out = torch.empty(B, seq, H, hd)
    window_keys_out, entries_out = [], []

    for b in range(B):
        T = lengths[b]
        P = int(start[b])
        positions = torch.arange(T)
        xn = rms_norm(x_hist[b, :T], W["attn_norm_w"], eps)                       # [T, dim], spec's x_p

        # §3.2: window keys k_p for every position (K == V).
        keys = rope(rms_norm(xn @ W["wkv"], W["kv_norm_w"], eps), cos[positions], sin[positions])   # [T, hd]
        window_keys_out.append(keys)
        kv_out[b] = keys[P:T]

        # §3.3: compressed entries from the token rows.
        if m:
            entries = compress_entries(xn, W["wc_kv"], W["wc_gate"], W["c_ape"], W["c_norm_w"], m,
                                       overlap=(m == 4), cos=cos, sin=sin, eps=eps)
        else:
            entries = torch.zeros(0, hd)
        entries_out.append(entries)

        if kind == "csa":
            # The indexer compressor (d = index_dim, m = 4, overlapping). Scores use the un-rotated keys: the
            # Hadamard is orthonormal, so it changes nothing in q . k; it only changes the stored cache rows.
            index_keys = compress_entries(xn, W["ic_kv"], W["ic_gate"], W["ic_ape"], W["ic_norm_w"], 4,
                                          overlap=True, cos=cos, sin=sin, eps=eps)            # [T//4, I_dim]
            index_entries_out.append(index_keys @ hadamard)

        for s in range(seq):
            t = P + s

            # §3.1: query path.
            qr = rms_norm(xn[t] @ W["wq_a"], W["q_norm_w"], eps)
            q = (qr @ W["wq_b"]).reshape(H, hd)
            q = rope(rms_norm(q, None, eps), cos[t], sin[t])
            qr_out[b, s], q_out[b, s] = qr, q

            # §3.5: the visible set. Window first (self included), then compressed entries.
            rows = [keys[max(0, t - window + 1): t + 1]]
            if kind == "hca":
                rows.append(entries[: (t + 1) // m])
            elif kind == "csa":
                n_vis = (t + 1) // 4
                # §3.4: lightning indexer.
                q_index = rope((qr @ W["wi_q"]).reshape(I_heads, I_dim), cos[t], sin[t])    # no norm
                w_index = (xn[t] @ W["wi_w"]) * (I_dim ** -0.5) * (I_heads ** -0.5)       # raw, may be < 0
                dots = q_index @ index_keys[:n_vis].T                                        # [I_heads, n_vis]
                scores = (w_index[:, None] * torch.relu(dots)).sum(dim=0)                    # [n_vis]
                index_scores[b, s, :n_vis] = scores
                if (b, s) in selection:
                    chosen = _check_selection(selection[(b, s)], n_vis, b, s, t)
                else:
                    chosen = sorted(_top_ids(scores.tolist(), list(range(n_vis)), min(K, n_vis)))
                used_selection[(b, s)] = chosen
                if chosen:
                    rows.append(entries[torch.tensor(chosen, dtype=torch.int64)])
            visible = torch.cat(rows, dim=0)

            # §3.6: sink attention, values == keys, scale hd^-1/2.
            o = sink_attention(q, visible, W["attn_sink"])                                   # [H, hd]
            o_out[b, s] = o

            # §3.7: de-rotate at t, grouped low-rank projection over contiguous head groups.
            o_derot = rope(o, cos[t], sin[t], inverse=True)
            o_derot_out[b, s] = o_derot
            z = [o_derot[g * heads_per_group:(g + 1) * heads_per_group].reshape(-1) @ W["wo_a"][g]
                 for g in range(G)]
            y[b, s] = torch.cat(z) @ W["wo_b"]

    out = {
        "y": y, "qr": qr_out, "q": q_out, "kv": kv_out, "window_keys": window_keys_out, "entries": entries_out,
        "o": o_out, "o_derot": o_derot_out,
    }
    if kind == "csa":
        out["index_entries"] = index_entries_out
        out["index_scores"] = index_scores
        out["selection"] = used_selection
    return out
