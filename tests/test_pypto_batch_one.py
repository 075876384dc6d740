"""batch = 1 (one request: every token loop runs once) in pypto 0.2.0 SIM at `tiny`, the pypto pipeline: every output
equals the interpreter's on the same IR (integers bit for bit, bf16 bit for bit but for rare single-step roundings,
f32 states within 1e-3 of pypto's own f32 summation order; 1e-7 seen). Before the emitter copied a packed piece that
is all of a parameter (tests/test_pypto_emit.py WHOLE) these programs failed to compile in pypto or died of SIGSEGV.
The default suite runs three cells (~35 s idle); layer kinds x {dense, paged, packed} x seq {1, 2, 16}: `-m slow`."""
from __future__ import annotations

import pytest
import torch

from attnc.ir.interpreter import run_module
from attnc.kernels_src import STAGES, build_stage, resolve_config
from attnc.kernels_src.inputs import make_inputs
from attnc.passes import PYPTO_PIPELINE
from attnc.passes.verify import normalised_error, run_pipeline
from tests.markers import needs_pypto

# a bf16 value computed from an f32 sum (matmul) may round one bf16 step the other way in pypto, whose f32 summation
# order differs from torch's: seen on 1 of 1,024 kv_ring values (1.1444e-05 vs 1.1504e-05) of the packed HCA layer,
# 16 tokens, seed 3 (issue 18 item 5: also at batch 2)
ONE_STEP = 1 / 256

FAST = [("sparse_attn_core", (("compress_ratio", 0), ("seq", 1))), ("hca_attn_core", (("seq", 1),)),
        ("decode_swa", (("seq", 2),))]
SLOW = [(f"decode_{kind}{suffix}", sets + (("seq" if not sets else "tokens", seq),))
        for kind in ("swa", "hca", "csa")
        for suffix, sets in (("", ()), ("_paged", ()), ("", (("layout", "packed"), ("max_pos", 256))))
        for seq in (1, 2, 16)]


def _ids(cases):
    return [f"{s}-" + "-".join(f"{k}{v}" for k, v in sets) for s, sets in cases]


def check(stage: str, sets: tuple, seed: int = 3):
    """Records excused by cause only: the HCA state's and the m = 128 window's gathers split over vector tiles
    (FB200F / FB200B GATHER; tests/test_pypto_emit.py SPLIT_GATHER)."""
    from attnc.codegen.pypto.target import describe, run_pypto_sim, unexcused

    cfg = resolve_config("tiny", {"batch": 1, **dict(sets)})
    module = build_stage(STAGES[stage], cfg)
    run_pipeline(module, PYPTO_PIPELINE)
    inputs = make_inputs(STAGES[stage], cfg, seed)
    want = dict(zip(STAGES[stage].outputs, run_module(module, list(inputs.values()))))
    res = run_pypto_sim(module, inputs, timeout_s=900)
    assert not unexcused(res), [describe(r, res.program) for r in unexcused(res)][:3]
    assert res.verify and res.aicore_us
    for name, w in want.items():
        got = res.outputs[name]
        assert got.dtype == w.dtype and got.shape == w.shape, name
        if w.dtype == torch.int32:
            assert torch.equal(got, w), name
        elif w.dtype == torch.bfloat16:  # bit for bit but for a rare value one bf16 step off (see ONE_STEP)
            off = got.float() != w.float()
            assert int(off.sum()) <= ONE_STEP * w.numel(), (name, int(off.sum()))
            assert torch.all((got.float() - w.float()).abs()[off] <= w.float().abs()[off] * 2.0 ** -7), name
        else:
            real = w.abs() < 1e38
            assert torch.equal(got[~real], w[~real]), name
            assert normalised_error(got[real], w[real]) <= 1e-3, name


@needs_pypto
@pytest.mark.parametrize("stage, sets", FAST, ids=_ids(FAST))
def test_batch_one_sim_matches_the_interpreter(stage, sets):
    check(stage, sets)


@needs_pypto
@pytest.mark.slow
@pytest.mark.parametrize("stage, sets", SLOW, ids=_ids(SLOW))
def test_batch_one_layers_sim_match_the_interpreter(stage, sets):
    check(stage, sets)
