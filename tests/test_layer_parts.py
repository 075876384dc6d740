"""benchmarks/layer_parts.py (issue 20's table): a layer's sum of stages follows its parts with their signs, the
hand-written columns appear only for flash-size rows, and the row filter refuses a pattern that names no row."""
from __future__ import annotations

import importlib.util
import os
import sys

_BENCH = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
sys.path.insert(0, _BENCH)  # layer_parts imports run_all as its sibling
_spec = importlib.util.spec_from_file_location("layer_parts", os.path.join(_BENCH, "layer_parts.py"))
layer_parts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(layer_parts)


def _rows(config: str, **us):
    return {k: {"config": config, "aicore_us": v, "tasks": 1, "values": "equal to the interpreter"}
            for k, v in us.items()}


def test_hca_sum_takes_the_o_projection_as_sparse_attn_minus_its_core():
    res = _rows("flash", decode_hca=900.0, qkv_proj_rope=300.0, compressor_m128=200.0, hca_core=100.0,
                sparse_attn_m0=350.0, swa_core=90.0)
    line = next(l for l in layer_parts.tables(res) if l.startswith("| decode_hca"))
    # 300 + 200 + 100 + (350 - 90) = 860; hand-written parts 457.9 + 102.1 + 258.2
    assert line == "| decode_hca | 900.0 | 860.0 | 1.05 | 818.2 |"


def test_hand_written_columns_only_at_flash():
    tiny = layer_parts.tables(_rows("tiny", qkv_proj_rope=40.0))
    flash = layer_parts.tables(_rows("flash", qkv_proj_rope=400.0))
    assert "| qkv_proj_rope | 40.0 | 1 | none | — | — | — | — | equal |" in tiny
    assert "| qkv_proj_rope | 400.0 ✓ | 1 | mla_prolog_v4 | 457.9 | 0.87× | 457.9 | 56.0 | equal |" in flash


def test_only_naming_no_row_is_refused(capsys):
    assert layer_parts.main(["--only", "no_such_row*"]) == 2
    assert "names no row" in capsys.readouterr().err
