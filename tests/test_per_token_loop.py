"""The per-token (listed-picks, CSA) schedule at step sizes beyond its unrolled bound: the program's size and its
branches do not grow with S (pypto 0.2.0 compiles a loop body once per path through its branches, so unrolled
tokens, two zero-fill branches each, made its compile time exponential in S), the token loop writes the output in
place (a copy back after a nested pypto.loop was stale: all zeros in the CSA core, wrong `out` of decode_csa at
S = 16), and SIM equals the interpreter of the same tile IR."""
from __future__ import annotations

import re
import time

import pytest
import torch

from attnc.codegen.pypto.emit import emit_pypto
from attnc.ir.interpreter import run_module
from attnc.kernels_src import STAGES, build_stage, resolve_config
from attnc.kernels_src.inputs import make_inputs
from attnc.passes import PYPTO_PIPELINE, PassError
from attnc.passes.schedule_attention import MAX_UNROLL_TOKENS, UNROLL_TOKENS
from attnc.passes.verify import run_pipeline
from tests.markers import needs_pypto

BRANCH = re.compile(r"^ +if \w+ < \d+:", re.M)


def _program(stage: str, config: str = "tiny", **over) -> str:
    module = build_stage(STAGES[stage], resolve_config(config, over))
    run_pipeline(module, PYPTO_PIPELINE)
    return emit_pypto(module)


def _shape_free(program: str) -> list[str]:
    """The kernel's statements with numbers and names' counters dropped (what differs between two S); the host
    constants' values after the kernel depend on S by design."""
    body = program[program.index("def kernel("):].split("\nHOST_CONSTANT_VALUES", 1)[0]
    return [re.sub(r"\d+", "N", ln) for ln in body.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_per_token_program_does_not_grow_with_the_step():
    """Up to UNROLL_TOKENS tokens are unrolled (two zero-fill branches each: window, picks); beyond, one token
    loop: the same statements and the same two branches for S = 3, 5 and 16 (so pypto's compile time is flat)."""
    assert UNROLL_TOKENS <= MAX_UNROLL_TOKENS
    for s in range(1, UNROLL_TOKENS + 1):
        assert len(BRANCH.findall(_program("sparse_attn_core", seq=s, max_pos=256))) == 2 * s
    looped = [_program("sparse_attn_core", seq=s, max_pos=256) for s in (UNROLL_TOKENS + 1, 5, 16)]
    assert all(len(BRANCH.findall(p)) == 2 for p in looped)
    assert _shape_free(looped[0]) == _shape_free(looped[1]) == _shape_free(looped[2])


def test_token_loop_writes_the_output_in_place():
    """The token loop nested in the batch-row loop assembles each token's rows into the output parameter (its
    token rows [B·S·H, d] at a runtime row offset, returned as an in-place reshape): no scratch copy of it, no zero
    fill of it, no `x[:] = y` copy back (pypto 0.2.0 drops such a copy after a nested loop: the CSA core came out
    all zeros)."""
    program = _program("sparse_attn_core", seq=16, max_pos=256)
    assert re.search(r"for (k\d+) in pypto\.loop\(0, 16, 1,", program)
    assert re.search(r"pypto\.assemble\(\w+, \[s\d+, 0\], core\)", program)
    assert "pypto.reshape(core, [2, 16, 4, 128], inplace=True)" in program
    assert "[:] =" not in program and "SCRATCH_NAMES = []" in program
    assert "pypto.full([2, 16, 4, 128]" not in program


def test_unroll_option_and_its_bound():
    """unroll=1 loops a 2-token step (one pair of branches); above MAX_UNROLL_TOKENS it is refused."""
    module = build_stage(STAGES["sparse_attn_core"], resolve_config("tiny"))
    run_pipeline(module, PYPTO_PIPELINE.replace("schedule-attention,", "schedule-attention{unroll=1},"))
    assert len(BRANCH.findall(emit_pypto(module))) == 2
    module = build_stage(STAGES["sparse_attn_core"], resolve_config("tiny"))
    with pytest.raises(PassError, match=rf"unroll must be in \[1, {MAX_UNROLL_TOKENS}\], got 3"):
        run_pipeline(module, PYPTO_PIPELINE.replace("schedule-attention,", "schedule-attention{unroll=3},"))


@pytest.mark.parametrize("config", ["tiny", "flash"])
def test_layer_compile_time_at_a_16_token_step(config):
    """Building decode_csa, its default pipeline and the emitted program at S = 16 take about as long as at S = 1
    (CPU time of this process: the load of other jobs does not count)."""
    def cpu(seq):
        t = time.process_time()
        _program("decode_csa", config, seq=seq, **({"max_pos": 256} if config == "tiny" else {}))
        return time.process_time() - t

    one, sixteen = cpu(1), cpu(16)
    assert sixteen < 10.0 and sixteen < 3 * one + 2.0, (one, sixteen)


# ------------------------------------------------------------------------------------------ pypto SIM

def _scaled_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest difference relative to the tensor's largest magnitude."""
    return float((got.float() - want.float()).abs().max() / want.float().abs().max().clamp(min=1e-30))


def _sim_matches(stage: str, start_pos: list[int], seed: int = 5, **over):
    """SIM equals the interpreter of the same tile IR: integers bit for bit, f32 states within 1e-3 of their
    scale, bf16 within 2^-7 of the tensor's largest magnitude, one bf16 step of it (pypto sums a matmul's f32
    products in its own order, so an exp weight can round to the neighbouring bf16 value: measured up to 5.7e-3
    at S = 16, the same values from the unrolled and the looped program at S = 3)."""
    from attnc.codegen.pypto.target import run_pypto_sim

    cfg = resolve_config("tiny", dict(over, max_pos=256, batch=len(start_pos)))
    st = STAGES[stage]
    module = build_stage(st, cfg)
    run_pipeline(module, PYPTO_PIPELINE)
    inputs = make_inputs(st, cfg, seed, {"start_pos": torch.tensor(start_pos, dtype=torch.int32)})
    want = dict(zip(st.outputs, run_module(module, list(inputs.values()))))
    res = run_pypto_sim(module, inputs, verify="tensor-graph", timeout_s=900)
    for name, w in want.items():
        got = res.outputs[name]
        assert got.dtype == w.dtype and got.shape == w.shape, name
        if w.dtype == torch.bfloat16:
            assert _scaled_error(got, w) <= 2.0 ** -7, (name, _scaled_error(got, w))
        elif w.dtype == torch.float32:
            assert float((got - w).abs().max()) <= 1e-3 * max(1.0, float(w.abs().max())), name
        else:
            assert torch.equal(got, w), name
    return res


@needs_pypto
def test_sim_csa_core_token_loop():
    """Five tokens per row (a token loop), rows from position 0 (no entry visible at first: the picks zeroed)
    and 45 (a block completing inside the step)."""
    _sim_matches("sparse_attn_core", [0, 45], seq=5)


@needs_pypto
def test_sim_csa_layer_16_token_step():
    """decode_csa, one row, 16 tokens from position 45 (the CSA core's token loop inside the whole layer)."""
    _sim_matches("decode_csa", [45], seq=16)


@pytest.mark.slow
@needs_pypto
@pytest.mark.parametrize("stage, seq, start_pos", [
    ("sparse_attn_core", 3, [0, 45]),
    ("sparse_attn_core", 4, [7, 60]),
    ("sparse_attn_core", 16, [0, 45]),
    ("sparse_attn_core", 16, [3]),
    ("sparse_attn_core", 64, [0, 100]),  # the longest chunk the docs test at tiny
    ("decode_csa", 16, [0]),
    ("decode_csa", 16, [45, 45]),
    ("decode_csa", 5, [3, 60]),
    ("decode_csa", 3, [0, 45]),
], ids=lambda v: str(v) if not isinstance(v, list) else "sp" + "-".join(map(str, v)))
def test_sim_per_token_steps(stage, seq, start_pos):
    _sim_matches(stage, start_pos, seq=seq)


@pytest.mark.slow
@needs_pypto
def test_sim_time_flat_in_the_step():
    """pypto's compile and simulation of the CSA core at S = 16 cost about what S = 3 costs (it was exponential
    in the unrolled tokens: 46 s at S = 3, 469 s at S = 4)."""
    from attnc.codegen.pypto.target import run_pypto_sim

    walls = []
    for seq in (3, 16):
        cfg = resolve_config("tiny", dict(seq=seq, max_pos=256))
        module = build_stage(STAGES["sparse_attn_core"], cfg)
        run_pipeline(module, PYPTO_PIPELINE)
        inputs = make_inputs(STAGES["sparse_attn_core"], cfg, 5)
        walls.append(run_pypto_sim(module, inputs, verify="none", timeout_s=900).wall_s)
    assert walls[1] < 3 * walls[0] + 10, walls
