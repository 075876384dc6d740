"""The pypto target: the emitted program of each stage runs in pypto 0.2.0 SIM on the CPU (in a child process
with the two 0.2.0 fixes) and matches the interpreter; a FAILED per-pass verify record fails the test."""
from __future__ import annotations

import functools

import pytest
import torch

from attnc.codegen.pypto_emit import emit_pypto
from attnc.codegen.pypto_sim import npu_available, pypto_available
from attnc.ir.interpreter import run_module
from attnc.kernels_src import STAGES, build_stage, resolve_config
from attnc.kernels_src.inputs import make_inputs
from attnc.passes import DEFAULT_PIPELINE
from attnc.passes.verify import normalised_error, run_pipeline

needs_pypto = pytest.mark.skipif(not pypto_available(), reason="pypto 0.2.0 is not importable here")


@functools.lru_cache(maxsize=None)
def compiled(stage: str, overrides: tuple = ()):
    cfg = resolve_config("tiny", dict(overrides))
    module = build_stage(STAGES[stage], cfg)
    run_pipeline(module, DEFAULT_PIPELINE)
    return cfg, module


def test_emitted_program_is_deterministic_and_readable():
    _, module = compiled("sparse_attn")
    text = emit_pypto(module)
    assert text == emit_pypto(module)
    compile(text, "sparse_attn.py", "exec")
    assert "@pypto.frontend.jit" in text and "pypto.loop(" in text
    assert "# kernels_src/sparse_attn.py:" in text  # statements name their DSL line


@needs_pypto
@pytest.mark.parametrize("stage, overrides", [
    ("qkv_proj_rope", ()),
    ("sparse_attn_core", ()),
    ("sparse_attn", ()),
    ("sparse_attn_core", (("cmp_topk", 54), ("n_cmp", 64), ("max_pos", 256))),  # several KV tiles, ragged last
    ("sparse_attn_core", (("cmp_topk", 56), ("n_cmp", 64), ("max_pos", 256))),  # several whole KV tiles
])
def test_pypto_sim_matches_interpreter(stage, overrides):
    from attnc.codegen.pypto_target import run_pypto_sim

    cfg, module = compiled(stage, overrides)
    inputs = make_inputs(STAGES[stage], cfg, 5)
    want = dict(zip(STAGES[stage].outputs, run_module(module, list(inputs.values()))))
    res = run_pypto_sim(module, inputs, timeout_s=600)
    assert not res.failed_records, res.failed_records[:3]
    assert len(res.verify) > 0
    assert res.aicore_us is not None and res.aicore_us > 0
    for name, w in want.items():
        assert res.outputs[name].dtype == w.dtype
        assert normalised_error(res.outputs[name].float(), w.float()) <= 1e-6, name


@needs_pypto
def test_cli_run_pypto_sim_prints_aicore_time(capsys, tmp_path):
    from attnc.codegen.driver import main

    code = main(["run", "qkv_proj_rope", "--config", "tiny", "--target", "pypto-sim", "--out", str(tmp_path / "o.npz")])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and out[-1].startswith("aicore_us: ") and float(out[-1].split()[1]) > 0
    assert (tmp_path / "o.npz").exists()


@pytest.mark.npu
@pytest.mark.skipif(not npu_available(), reason="no torch_npu / Ascend NPU on this machine")
def test_pypto_npu_matches_interpreter():
    from attnc.codegen.pypto_target import run_pypto_sim

    cfg, module = compiled("sparse_attn_core")
    inputs = make_inputs(STAGES["sparse_attn_core"], cfg, 0)
    want = run_module(module, list(inputs.values()))[0]
    res = run_pypto_sim(module, inputs, npu=True)
    assert normalised_error(res.outputs["core"].float(), want.float()) <= 2e-2
