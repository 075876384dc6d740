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
    from attnc.codegen.pypto.target import describe, run_pypto_sim, unexcused

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


# issue 18: T = 48 packed tokens and parallelize-tokens{rows=32} of the pypto pipeline. A ragged last chunk (32 + 16
# rows) carried a runtime valid row count that pypto 0.2.0's expand_clone/reshape/fills drop, and its SIM calculator
# fails an op whose operands' valid shapes differ (sparse_attn_core: WHERE_TS of the expanded mask, 32 valid rows,
# with the index_select of the chunk's ids, 16): the emitter refused it. Now the pass takes whole chunks: 3 x 16
# (the pipeline's row-tile=16; 2 x 24 without it)
RAGGED = (("batch", 3), ("seq", 16), ("layout", "packed"), ("tokens", 48), ("max_pos", 256), ("n_cmp", 64),
          ("cmp_topk", 8))


def _ragged(stage: str):
    cfg = resolve_config("tiny", dict(RAGGED))
    module = build_stage(STAGES[stage], cfg)
    # projection loops too in chunks of 32 (the pypto pipeline takes them whole up to 128 rows: not ragged at 48)
    run_pipeline(module, PYPTO_PIPELINE.replace("weight-rows=128", "weight-rows=32"))
    return cfg, module


def test_token_count_not_a_multiple_of_the_chunk_rows_is_emitted_in_whole_chunks():
    from attnc.codegen.pypto.emit import emit_pypto

    _, module = _ragged("sparse_attn_core")
    loops = [op for op in module.walk() if op.name == "tile.parallel"]
    assert loops and {loop.rows.value.data for loop in loops} == {16}
    # the chunk's row views and assembles state no runtime valid row count
    assert all(not len(op.valid) for loop in loops for op in loop.body.block.ops
               if op.name in ("tile.view", "tile.assemble"))
    emit_pypto(module)  # refused before (tile.select mixed 32 with 16 valid rows)


@needs_pypto
@pytest.mark.slow
@pytest.mark.parametrize("stage", ["indexer", "sparse_attn_core", "compressor", "qkv_proj_rope"])
def test_whole_chunks_of_48_token_rows_match_interpreter_in_sim(stage):
    """sparse_attn_core, compressor and qkv_proj_rope were refused with chunks of 32 + 16 rows."""
    from attnc.codegen.pypto.target import describe, run_pypto_sim, unexcused
    from attnc.sim_check import check_outputs

    cfg, module = _ragged(stage)
    inputs = make_inputs(STAGES[stage], cfg, 874, {"start_pos": torch.tensor([0, 0, 7], dtype=torch.int32),
                                                   "cu_seqlens": torch.tensor([0, 16, 32, 48], dtype=torch.int32)})
    res = run_pypto_sim(module, inputs, timeout_s=600)
    assert not unexcused(res), [describe(r, res.program) for r in unexcused(res)][:3]
    check = check_outputs(module, inputs, res.outputs, STAGES[stage].outputs)  # `attnc run`'s rule
    assert check.ok, check.failures
