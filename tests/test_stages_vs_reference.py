"""The stages, interpreted at tensor level and after every pass of the default pipeline, against the
independent FP32 reference (tests/reference), on the decode edge cases of spec §7/§8."""
from __future__ import annotations

import functools
import math

import pytest
import torch

from attnc.ir.interpreter import run_module
from attnc.kernels_src import STAGES, build_stage, resolve_config
from attnc.kernels_src.inputs import make_inputs
from attnc.passes import DEFAULT_PIPELINE
from attnc.passes.verify import normalised_error, run_pipeline
from tests.reference.dsv4_reference import qkv_proj_rope_reference, sparse_attn_reference

# bf16 outputs against an FP32 reference: a few bf16 ulps of the largest value, plus bf16 exp weights (tiled)
TOLERANCE = 3e-2

CONFIGS = {
    "tiny": {},
    "tiny-s1": {"seq": 1},
    "tiny-long": {"max_pos": 256, "n_cmp": 64, "cmp_topk": 8},
    "tiny-m128": {"max_pos": 512, "compress_ratio": 128, "n_cmp": 4, "cmp_topk": 4},
    "tiny-swa": {"compress_ratio": 0},
    "flash-b2": {"batch": 2},
    "flash-s1": {"batch": 2, "seq": 1},
}


def config(name: str) -> dict:
    base = "flash" if name.startswith("flash") else "tiny"
    return resolve_config(base, CONFIGS[name])


@functools.lru_cache(maxsize=None)
def compiled(stage: str, cfg_name: str):
    """(tensor-level module, tile-level module) — start_pos and all data are inputs, so compile once."""
    cfg = config(cfg_name)
    tensor_mod = build_stage(STAGES[stage], cfg)
    tile_mod = build_stage(STAGES[stage], cfg)
    run_pipeline(tile_mod, DEFAULT_PIPELINE)
    return tensor_mod, tile_mod


def reference(stage: str, inputs: dict, cfg: dict) -> dict:
    if stage == "qkv_proj_rope":
        return qkv_proj_rope_reference(inputs, cfg)
    out = sparse_attn_reference(inputs, cfg)
    return {"core": out["core"]} if stage == "sparse_attn_core" else {"out": out["out"]}


def check(stage: str, cfg_name: str, inputs: dict) -> dict:
    cfg = config(cfg_name)
    tensor_mod, tile_mod = compiled(stage, cfg_name)
    names = STAGES[stage].outputs
    args = list(inputs.values())
    tensor_out = dict(zip(names, run_module(tensor_mod, args)))
    tile_out = dict(zip(names, run_module(tile_mod, args)))
    ref = reference(stage, inputs, cfg)
    errors = {}
    for n in names:
        assert torch.isfinite(tile_out[n].float()).all(), f"{n}: non-finite values"
        errors[n] = (normalised_error(tensor_out[n].float(), ref[n].float()),
                     normalised_error(tile_out[n].float(), ref[n].float()))
        assert errors[n][0] <= TOLERANCE, f"{stage}/{n} tensor level vs reference: {errors[n][0]:.3e}"
        assert errors[n][1] <= TOLERANCE, f"{stage}/{n} tile level vs reference: {errors[n][1]:.3e}"
    return errors


def attn_inputs(stage: str, cfg_name: str, start_pos, seed: int = 0, **overrides) -> dict:
    cfg = config(cfg_name)
    given = {"start_pos": torch.tensor(start_pos, dtype=torch.int32), **overrides}
    return make_inputs(STAGES[stage], cfg, seed, given)


# ------------------------------------------------------------------------------------------ qkv_proj_rope


@pytest.mark.parametrize("cfg_name", ["tiny", "tiny-s1", "flash-b2"])
def test_qkv_proj_rope(cfg_name):
    cfg = config(cfg_name)
    sp = [0, cfg["max_pos"] - cfg["seq"]][: cfg["batch"]]
    check("qkv_proj_rope", cfg_name, attn_inputs("qkv_proj_rope", cfg_name, sp))


def test_qkv_rope_uses_each_tokens_own_position():
    """Two tokens with identical x at different positions get different q rope lanes, identical nope lanes."""
    cfg = config("tiny")
    inputs = attn_inputs("qkv_proj_rope", "tiny", [5, 9])
    inputs["x"][:, 1] = inputs["x"][:, 0]
    _, tile_mod = compiled("qkv_proj_rope", "tiny")
    q = run_module(tile_mod, list(inputs.values()))[0]
    hd, rd = cfg["head_dim"], cfg["rope_dim"]
    assert torch.equal(q[:, 0, :, : hd - rd], q[:, 1, :, : hd - rd])
    assert not torch.equal(q[:, 0, :, hd - rd:], q[:, 1, :, hd - rd:])


# ------------------------------------------------------------------------------------------ sparse_attn

WIN_TINY = 8  # tiny window


@pytest.mark.parametrize("stage", ["sparse_attn_core", "sparse_attn"])
@pytest.mark.parametrize("start_pos", [
    [0, 0],                              # start_pos 0: t = 0 and 1
    [1, 5],                              # different start_pos per row
    [WIN_TINY - 2, WIN_TINY - 1],        # visible counts at t = WIN-2 .. WIN
    [WIN_TINY, 2 * WIN_TINY + 3],        # ring wrap
    [2, 3],                              # block edges t = m-2, m-1 (mod m = 4): entry 0 completes
    [6, 10],
])
def test_sparse_attn_window_and_blocks(stage, start_pos):
    check(stage, "tiny", attn_inputs(stage, "tiny", start_pos))


@pytest.mark.parametrize("stage", ["sparse_attn_core", "sparse_attn"])
def test_sparse_attn_single_token_steps(stage):
    check(stage, "tiny-s1", attn_inputs(stage, "tiny-s1", [0, 7]))


@pytest.mark.parametrize("stage", ["sparse_attn_core", "sparse_attn"])
def test_positions_straddling_127_128(stage):
    check(stage, "tiny-long", attn_inputs(stage, "tiny-long", [126, 127]))
    check(stage, "tiny-m128", attn_inputs(stage, "tiny-m128", [126, 255]))


@pytest.mark.parametrize("stage", ["sparse_attn_core", "sparse_attn"])
def test_window_only_layer(stage):
    check(stage, "tiny-swa", attn_inputs(stage, "tiny-swa", [3, 20]))


@pytest.mark.parametrize("stage", ["sparse_attn_core", "sparse_attn"])
def test_sink_off(stage):
    cfg = config("tiny")
    check(stage, "tiny", attn_inputs(stage, "tiny", [4, 30], attn_sink=torch.full((cfg["n_heads"],), -math.inf)))


@pytest.mark.parametrize("stage", ["sparse_attn_core", "sparse_attn"])
def test_all_padding_cmp_rows_and_unlisted_future_entries(stage):
    cfg = config("tiny")
    B, S, KC, NC = cfg["batch"], cfg["seq"], cfg["cmp_topk"], cfg["n_cmp"]
    idx = torch.full((B, S, KC), -1, dtype=torch.int32)
    # row 0: all padding. row 1 (t = 9, 10 -> 2 visible entries): one visible id, then ids not yet complete
    idx[1, :, 0] = 1
    idx[1, :, 1] = 2
    idx[1, :, 2] = NC - 1
    inputs = attn_inputs(stage, "tiny", [20, 9], cmp_idx=idx)
    check(stage, "tiny", inputs)
    # the listed-but-invisible entries must not matter: replacing their rows changes nothing
    tensor_mod, tile_mod = compiled(stage, "tiny")
    before = run_module(tile_mod, list(inputs.values()))[0]
    inputs["kv_cmp"][1, 2:] = 100.0
    after = run_module(tile_mod, list(inputs.values()))[0]
    assert torch.equal(before, after)


@pytest.mark.parametrize("stage", ["sparse_attn_core"])
def test_later_step_row_is_never_visible(stage):
    inputs = attn_inputs(stage, "tiny", [30, 3])
    _, tile_mod = compiled(stage, "tiny")
    before = run_module(tile_mod, list(inputs.values()))[0]
    inputs["kv_step"][:, 1] = 50.0
    after = run_module(tile_mod, list(inputs.values()))[0]
    assert torch.equal(before[:, 0], after[:, 0])
    assert not torch.equal(before[:, 1], after[:, 1])


def test_few_visible_keys_flash_heads():
    """<= 32 visible keys (one partial KV tile) at flash head sizes; positions straddling 127/128."""
    check("sparse_attn_core", "flash-b2", attn_inputs("sparse_attn_core", "flash-b2", [3, 127]))
    check("sparse_attn", "flash-b2", attn_inputs("sparse_attn", "flash-b2", [0, 126]))
    check("sparse_attn", "flash-s1", attn_inputs("sparse_attn", "flash-s1", [127, 128]))


@pytest.mark.parametrize("stage", ["qkv_proj_rope", "sparse_attn_core", "sparse_attn"])
def test_every_pass_level_matches_reference(stage):
    """Not only the end of the pipeline: the IR after every pass is interpreted against the reference."""
    cfg = config("tiny")
    st = STAGES[stage]
    inputs = attn_inputs(stage, "tiny", [7, 2], seed=3)
    ref = reference(stage, inputs, cfg)
    levels = []

    def after(label, module):
        outs = dict(zip(st.outputs, run_module(module, list(inputs.values()))))
        levels.append((label, max(normalised_error(outs[n].float(), ref[n].float()) for n in st.outputs)))

    run_pipeline(build_stage(st, cfg), DEFAULT_PIPELINE, after_pass=after)
    assert len(levels) == len(DEFAULT_PIPELINE.split(","))
    for label, err in levels:
        assert err <= TOLERANCE, f"after {label}: {err:.3e}"


def test_reference_comparison_can_fail():
    """The comparison has teeth: a reference fed one position later disagrees beyond the tolerance."""
    stage, cfg_name = "sparse_attn_core", "tiny"
    inputs = attn_inputs(stage, cfg_name, [3, 9])
    _, tile_mod = compiled(stage, cfg_name)
    got = run_module(tile_mod, list(inputs.values()))[0]
    shifted = dict(inputs, start_pos=inputs["start_pos"] + 1)
    ref = reference(stage, shifted, config(cfg_name))["core"]
    assert normalised_error(got.float(), ref.float()) > TOLERANCE
