"""compress_pool and its schedules (schedule-compressor): `block` and `row` (one pooling per batch row from the state
rings in place) and `token` (each token's window gathered) equal the op's definition on every start position residue,
with never-written state rows poisoned with NaN; a step that may complete two blocks per row refuses `row`;
the `row` form's emitted program equals the interpreter in SIM at tiny."""
from __future__ import annotations

import pytest
import torch

from attnc.ir.interpreter import run_module
from attnc.kernels_src import STAGES, build_stage, resolve_config
from attnc.kernels_src.inputs import make_inputs
from attnc.passes import PassError
from attnc.passes.verify import run_pipeline

CASES = {"m4": ("compressor", {"compress_ratio": 4}), "m128": ("compressor", {"compress_ratio": 128, "max_pos": 512}),
         "index": ("index_compressor", {})}


def _inputs(stage, over, seq):
    cfg = resolve_config("tiny", {**over, "seq": seq, "batch": 8})
    st = STAGES[stage]
    inputs = make_inputs(st, cfg, 1)
    m = cfg["compress_ratio"]
    starts = [0, 1, 2, m - 2, m - 1, m, 2 * m - 2, 2 * m - 1]  # first blocks, each residue, mid-step completions
    inputs["start_pos"] = torch.tensor(starts, dtype=torch.int32)
    for name in [n for n in inputs if n.endswith("state")]:
        for b, sp in enumerate(starts):  # ring slots never written (positions < 0)
            inputs[name][b, sp:] = float("nan")
    return cfg, st, inputs


@pytest.mark.parametrize("schedule,seq", [("row", 1), ("row", 2), ("token", 2), ("token", 8), ("block", 1),
                                          ("block", 2), ("block", 8)])
@pytest.mark.parametrize("case", list(CASES))
def test_schedules_equal_the_op(case, schedule, seq):
    if schedule == "block" and case != "m128" and seq > 4:
        pytest.skip("block with overlap: a step of at most m = 4 tokens")
    stage, over = CASES[case]
    cfg, st, inputs = _inputs(stage, over, seq)
    want = run_module(build_stage(st, cfg), list(inputs.values()))
    module = build_stage(st, cfg)
    run_pipeline(module, f"schedule-compressor{{schedule={schedule}}},fuse-rmsnorm,rope-selector-matmul,"
                         "lower-to-tiles,canonicalize,cse")
    assert not any(op.name == "attn.compress_pool" for op in module.walk())
    got = run_module(module, list(inputs.values()))
    cache_in = inputs[st.outputs[2]]
    assert (want[2].float() != cache_in.float()).any(), "no entry completed: the case tests nothing"
    assert not torch.isnan(got[2]).any()  # poisoned state rows never reach an entry
    err = float((got[2].float() - want[2].float()).abs().max() / want[2].float().abs().max())
    assert err <= 1e-2, err  # the pass's tolerance
    for g, w in zip(got[:2], want[:2]):  # states: the same rows written, the rest untouched
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)


def test_row_refuses_two_blocks_per_step():
    cfg = resolve_config("tiny", {"compress_ratio": 4, "seq": 8})
    with pytest.raises(PassError, match=r"schedule-compressor\{schedule=row\}: a step of 8 tokens"):
        run_pipeline(build_stage(STAGES["compressor"], cfg), "schedule-compressor{schedule=row}")


def test_block_refuses_two_blocks_per_step():
    cfg = resolve_config("tiny", {"compress_ratio": 4, "seq": 8})
    with pytest.raises(PassError, match=r"schedule-compressor\{schedule=block\}: needs a ring of one block"):
        run_pipeline(build_stage(STAGES["compressor"], cfg), "schedule-compressor{schedule=block}")


@pytest.mark.parametrize("seq", [1, 2, 8])
def test_block_channel_chunks_equal_the_op(seq):
    """`block` with the channels pooled in chunks (tiny d = 128 in 4 chunks of 32, each its own loop iteration) equals
    the op as the whole-channel form does."""
    cfg, st, inputs = _inputs("compressor", CASES["m128"][1], seq)
    want = run_module(build_stage(st, cfg), list(inputs.values()))
    module = build_stage(st, cfg)
    run_pipeline(module, "schedule-compressor{schedule=block channel-chunk=32},fuse-rmsnorm,rope-selector-matmul,"
                         "lower-to-tiles,canonicalize,cse")
    got = run_module(module, list(inputs.values()))
    assert not torch.isnan(got[2]).any()
    err = float((got[2].float() - want[2].float()).abs().max() / want[2].float().abs().max())
    assert err <= 1e-2, err


def _sim_equals_the_interpreter(case, schedule):
    """The program in SIM, every start residue and NaN-poisoned never-written state rows: the entries bit
    for bit, the states within 1e-6 (f32 matmul order; the same rows written, the rest untouched)."""
    import numpy as np

    import attnc as api
    from attnc.passes import PYPTO_PIPELINE

    stage, over = CASES[case]
    cfg, _, arrays = _inputs(stage, over, 2)
    st = api.build(stage, "tiny", **{**over, "seq": 2, "batch": 8})
    api.compile(st, PYPTO_PIPELINE.replace("schedule-compressor", f"schedule-compressor{{schedule={schedule}}}"),
                target="pypto")
    arrays = {k: v.numpy() if v.dtype != torch.bfloat16 else v for k, v in arrays.items()}
    want = api.interpret(st, arrays)
    got = api.run_sim(st, arrays)
    for name, w in want.items():
        g, w = np.asarray(got.outputs[name]), np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype, name
        if w.dtype == np.float32:  # the states: the step's a/z rows (matmul summation order), NaN rows untouched
            assert np.array_equal(np.isnan(g), np.isnan(w)), name
            assert np.nanmax(np.abs(g - w)) <= 1e-6 * np.nanmax(np.abs(w)), name
        else:
            assert np.array_equal(g, w), name


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_row_schedule_in_sim_equals_the_interpreter(case):
    _sim_equals_the_interpreter(case, "row")


@pytest.mark.parametrize("case", list(CASES))
def test_block_schedule_in_sim_equals_the_interpreter(case):
    """The default (`block`; with overlap for m = 4 and the index compressor: block w-1's and block w's ring slots
    and the step rows as views in place): only the rows completing a block pool, in SIM as in the interpreter."""
    _sim_equals_the_interpreter(case, "block")


def test_block_channel_chunks_in_sim_equal_the_interpreter():
    """`block` with 4 channel chunks per row (each its own iteration of the block loop, writing its columns of the entry)."""
    _sim_equals_the_interpreter("m128", "block channel-chunk=32")


def _pool_tile_rows(pipeline: str) -> set[int]:
    """Leading dims of the rank-3 vector tiles the emitted index_compressor program sets for the pooling's ops
    (the statements at the compress_pool line inside its token loop; the window gathers and the loop's row views
    of its inputs keep their own tiles)."""
    import re

    from attnc.codegen.pypto.emit import emit_pypto

    module = build_stage(STAGES["index_compressor"], resolve_config("tiny", {"batch": 16}))  # 32 token rows
    run_pipeline(module, pipeline)
    import attnc.kernels_src.compressor as src  # the pooling's ops name the DSL line of its compress_pool call

    with open(src.__file__) as f:
        at = next(i for i, line in enumerate(f, 1) if "compress_pool(from_tokens" in line)
    rows, tile = set(), None
    for line in emit_pypto(module).splitlines():
        m = re.search(r"set_vec_tile_shapes\(([^)]*)\)", line)
        if m:
            tile = [int(x) for x in m.group(1).split(",")]
        elif (f"kernels_src/compressor.py:{at}" in line and line.startswith(" " * 8) and tile and len(tile) == 3
              and "index_select" not in line and "pypto.view(ws" not in line):
            rows.add(tile[0])
    return rows


def test_pooling_tiles_keep_one_row_group():
    """schedule-compressor{schedule=token pool-rows} caps the rows of every pooling op's vector tile in the emitted program (the
    fold levels [N, n/2, d], [N, n/4, d] would otherwise take 2x, 4x the rows of the first, each level a task of
    its own); without the cap the emitter's budget tiles take more rows."""
    from attnc.passes import PYPTO_PIPELINE

    token = PYPTO_PIPELINE.replace("schedule-compressor", "schedule-compressor{schedule=token}")
    capped = _pool_tile_rows(token)
    assert capped and max(capped) <= 4, capped
    free = _pool_tile_rows(token.replace("schedule=token", "schedule=token pool-rows=1024"))
    assert max(free) > 4, free


def test_block_pooling_is_one_merge_scope():
    """`block`'s pooling loop states `merge_scope`: the emitted body opens pypto's sg_set_scope first and closes it
    last, so each block's pooling is merged into one subgraph (a fold level per task otherwise)."""
    from attnc.codegen.pypto.emit import emit_pypto
    from attnc.passes import PYPTO_PIPELINE

    module = build_stage(STAGES["compressor"], resolve_config("tiny", {"compress_ratio": 128, "max_pos": 512}))
    run_pipeline(module, PYPTO_PIPELINE)
    pools = [o for o in module.walk() if "merge_scope" in o.attributes]
    assert len(pools) == 1 and pools[0].name == "scf.for"
    lines = emit_pypto(module).splitlines()
    opened = [i for i, line in enumerate(lines) if "sg_set_scope=1)" in line]
    closed = [i for i, line in enumerate(lines) if "sg_set_scope=-1)" in line]
    assert len(opened) == len(closed) == 1 and opened[0] < closed[0]
    assert "pypto.loop(0, s" in lines[opened[0] - 1]  # the first statement of the runtime-count loop
    body = lines[opened[0]:closed[0]]
    indent = len(lines[opened[0]]) - len(lines[opened[0]].lstrip())
    assert all(len(line) - len(line.lstrip()) >= indent for line in body)
    assert any("pypto.exp(" in line for line in body) and any("pypto.assemble(" in line for line in body)


def test_block_pooling_loop_states_its_trip_bound_for_the_memory_estimate():
    """The overlapping `block` schedule's pooling loop runs 0 or 1 times per batch row (a runtime count) and says so
    (`max_trips`): the SIM child's estimate counts one call per row, not one per row of the tensors it reads (flash
    m = 4: 292 GB without, which refused the check of its outputs)."""
    from attnc.memory import _trips, loop_call_bytes
    from attnc.passes import PYPTO_PIPELINE

    module = build_stage(STAGES["compressor"], resolve_config("tiny", {"compress_ratio": 4, "batch": 8}))
    run_pipeline(module, PYPTO_PIPELINE)
    loops = [o for o in module.walk() if "max_trips" in o.attributes]
    assert len(loops) == 1 and loops[0].name == "scf.for" and _trips(loops[0]) == 1
    stated = loop_call_bytes(module)
    del loops[0].attributes["max_trips"]
    assert _trips(loops[0]) > 1 and loop_call_bytes(module) > stated


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("batch,seq", [(1, 2), (2, 16)])
def test_entry_in_sim_equals_the_interpreter_batch_one_and_long_steps(case, batch, seq):
    """compress_pool's entry (RMSNorm, RoPE, rotation) in SIM at batch 1 (`block`: run in the pooling task of the
    completing row) and 16-token steps (m = 128 `block`; m = 4 and index `token`: on all token rows after the
    pooling), every start residue the steps reach: the caches bit for bit (tests/test_pypto_batch_one.py check)."""
    from tests.test_pypto_batch_one import check

    stage, over = CASES[case]
    check(stage, tuple({**over, "batch": batch, "seq": seq}.items()))
