"""Self-checks of the whole-layer FP32 oracle (tests/reference/dsv4_layer_reference.py) against facts of the spec.

Nothing here comes from attnc. Weights are random and built in this file, and the brute-force checks are
written out separately from the oracle's code paths.
"""
from __future__ import annotations

import math

import pytest
import torch

from tests.reference.dsv4_layer_reference import (
    layer_reference,
    rope_tables_from_spec,
    sylvester_hadamard,
    topk_sets_match,
)
from tests.reference.dsv4_reference import qkv_proj_rope_reference, rms_norm

CFG = {
    "dim": 64, "n_heads": 4, "head_dim": 128, "rope_dim": 64, "q_lora_rank": 32, "o_lora_rank": 32,
    "o_groups": 2, "window": 8, "index_heads": 4, "index_dim": 128, "cmp_topk": 3, "norm_eps": 1e-6,
    "max_pos": 512,
}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The tensors are tiny: one intra-op thread avoids thread-pool overhead on a busy machine (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_weights(kind: str, cfg: dict = CFG, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    D, H, hd, QL = cfg["dim"], cfg["n_heads"], cfg["head_dim"], cfg["q_lora_rank"]
    G, R = cfg["o_groups"], cfg["o_lora_rank"]

    def lin(n_in, *shape):
        return torch.randn(*shape, generator=g) / math.sqrt(n_in)

    def gain(n):
        return 1 + 0.1 * torch.randn(n, generator=g)

    w = {
        "attn_norm_w": gain(D), "wq_a": lin(D, D, QL), "q_norm_w": gain(QL), "wq_b": lin(QL, QL, H * hd),
        "wkv": lin(D, D, hd), "kv_norm_w": gain(hd), "attn_sink": torch.randn(H, generator=g),
        "wo_a": lin((H // G) * hd, G, (H // G) * hd, R), "wo_b": lin(G * R, G * R, D),
    }
    if kind in ("hca", "csa"):
        m, c = (4, 2) if kind == "csa" else (128, 1)
        w.update({"wc_kv": lin(D, D, c * hd), "wc_gate": lin(D, D, c * hd),
                  "c_ape": 0.5 * torch.randn(m, c * hd, generator=g), "c_norm_w": gain(hd)})
    if kind == "csa":
        IH, ID = cfg["index_heads"], cfg["index_dim"]
        w.update({"wi_q": lin(QL, QL, IH * ID), "wi_w": lin(D, D, IH),
                  "ic_kv": lin(D, D, 2 * ID), "ic_gate": lin(D, D, 2 * ID),
                  "ic_ape": 0.5 * torch.randn(4, 2 * ID, generator=g), "ic_norm_w": gain(ID)})
    return w


def make_x(B: int, L: int, seed: int = 1, dim: int = CFG["dim"]) -> torch.Tensor:
    return torch.randn(B, L, dim, generator=torch.Generator().manual_seed(seed))


def rope_f64(u: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Plain scalar-loop interleaved RoPE on the trailing 2*len(angles) dims, written independently."""
    u = u.clone().double()
    n, half = u.shape[-1], angles.numel()
    for i in range(half):
        a, b = u[n - 2 * half + 2 * i].item(), u[n - 2 * half + 2 * i + 1].item()
        c, s = math.cos(angles[i].item()), math.sin(angles[i].item())
        u[n - 2 * half + 2 * i] = a * c - b * s
        u[n - 2 * half + 2 * i + 1] = a * s + b * c
    return u


def yarn_freqs_f64(rope_dim: int = 64) -> torch.Tensor:
    base, half = 160000.0, rope_dim // 2
    plain = base ** (-2.0 * torch.arange(half, dtype=torch.float64) / rope_dim)
    ramp = ((torch.arange(half, dtype=torch.float64) - 15) / 10).clamp(0, 1)   # low=15, high=25 (spec §1)
    return plain * (1 - ramp) + plain / 16 * ramp


# ------------------------------------------------------------------------------------------ tables


def test_yarn_tables_keep_low_pairs_and_divide_high_pairs():
    cos, sin = rope_tables_from_spec("csa", 64, 4)
    assert cos.dtype == torch.float32 and cos.shape == (4, 32)
    got = torch.atan2(sin[1].double(), cos[1].double())          # angle at t=1 is the frequency itself
    plain = 160000.0 ** (-2.0 * torch.arange(32, dtype=torch.float64) / 64)
    torch.testing.assert_close(got[:16], plain[:16], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(got[25:], plain[25:] / 16, rtol=1e-5, atol=1e-12)
    mid = slice(16, 25)
    assert ((got[mid] < plain[mid] * (1 - 1e-4)) & (got[mid] > plain[mid] / 16 * (1 + 1e-4))).all()
    # hca has the same profile; swa is plain theta 10000
    assert torch.equal(rope_tables_from_spec("hca", 64, 4)[0], cos)
    c0, s0 = rope_tables_from_spec("swa", 64, 4)
    plain10k = 10000.0 ** (-2.0 * torch.arange(32, dtype=torch.float64) / 64)
    torch.testing.assert_close(torch.atan2(s0[1].double(), c0[1].double()), plain10k, rtol=1e-6, atol=1e-9)


def test_tables_angles_are_computed_in_float64():
    P = 400_000
    cos, sin = rope_tables_from_spec("csa", 64, P + 1)
    angles = P * yarn_freqs_f64()
    torch.testing.assert_close(cos[P].double(), torch.cos(angles), rtol=0, atol=2e-7)
    torch.testing.assert_close(sin[P].double(), torch.sin(angles), rtol=0, atol=2e-7)


def test_hadamard_is_orthonormal_sylvester():
    for n in (1, 2, 8, 128):
        h = sylvester_hadamard(n)
        assert h.shape == (n, n) and h.dtype == torch.float32
        torch.testing.assert_close(h @ h.T, torch.eye(n), rtol=0, atol=1e-5)
        for i, j in {(0, 0), (1 % n, 1 % n), (3 % n, 5 % n), (n - 1, n - 1), (n // 2, n - 1)}:
            expected = (-1) ** bin(i & j).count("1") / math.sqrt(n)
            assert math.isclose(h[i, j].item(), expected, rel_tol=1e-6)
    with pytest.raises(ValueError):
        sylvester_hadamard(12)


# ------------------------------------------------------------------------------------------ compressor


def test_hca_entry_is_a_per_channel_softmax_pool_of_its_128_rows():
    w = make_weights("hca")
    x = make_x(1, 260)
    out = layer_reference("hca", CFG, w, x, [258], 2)
    assert out["entries"][0].shape == (2, 128)
    xn = rms_norm(x[0].double(), w["attn_norm_w"].double(), 1e-6)
    cos_angles = yarn_freqs_f64()
    for wid in (0, 1):
        rows = range(wid * 128, wid * 128 + 128)
        pooled = torch.zeros(128, dtype=torch.float64)
        for k in range(128):                                     # every channel has its own softmax
            zs = [(xn[p] @ w["wc_gate"][:, k].double() + w["c_ape"][p % 128, k].double()).item() for p in rows]
            vs = [(xn[p] @ w["wc_kv"][:, k].double()).item() for p in rows]
            mx = max(zs)
            es = [math.exp(z - mx) for z in zs]
            pooled[k] = sum(e * v for e, v in zip(es, vs)) / sum(es)
        normed = pooled / torch.sqrt((pooled ** 2).mean() + 1e-6) * w["c_norm_w"].double()
        expected = rope_f64(normed, wid * 128 * cos_angles)
        torch.testing.assert_close(out["entries"][0][wid].double(), expected, rtol=1e-4, atol=1e-4)


def _csa_pool_f64(w, xn, wid, names=("wc_kv", "wc_gate", "c_ape"), d=128):
    """Brute-force CSA entry before norm: A-half of block wid-1 and B-half of block wid."""
    kv, gate, ape = (w[name].double() for name in names)
    slots_v, slots_z = [], []
    if wid > 0:
        for p in range((wid - 1) * 4, wid * 4):
            slots_v.append(xn[p] @ kv[:, :d])
            slots_z.append(xn[p] @ gate[:, :d] + ape[p % 4, :d])
    for p in range(wid * 4, wid * 4 + 4):
        slots_v.append(xn[p] @ kv[:, d:])
        slots_z.append(xn[p] @ gate[:, d:] + ape[p % 4, d:])
    v, z = torch.stack(slots_v), torch.stack(slots_z)
    return len(slots_v), (torch.softmax(z, dim=0) * v).sum(0)


def test_csa_entry_pools_previous_a_half_and_current_b_half():
    w = make_weights("csa")
    x = make_x(1, 16)
    out = layer_reference("csa", CFG, w, x, [15], 1)
    xn = rms_norm(x[0].double(), w["attn_norm_w"].double(), 1e-6)
    for wid in (0, 1, 3):
        n_slots, pooled = _csa_pool_f64(w, xn, wid)
        assert n_slots == (4 if wid == 0 else 8)
        normed = pooled / torch.sqrt((pooled ** 2).mean() + 1e-6) * w["c_norm_w"].double()
        expected = rope_f64(normed, wid * 4 * yarn_freqs_f64())
        torch.testing.assert_close(out["entries"][0][wid].double(), expected, rtol=1e-4, atol=1e-4)
    # indexer compressor: same structure at d = index_dim, stored Hadamard-rotated
    n_slots, pooled = _csa_pool_f64(w, xn, 2, names=("ic_kv", "ic_gate", "ic_ape"), d=128)
    normed = pooled / torch.sqrt((pooled ** 2).mean() + 1e-6) * w["ic_norm_w"].double()
    expected = rope_f64(normed, 8 * yarn_freqs_f64()) @ sylvester_hadamard(128).double()
    torch.testing.assert_close(out["index_entries"][0][2].double(), expected, rtol=1e-4, atol=1e-4)


def test_csa_perturbing_block_w_minus_1_changes_only_entries_w_minus_1_and_w():
    w = make_weights("csa")
    x = make_x(1, 20)
    base = layer_reference("csa", CFG, w, x, [19], 1)
    x2 = x.clone()
    x2[0, 6] += 1.0                                           # token 6 lies in block 1
    pert = layer_reference("csa", CFG, w, x2, [19], 1)
    for key in ("entries", "index_entries"):
        changed = [(base[key][0][i] - pert[key][0][i]).abs().max().item() > 1e-6 for i in range(5)]
        assert changed == [False, True, True, False, False], (key, changed)


# ------------------------------------------------------------------------------------------ visibility


def test_csa_t2_sees_no_entry_and_t3_sees_entry_0():
    w = make_weights("csa")
    x = make_x(1, 8)
    out = layer_reference("csa", CFG, w, x, [0], 8)
    sc = out["index_scores"][0]
    assert sc.shape == (8, 2)
    assert torch.isinf(sc[:3]).all()                           # t = 0, 1, 2
    assert torch.isfinite(sc[3, 0]) and torch.isinf(sc[3, 1])  # t = 3 closes block 0
    assert torch.isfinite(sc[7]).all()
    assert out["selection"][(0, 2)] == [] and out["selection"][(0, 3)] == [0]
    # entry 0 really is attended at t = 3: removing it changes y
    no_cmp = layer_reference("csa", CFG, w, x, [3], 1, selection={(0, 0): []})
    with_cmp = layer_reference("csa", CFG, w, x, [3], 1)
    torch.testing.assert_close(with_cmp["y"][0, 0], out["y"][0, 3], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(no_cmp["y"], with_cmp["y"], atol=1e-5)
    with pytest.raises(ValueError):
        layer_reference("csa", CFG, w, x, [3], 1, selection={(0, 0): [1]})
    with pytest.raises(ValueError):
        layer_reference("csa", CFG, w, x, [3], 1, selection={(0, 0): [0, 0]})


def test_indexer_selects_min_k_visible_entries_only():
    w = make_weights("csa")
    x = make_x(2, 40)
    out = layer_reference("csa", CFG, w, x, [20, 33], 6)
    K = CFG["cmp_topk"]
    for b, P in enumerate((20, 33)):
        for s in range(6):
            t = P + s
            n_vis = (t + 1) // 4
            sel = out["selection"][(b, s)]
            assert len(sel) == min(K, n_vis) and all(0 <= i < n_vis for i in sel)
            sc = out["index_scores"][b, s]
            assert torch.isinf(sc[n_vis:]).all() and torch.isfinite(sc[:n_vis]).all()
            ok, why = topk_sets_match(sc, sel, K, 0.0)
            assert ok, why
            # the selection is exactly the top-K by score
            assert set(sel) == set(torch.topk(sc[:n_vis], min(K, n_vis)).indices.tolist())


def test_indexer_score_formula_relu_and_negative_weights():
    cfg = dict(CFG, index_heads=2)
    w = make_weights("csa", cfg, seed=3)
    x = make_x(1, 24, seed=4)
    out = layer_reference("csa", cfg, w, x, [23], 1)
    t, ID = 23, cfg["index_dim"]
    xn = rms_norm(x[0, t].double(), w["attn_norm_w"].double(), 1e-6)
    qr = rms_norm(xn @ w["wq_a"].double(), w["q_norm_w"].double(), 1e-6)
    hadamard = sylvester_hadamard(ID).double()
    q_heads = [rope_f64((qr @ w["wi_q"].double())[h * ID:(h + 1) * ID], t * yarn_freqs_f64()) @ hadamard
               for h in range(2)]
    weights = (xn @ w["wi_w"].double()) / math.sqrt(ID) / math.sqrt(2)
    keys = out["index_entries"][0].double()                    # Hadamard-rotated: (qH).(kH) = q.k
    dots = torch.stack([keys @ qh for qh in q_heads])          # [2, 6]
    expected = (weights[:, None] * dots.clamp(min=0)).sum(0)
    torch.testing.assert_close(out["index_scores"][0, 0].double(), expected, rtol=1e-4, atol=1e-5)

    # Only head 0 weighted, with a negative weight: every score is <= 0, and entries whose dot product is
    # negative get exactly 0 (ReLU) and therefore win the top-k.
    w2 = dict(w)
    wi_w = torch.zeros_like(w["wi_w"])
    wi_w[:, 0] = -rms_norm(x[0, t], w["attn_norm_w"], 1e-6)   # weight_0 = -|xn_t|^2 * scale < 0
    w2["wi_w"] = wi_w
    out2 = layer_reference("csa", cfg, w2, x, [23], 1)
    sc = out2["index_scores"][0, 0]
    neg = (dots[0] < 0).tolist()
    assert any(neg) and not all(neg), "seed must give mixed signs of q.k for this check"
    assert (sc <= 0).all()
    for i, is_neg in enumerate(neg):
        assert (sc[i] == 0) if is_neg else (sc[i] < 0)
    zero_ids = [i for i, is_neg in enumerate(neg) if is_neg]
    sel = out2["selection"][(0, 0)]
    assert set(zero_ids[:3]) <= set(sel) if len(zero_ids) >= 3 else set(zero_ids) <= set(sel)
    if len(zero_ids) >= 3:                                     # ties at 0: the lower ids win
        assert sel == sorted(zero_ids[:3])


def test_window_boundary_swa():
    w = make_weights("swa")
    x = make_x(1, 30)
    t, W = 20, CFG["window"]
    base = layer_reference("swa", CFG, w, x, [t], 1)["y"]
    x_out = x.clone()
    x_out[0, t - W] += 3.0                                     # just outside the window
    x_in = x.clone()
    x_in[0, t - W + 1] += 3.0                                  # oldest position inside the window
    assert torch.equal(layer_reference("swa", CFG, w, x_out, [t], 1)["y"], base)
    assert not torch.allclose(layer_reference("swa", CFG, w, x_in, [t], 1)["y"], base, atol=1e-5)


def test_hca_entry_0_visible_from_t127():
    w = make_weights("hca")
    x = make_x(1, 130)
    x2 = x.clone()
    x2[0, 0] += 3.0                                            # far outside the window, inside block 0
    a = layer_reference("hca", CFG, w, x, [125], 4)["y"]
    b = layer_reference("hca", CFG, w, x2, [125], 4)["y"]
    assert torch.equal(a[0, :2], b[0, :2])                      # t = 125, 126
    for s in (2, 3):                                            # t = 127, 128 see entry 0
        assert not torch.allclose(a[0, s], b[0, s], atol=1e-5), s


def test_output_is_derotated_so_swa_depends_on_relative_positions_only():
    # With a full window, shifting every token by D positions leaves y unchanged only if o is de-rotated at t
    # (o' = sum_j p_j R_{p_j - t} k'_j). The pre-de-rotation output o does depend on the absolute position.
    w = make_weights("swa")
    x = make_x(1, 60)
    D, P = 23, 30
    a = layer_reference("swa", CFG, w, x, [P], 2)
    b = layer_reference("swa", CFG, w, torch.cat([make_x(1, D, seed=5), x], dim=1), [P + D], 2)
    torch.testing.assert_close(b["y"], a["y"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b["o_derot"], a["o_derot"], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(b["o"], a["o"], atol=1e-3)


# ------------------------------------------------------------------------------------------ invariance


@pytest.mark.parametrize("kind", ["swa", "hca", "csa"])
def test_causality(kind):
    w = make_weights(kind)
    P = 125 if kind == "hca" else 9
    x = make_x(1, P + 8)
    base = layer_reference(kind, CFG, w, x, [P], 4)
    x2 = x.clone()
    x2[0, P + 2:] += torch.randn(x2[0, P + 2:].shape, generator=torch.Generator().manual_seed(9))
    pert = layer_reference(kind, CFG, w, x2, [P], 4)
    torch.testing.assert_close(pert["y"][0, :2], base["y"][0, :2], rtol=0, atol=1e-6)
    assert not torch.allclose(pert["y"][0, 2:], base["y"][0, 2:], atol=1e-5)


@pytest.mark.parametrize("kind,P", [("swa", 6), ("csa", 6), ("csa", 11), ("hca", 126)])
def test_seq3_equals_three_single_token_steps(kind, P):
    w = make_weights(kind)
    x = make_x(1, P + 3)
    multi = layer_reference(kind, CFG, w, x, [P], 3)
    for s in range(3):
        one = layer_reference(kind, CFG, w, x, [P + s], 1)
        torch.testing.assert_close(one["y"][0, 0], multi["y"][0, s], rtol=1e-5, atol=1e-6)
        if kind == "csa":
            assert one["selection"][(0, 0)] == multi["selection"][(0, s)]


@pytest.mark.parametrize("kind", ["swa", "csa"])
def test_batch_rows_with_different_start_pos_are_independent(kind):
    w = make_weights(kind)
    x = make_x(2, 30)
    both = layer_reference(kind, CFG, w, x, [5, 26], 2)
    for b, P in enumerate((5, 26)):
        alone = layer_reference(kind, CFG, w, x[b:b + 1], [P], 2)
        torch.testing.assert_close(alone["y"][0], both["y"][b], rtol=1e-5, atol=1e-6)
        assert both["window_keys"][b].shape == (P + 2, 128)
    if kind == "csa":
        assert both["index_scores"].shape == (2, 2, 28 // 4)
        assert len(both["entries"][0]) == 7 // 4 and len(both["entries"][1]) == 28 // 4


def test_q_and_kv_agree_with_stage_reference_and_bf16_inputs_work():
    w = make_weights("csa")
    x = make_x(2, 12)
    out = layer_reference("csa", CFG, w, x, [3, 9], 2)
    cos, sin = rope_tables_from_spec("csa", 64, CFG["max_pos"])
    stage_in = {k: w[k] for k in ("attn_norm_w", "wq_a", "q_norm_w", "wq_b", "wkv", "kv_norm_w")}
    stage_in.update(x=torch.stack([x[0, 3:5], x[1, 9:11]]), start_pos=torch.tensor([3, 9]),
                    rope_cos=cos, rope_sin=sin)
    stage = qkv_proj_rope_reference(stage_in, dict(CFG, batch=2, seq=2))
    torch.testing.assert_close(out["q"], stage["q"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["kv"], stage["kv"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["qr"], stage["qr"], rtol=1e-5, atol=1e-5)
    # bf16 weights and inputs are accepted and converted to float32
    w16 = {k: v.to(torch.bfloat16) for k, v in w.items()}
    out16 = layer_reference("csa", CFG, w16, x.to(torch.bfloat16), [3, 9], 2)
    assert out16["y"].dtype == torch.float32 and torch.isfinite(out16["y"]).all()


def test_selection_override_with_own_selection_is_identity():
    w = make_weights("csa")
    x = make_x(1, 30)
    base = layer_reference("csa", CFG, w, x, [24], 3)
    padded = {key: list(reversed(ids)) + [-1, -1] for key, ids in base["selection"].items()}
    again = layer_reference("csa", CFG, w, x, [24], 3, selection=padded)
    assert torch.equal(again["y"], base["y"])
    other = {(0, 0): [0, 1, 2]}
    if sorted(base["selection"][(0, 0)]) != [0, 1, 2]:
        changed = layer_reference("csa", CFG, w, x, [24], 3, selection=other)
        assert not torch.allclose(changed["y"][0, 0], base["y"][0, 0], atol=1e-6)
        assert torch.equal(changed["y"][0, 1:], base["y"][0, 1:])


# ------------------------------------------------------------------------------------------ topk_sets_match


def test_topk_sets_match():
    inf = float("-inf")
    scores = torch.tensor([0.5, 0.9, 0.7, 0.7 - 1e-7, 0.1, inf, inf])
    assert topk_sets_match(scores, [1, 2], 2, 1e-5) == (True, "")
    assert topk_sets_match(scores, [2, 1, -1, -1], 2, 1e-5)[0]        # order and padding do not matter
    assert topk_sets_match(scores, [1, 3], 2, 1e-5)[0]                 # tie swap at the k-th score
    ok, why = topk_sets_match(scores, [1, 3], 2, 0.0)
    assert not ok and "eps" in why
    ok, why = topk_sets_match(scores, [1, 0], 2, 1e-3)                 # real swap: 0.5 vs 0.7
    assert not ok and why
    assert not topk_sets_match(scores, [1, 5], 2, 1.0)[0]              # invisible id
    assert not topk_sets_match(scores, [1, 1], 2, 1.0)[0]              # duplicate
    assert not topk_sets_match(scores, [1], 2, 1.0)[0]                 # too few
    assert topk_sets_match(scores, [0, 1, 2, 3, 4], 9, 0.0)[0]          # k > visible: all visible
    assert not topk_sets_match(scores, [0, 1, 2, 3], 9, 0.0)[0]
    assert topk_sets_match(torch.full((3,), inf), [-1, -1], 4, 0.0)[0]  # nothing visible
