"""The packed layout's pypto program (the pypto pipeline `attnc run --target pypto-sim` uses) runs in pypto 0.2.0
SIM and matches the interpreter on the same IR, for every stage and layer kind at `tiny` with rows of 1, 3, 0
and 2 tokens (and a paged layer kind in the packed layout): integers and bf16 bit for bit, f32 state within 1e-3 (pypto's own f32 summation order)."""
from __future__ import annotations

import functools

import pytest
import torch

from attnc.ir.interpreter import run_module
from attnc.kernels_src import STAGES, build_stage, resolve_config
from attnc.kernels_src.inputs import make_inputs
from attnc.passes import PYPTO_PIPELINE
from attnc.passes.verify import normalised_error, run_pipeline
from tests.markers import needs_pypto

PACKED = (("batch", 4), ("layout", "packed"), ("tokens", 6), ("max_pos", 256))
CU_SEQLENS = torch.tensor([0, 1, 4, 4, 6], dtype=torch.int32)
CASES = ["qkv_proj_rope", "sparse_attn_core", "hca_attn_core", "sparse_attn", "compressor", "index_compressor",
         "indexer", "decode_swa", "decode_hca", "decode_csa", "decode_csa_paged"]
# the packed paged CSA program: every cache, state and pick bit for bit, and one `out` value of 384 one bf16 step
# off (seen at a value of ~1e-6; pypto's own f32 summation order, as the README's 16-token chunk)
ONE_ULP_OUT = {"decode_csa_paged"}


@functools.lru_cache(maxsize=None)
def compiled(stage: str):
    cfg = resolve_config("tiny", dict(PACKED))
    module = build_stage(STAGES[stage], cfg)
    run_pipeline(module, PYPTO_PIPELINE)
    return cfg, module


@needs_pypto
@pytest.mark.parametrize("stage", CASES)
def test_packed_pypto_sim_matches_interpreter(stage):
    from attnc.codegen.pypto_target import describe, run_pypto_sim, unexcused

    cfg, module = compiled(stage)
    inputs = make_inputs(STAGES[stage], cfg, 5, {"cu_seqlens": CU_SEQLENS})
    want = dict(zip(STAGES[stage].outputs, run_module(module, list(inputs.values()))))
    res = run_pypto_sim(module, inputs, timeout_s=600)
    assert not unexcused(res), [describe(r, res.program) for r in unexcused(res)][:3]  # excused by cause only
    assert len(res.verify) > 0 and res.aicore_us is not None and res.aicore_us > 0
    for name, w in want.items():
        got = res.outputs[name]
        assert got.dtype == w.dtype, name
        if name == "out" and stage in ONE_ULP_OUT:
            off = got.float() != w.float()
            assert off.sum() <= 1, name
            assert torch.all((got.float() - w.float()).abs()[off] <= w.float().abs()[off] * 2.0 ** -7), name
        elif w.dtype in (torch.int32, torch.bfloat16):
            assert torch.equal(got, w), name
        else:
            real = w.abs() < 1e38
            assert torch.equal(got[~real], w[~real]), name
            assert normalised_error(got[real], w[real]) <= 1e-3, name


# issue 18: T = 48 packed tokens in chunks of 32 rows (parallelize-tokens{rows=32} of the pypto pipeline): the last
# chunk's views carry a runtime valid row count that pypto 0.2.0's expand_clone/reshape drop, and its SIM calculator
# fails an op whose operands' valid shapes differ (sparse_attn_core: WHERE_TS of the expanded mask, 32 valid rows,
# with the index_select of the chunk's ids, 16)
RAGGED = (("batch", 3), ("seq", 16), ("layout", "packed"), ("tokens", 48), ("max_pos", 256), ("n_cmp", 64),
          ("cmp_topk", 8))


def _ragged(stage: str):
    cfg = resolve_config("tiny", dict(RAGGED))
    module = build_stage(STAGES[stage], cfg)
    # projection loops too in chunks of 32 (the pypto pipeline takes them whole up to 128 rows: not ragged at 48)
    run_pipeline(module, PYPTO_PIPELINE.replace("weight-rows=128", "weight-rows=32"))
    return cfg, module


def test_ragged_chunk_mixing_valid_shapes_is_refused():
    from attnc.codegen.pypto_emit import EmitError, emit_pypto

    with pytest.raises(EmitError, match=r"sparse_attn\.py:\d+: tile\.select mixes a ragged token chunk's rows "
                                        r"\(48 token rows in chunks of 32\) with a full tile"):
        emit_pypto(_ragged("sparse_attn_core")[1])
    program = emit_pypto(_ragged("indexer")[1])  # ragged too, but no op mixes valid shapes: emitted
    assert "valid_shape=[s" in program


@needs_pypto
@pytest.mark.slow
def test_ragged_chunk_not_refused_matches_interpreter_in_sim():
    from attnc.codegen.pypto_target import describe, run_pypto_sim, unexcused
    from attnc.codegen.sim_check import check_outputs

    cfg, module = _ragged("indexer")
    inputs = make_inputs(STAGES["indexer"], cfg, 874, {"start_pos": torch.tensor([0, 0, 7], dtype=torch.int32),
                                                       "cu_seqlens": torch.tensor([0, 16, 32, 48], dtype=torch.int32)})
    res = run_pypto_sim(module, inputs, timeout_s=600)
    assert not unexcused(res), [describe(r, res.program) for r in unexcused(res)][:3]
    check = check_outputs(module, inputs, res.outputs, STAGES["indexer"].outputs)  # `attnc run`'s rule
    assert check.ok, check.failures
    assert {o.name: o.verdict for o in check.outputs} == {"index_score": "bounded", "cmp_idx": "exact"}
