"""Self-checks of the independent FP32 reference (tests/reference) against hand-derived facts of the spec.

These tests use nothing from attnc: inputs and RoPE tables are built here, so a wrong reference cannot be
confirmed by an equally wrong compiler.
"""
from __future__ import annotations

import math

import pytest
import torch

from tests.reference.dsv4_reference import (
    qkv_proj_rope_reference,
    rope,
    sparse_attn_reference,
)

TINY = {
    "batch": 2, "seq": 2, "dim": 64, "n_heads": 4, "head_dim": 128, "rope_dim": 64,
    "q_lora_rank": 32, "o_lora_rank": 32, "o_groups": 2, "window": 8, "compress_ratio": 4,
    "n_cmp": 8, "cmp_topk": 4, "max_pos": 64, "norm_eps": 1e-6,
}


def tables(cfg: dict, theta: float = 10000.0):
    half = cfg["rope_dim"] // 2
    freqs = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / cfg["rope_dim"])
    angles = torch.arange(cfg["max_pos"], dtype=torch.float64)[:, None] * freqs[None, :]
    return torch.cos(angles).float(), torch.sin(angles).float()


def attn_inputs(cfg: dict, start_pos, seed: int = 0, cmp_idx=None) -> dict:
    g = torch.Generator().manual_seed(seed)
    B, S, H, hd = cfg["batch"], cfg["seq"], cfg["n_heads"], cfg["head_dim"]
    W, NC, KC, G, OL, D = cfg["window"], cfg["n_cmp"], cfg["cmp_topk"], cfg["o_groups"], cfg["o_lora_rank"], cfg["dim"]
    cos, sin = tables(cfg)
    if cmp_idx is None:
        cmp_idx = torch.full((B, S, KC), -1, dtype=torch.int32)
        for j in range(min(KC, NC)):
            cmp_idx[:, :, j] = j
    return {
        "q": torch.randn(B, S, H, hd, generator=g),
        "kv_ring": torch.randn(B, W, hd, generator=g),
        "kv_step": torch.randn(B, S, hd, generator=g),
        "kv_cmp": torch.randn(B, NC, hd, generator=g),
        "cmp_idx": cmp_idx,
        "start_pos": torch.tensor(start_pos, dtype=torch.int32),
        "attn_sink": torch.randn(H, generator=g),
        "rope_cos": cos,
        "rope_sin": sin,
        "wo_a": torch.randn(G, (H // G) * hd, OL, generator=g) / math.sqrt((H // G) * hd),
        "wo_b": torch.randn(G * OL, D, generator=g) / math.sqrt(G * OL),
    }


def qkv_inputs(cfg: dict, start_pos, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    B, S, D, H, hd, QL = cfg["batch"], cfg["seq"], cfg["dim"], cfg["n_heads"], cfg["head_dim"], cfg["q_lora_rank"]
    cos, sin = tables(cfg)
    return {
        "x": torch.randn(B, S, D, generator=g),
        "attn_norm_w": 1 + 0.1 * torch.randn(D, generator=g),
        "wq_a": torch.randn(D, QL, generator=g) / math.sqrt(D),
        "q_norm_w": 1 + 0.1 * torch.randn(QL, generator=g),
        "wq_b": torch.randn(QL, H * hd, generator=g) / math.sqrt(QL),
        "wkv": torch.randn(D, hd, generator=g) / math.sqrt(D),
        "kv_norm_w": 1 + 0.1 * torch.randn(hd, generator=g),
        "start_pos": torch.tensor(start_pos, dtype=torch.int32),
        "rope_cos": cos,
        "rope_sin": sin,
    }


# ------------------------------------------------------------------------------------------ RoPE


def test_rope_forward_then_inverse_is_identity():
    cos, sin = tables(TINY)
    u = torch.randn(3, 128)
    for t in (0, 1, 17, 63):
        back = rope(rope(u, cos[t], sin[t]), cos[t], sin[t], inverse=True)
        torch.testing.assert_close(back, u, rtol=1e-6, atol=1e-6)


def test_rope_pairs_are_interleaved_on_the_trailing_dims():
    cos, sin = tables(TINY)
    hd, rd, t = 128, 64, 5
    for i in (0, 1, 31):
        u = torch.zeros(hd)
        u[hd - rd + 2 * i] = 1.0
        r = rope(u, cos[t], sin[t])
        expected = torch.zeros(hd)
        expected[hd - rd + 2 * i] = cos[t, i]
        expected[hd - rd + 2 * i + 1] = sin[t, i]
        torch.testing.assert_close(r, expected)
        # the partner dim: b=1 -> (a', b') = (-sin, cos)
        u = torch.zeros(hd)
        u[hd - rd + 2 * i + 1] = 1.0
        r = rope(u, cos[t], sin[t])
        expected = torch.zeros(hd)
        expected[hd - rd + 2 * i] = -sin[t, i]
        expected[hd - rd + 2 * i + 1] = cos[t, i]
        torch.testing.assert_close(r, expected)
    # the leading hd-rd dims are untouched
    u = torch.randn(hd)
    assert torch.equal(rope(u, cos[t], sin[t])[: hd - rd], u[: hd - rd])


# ------------------------------------------------------------------------------------------ qkv_proj_rope


def test_qkv_shapes_and_per_head_norm():
    cfg = TINY
    out = qkv_proj_rope_reference(qkv_inputs(cfg, [0, 9]), cfg)
    assert out["q"].shape == (2, 2, 4, 128) and out["kv"].shape == (2, 2, 128) and out["qr"].shape == (2, 2, 32)
    # weightless per-head RMSNorm, then an orthogonal rotation: every head has mean square ~1
    ms = out["q"].pow(2).mean(-1)
    torch.testing.assert_close(ms, torch.ones_like(ms), rtol=1e-4, atol=1e-4)


def test_qkv_position_only_changes_rope_dims():
    cfg = TINY
    inputs = qkv_inputs(cfg, [3, 11])
    inputs["x"][1] = inputs["x"][0]
    out = qkv_proj_rope_reference(inputs, cfg)
    hd, rd = cfg["head_dim"], cfg["rope_dim"]
    torch.testing.assert_close(out["qr"][0], out["qr"][1])
    torch.testing.assert_close(out["q"][0, ..., : hd - rd], out["q"][1, ..., : hd - rd])
    torch.testing.assert_close(out["kv"][0, ..., : hd - rd], out["kv"][1, ..., : hd - rd])
    assert not torch.allclose(out["q"][0, ..., hd - rd:], out["q"][1, ..., hd - rd:])
    # de-rotating at each token's own position gives identical vectors
    cos, sin = inputs["rope_cos"], inputs["rope_sin"]
    for s in range(cfg["seq"]):
        k0 = rope(out["kv"][0, s], cos[3 + s], sin[3 + s], inverse=True)
        k1 = rope(out["kv"][1, s], cos[11 + s], sin[11 + s], inverse=True)
        torch.testing.assert_close(k0, k1, rtol=1e-5, atol=1e-5)


def test_qkv_accepts_bf16_inputs():
    cfg = TINY
    inputs = qkv_inputs(cfg, [0, 1])
    bf = {k: (v.to(torch.bfloat16) if k not in ("start_pos", "rope_cos", "rope_sin") else v) for k, v in inputs.items()}
    out = qkv_proj_rope_reference(bf, cfg)
    assert out["q"].dtype == torch.float32 and torch.isfinite(out["q"]).all()


# ------------------------------------------------------------------------------------------ sparse_attn


def test_single_visible_key_is_scaled_by_sink_weight():
    """t = 0: only the token itself is visible (no block complete), so o = k * e^l / (e^l + e^sink)."""
    cfg = TINY
    inputs = attn_inputs(cfg, [0, 0])
    out = sparse_attn_reference(inputs, cfg)
    hd = cfg["head_dim"]
    for b in range(cfg["batch"]):
        k = inputs["kv_step"][b, 0]
        l = inputs["q"][b, 0] @ k / math.sqrt(hd)  # [H]
        w = torch.exp(l) / (torch.exp(l) + torch.exp(inputs["attn_sink"]))
        torch.testing.assert_close(out["core"][b, 0], w[:, None] * k[None, :], rtol=1e-5, atol=1e-6)


def test_sink_minus_inf_is_plain_softmax_without_nan():
    cfg = TINY
    inputs = attn_inputs(cfg, [0, 0])
    inputs["attn_sink"] = torch.full((cfg["n_heads"],), -math.inf)
    out = sparse_attn_reference(inputs, cfg)
    assert torch.isfinite(out["core"]).all() and torch.isfinite(out["out"]).all()
    # t = 0, one key: softmax weight 1, the output is the key itself
    for b in range(cfg["batch"]):
        torch.testing.assert_close(out["core"][b, 0], inputs["kv_step"][b, 0].expand(cfg["n_heads"], -1))
    # t = 1: two keys, plain softmax
    b = 0
    K = inputs["kv_step"][b, :2]
    p = torch.softmax(inputs["q"][b, 1] @ K.T / math.sqrt(cfg["head_dim"]), dim=-1)
    torch.testing.assert_close(out["core"][b, 1], p @ K, rtol=1e-5, atol=1e-6)


def test_invisible_ring_slots_are_never_read():
    """Ring slots holding positions >= start_pos are garbage: NaN there must not reach the output."""
    cfg = TINY
    inputs = attn_inputs(cfg, [0, 3])
    ref = sparse_attn_reference(inputs, cfg)
    inputs["kv_ring"][0] = math.nan            # start_pos 0: nothing in the ring is valid
    inputs["kv_ring"][1, 3:] = math.nan        # start_pos 3: only slots 0..2 are valid
    got = sparse_attn_reference(inputs, cfg)
    assert torch.isfinite(got["core"]).all() and torch.isfinite(got["out"]).all()
    assert torch.equal(got["core"], ref["core"]) and torch.equal(got["out"], ref["out"])


def test_window_lower_bound():
    """start_pos = 20, W = 8: token s = 0 (t = 20) sees positions 13..20; position 12 lived in slot 12 mod 8 = 4,
    which now holds position 12 (= t - W) and must not be read; position 13 (slot 5) must be."""
    cfg = dict(TINY, compress_ratio=0)
    inputs = attn_inputs(cfg, [20, 20])
    ref = sparse_attn_reference(inputs, cfg)["core"]
    changed = dict(inputs, kv_ring=inputs["kv_ring"].clone())
    changed["kv_ring"][:, 12 % 8] = 100.0
    out = sparse_attn_reference(changed, cfg)["core"]
    assert torch.equal(out[:, 0], ref[:, 0])
    # token s = 1 (t = 21) sees 14..21, so slot 5 (position 13) is outside its window but inside token 0's
    changed = dict(inputs, kv_ring=inputs["kv_ring"].clone())
    changed["kv_ring"][:, 13 % 8] = 100.0
    out = sparse_attn_reference(changed, cfg)["core"]
    assert not torch.allclose(out[:, 0], ref[:, 0])
    assert torch.equal(out[:, 1], ref[:, 1])


def test_later_step_row_never_influences_earlier_token():
    cfg = TINY
    inputs = attn_inputs(cfg, [30, 3])
    ref = sparse_attn_reference(inputs, cfg)
    inputs["kv_step"][:, 1] = 50.0
    got = sparse_attn_reference(inputs, cfg)
    assert torch.equal(got["core"][:, 0], ref["core"][:, 0])
    assert torch.equal(got["out"][:, 0], ref["out"][:, 0])
    assert not torch.allclose(got["core"][:, 1], ref["core"][:, 1])


def test_listed_but_not_yet_complete_entry_changes_nothing():
    """t = 2: floor(3/4) = 0 entries complete; t = 3: entry 0 complete (w < floor((t+1)/m)), entry 1 not."""
    cfg = TINY
    B, S, KC = cfg["batch"], cfg["seq"], cfg["cmp_topk"]
    none = torch.full((B, S, KC), -1, dtype=torch.int32)
    listed = none.clone()
    listed[:, :, 0] = 0
    listed[:, :, 1] = 1
    listed[:, :, 2] = cfg["n_cmp"] + 3      # out of range: ignored
    base = attn_inputs(cfg, [2, 2], cmp_idx=none)
    ref = sparse_attn_reference(base, cfg)["core"]
    got = sparse_attn_reference(dict(base, cmp_idx=listed), cfg)["core"]
    assert torch.equal(got[:, 0], ref[:, 0])            # t = 2: nothing visible yet
    assert not torch.allclose(got[:, 1], ref[:, 1])     # t = 3: entry 0 now visible
    # entry 1 (complete at t = 7) is never visible here: its row does not matter
    changed = dict(base, cmp_idx=listed, kv_cmp=base["kv_cmp"].clone())
    changed["kv_cmp"][:, 1:] = math.nan
    again = sparse_attn_reference(changed, cfg)["core"]
    assert torch.equal(again, got)


def test_duplicate_listed_ids_count_once():
    cfg = TINY
    B, S, KC = cfg["batch"], cfg["seq"], cfg["cmp_topk"]
    once = torch.full((B, S, KC), -1, dtype=torch.int32)
    once[:, :, 0] = 2
    once[:, :, 1] = 0
    twice = once.clone()
    twice[:, :, 2] = 2
    twice[:, :, 3] = 0
    inputs = attn_inputs(cfg, [12, 20], cmp_idx=once)
    a = sparse_attn_reference(inputs, cfg)["core"]
    b = sparse_attn_reference(dict(inputs, cmp_idx=twice), cfg)["core"]
    torch.testing.assert_close(a, b)


def test_swa_layer_ignores_compressed_entries():
    cfg = dict(TINY, compress_ratio=0)
    inputs = attn_inputs(cfg, [10, 30])
    ref = sparse_attn_reference(inputs, cfg)
    inputs["kv_cmp"][:] = math.nan
    got = sparse_attn_reference(inputs, cfg)
    assert torch.equal(got["core"], ref["core"]) and torch.equal(got["out"], ref["out"])


def test_output_is_relative_position_invariant_after_derotation():
    """Window 1, no compression: only the token itself is visible. With q_t = R_t q0 and k_t = R_t k0 the logit
    and the de-rotated output do not depend on t."""
    cfg = dict(TINY, window=1, compress_ratio=0)
    inputs = attn_inputs(cfg, [0, 0])
    cos, sin = inputs["rope_cos"], inputs["rope_sin"]
    q0, k0 = inputs["q"][0, 0].clone(), inputs["kv_step"][0, 0].clone()
    positions = [[5, 40], [6, 41]]
    inputs["start_pos"] = torch.tensor([5, 40], dtype=torch.int32)
    for b in range(2):
        for s in range(2):
            t = positions[s][b]
            inputs["q"][b, s] = rope(q0, cos[t], sin[t])
            inputs["kv_step"][b, s] = rope(k0, cos[t], sin[t])
    out = sparse_attn_reference(inputs, cfg)
    first = out["out"][0, 0]
    for b in range(2):
        for s in range(2):
            torch.testing.assert_close(out["out"][b, s], first, rtol=1e-4, atol=1e-5)
    # while core (before de-rotation) does depend on t
    assert not torch.allclose(out["core"][0, 0], out["core"][1, 0])


def test_output_groups_are_contiguous_heads():
    """G = 2, H = 4: group 0 = heads 0,1. With wo_a[1] = 0, only heads 0 and 1 can reach the output."""
    cfg = TINY
    inputs = attn_inputs(cfg, [4, 9])
    inputs["wo_a"][1] = 0.0
    ref = sparse_attn_reference(inputs, cfg)["out"]
    changed = dict(inputs, q=inputs["q"].clone())
    changed["q"][:, :, 2:] = torch.randn_like(changed["q"][:, :, 2:])
    assert torch.equal(sparse_attn_reference(changed, cfg)["out"], ref)
    changed = dict(inputs, q=inputs["q"].clone())
    changed["q"][:, :, 1] = torch.randn_like(changed["q"][:, :, 1])
    assert not torch.allclose(sparse_attn_reference(changed, cfg)["out"], ref)


def test_core_only_without_output_weights():
    cfg = TINY
    inputs = attn_inputs(cfg, [1, 5])
    core_only = {k: v for k, v in inputs.items() if k not in ("wo_a", "wo_b", "rope_cos", "rope_sin")}
    out = sparse_attn_reference(core_only, cfg)
    assert set(out) == {"core"}
    assert torch.equal(out["core"], sparse_attn_reference(inputs, cfg)["core"])


@pytest.mark.parametrize("m,t,expected_visible", [(4, 2, 0), (4, 3, 1), (4, 7, 2), (128, 126, 0), (128, 127, 1)])
def test_block_visibility_bound(m, t, expected_visible):
    """w < floor((t+1)/m): the last token of a block sees that block's own entry."""
    cfg = dict(TINY, compress_ratio=m, seq=1, max_pos=256, n_cmp=4)
    B = cfg["batch"]
    idx = torch.tensor([0, 1, 2, 3], dtype=torch.int32).expand(B, 1, 4).clone()
    inputs = attn_inputs(cfg, [t, t], cmp_idx=idx)
    ref = sparse_attn_reference(inputs, cfg)["core"]
    for w in range(4):
        changed = dict(inputs, kv_cmp=inputs["kv_cmp"].clone())
        changed["kv_cmp"][:, w] = 10.0
        same = torch.equal(sparse_attn_reference(changed, cfg)["core"], ref)
        assert same == (w >= expected_visible), f"entry {w} at t={t}, m={m}"


def test_flash_sizes_run_quickly():
    import time
    cfg = {"batch": 2, "seq": 2, "dim": 4096, "n_heads": 64, "head_dim": 512, "rope_dim": 64, "q_lora_rank": 1024,
           "o_lora_rank": 1024, "o_groups": 8, "window": 128, "compress_ratio": 4, "n_cmp": 64, "cmp_topk": 16,
           "max_pos": 512, "norm_eps": 1e-6}
    t0 = time.perf_counter()
    q = qkv_proj_rope_reference(qkv_inputs(cfg, [0, 300]), cfg)
    inputs = attn_inputs(cfg, [126, 300])
    inputs["q"] = q["q"]
    out = sparse_attn_reference(inputs, cfg)
    assert torch.isfinite(out["out"]).all()
    assert time.perf_counter() - t0 < 30
