"""RoPE tables built by attnc from the config follow the per-layer profile of spec §1/§2."""
import math

import torch

from attnc.kernels_src import resolve_config
from attnc.kernels_src.inputs import rope_frequencies, rope_profile, rope_tables, yarn_correction_range


def test_yarn_correction_range_for_compressed_layers_is_15_to_25():
    assert yarn_correction_range(64, 160000.0, 65536, 32.0, 1.0) == (15, 25)


def test_yarn_keeps_low_pairs_and_divides_high_pairs_by_16():
    profile = rope_profile(4)
    plain = 160000.0 ** (-torch.arange(32, dtype=torch.float64) * 2 / 64)
    yarn = rope_frequencies(64, profile["theta"], profile["yarn"])
    assert torch.equal(yarn[:16], plain[:16])
    assert torch.allclose(yarn[25:], plain[25:] / 16, rtol=0, atol=0)
    assert ((yarn[16:25] < plain[16:25]) & (yarn[16:25] > plain[16:25] / 16)).all()


def test_profile_is_per_layer_kind():
    assert rope_profile(0) == dict(theta=10000.0, yarn=None)
    assert rope_profile(4) == rope_profile(128)
    assert rope_profile(4)["theta"] == 160000.0


def test_window_only_tables_are_plain_rope():
    cfg = resolve_config("tiny", {"compress_ratio": 0})
    cos, sin = rope_tables(cfg)
    t, i = 7, 3
    angle = t * 10000.0 ** (-2 * i / 64)
    assert math.isclose(cos[t, i].item(), math.cos(angle), rel_tol=1e-6)
    assert math.isclose(sin[t, i].item(), math.sin(angle), rel_tol=1e-6)
