"""W8A8 building blocks (issue 22): dynamic per-row int8 quantisation, int8 x int8 -> int32 matmul, dequantisation
by row scale x column scale, in the interpreter (exact integers, stated rounding/saturation) and in pypto SIM."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attnc.ir.dsl import In, StageDef, build_stage, dequantize, matmul, quantize_rows
from attnc.ir.interpreter import run_module
from attnc.passes.verify import normalised_error, run_pipeline
from tests.markers import needs_pypto

M, K, N = 16, 64, 32
CFG = {"batch": 1, "seq": M, "tokens": M, "m": M, "k": K, "n": N}


def _probe_fn(cfg, x, w, w_scale):
    q, s = quantize_rows(x)
    acc = matmul(q, w, out="i32")
    return {"q": q, "qscale": s, "acc": acc, "y": dequantize(acc, s, w_scale)}


# built directly (not registered in STAGES: it is no stage of the CLI)
PROBE = StageDef("w8a8_probe", _probe_fn, {"x": In("m", "k", dtype="f32"), "w": In("k", "n", dtype="i8"),
                                          "w_scale": In("n", dtype="f32")}, ("q", "qscale", "acc", "y"))


def _run(x, w, ws):
    mod = build_stage(PROBE, CFG)
    return mod, dict(zip(("q", "qscale", "acc", "y"), run_module(mod, [x, w, ws])))


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g) * 3
    w = torch.randint(-128, 128, (K, N), generator=g, dtype=torch.int8)
    ws = torch.rand(N, generator=g) * 0.01 + 1e-3
    return x, w, ws


def test_int8_matmul_is_exact_against_int64_numpy():
    x, w, ws = _inputs()
    x[0, :] = 1e4  # full-scale rows: every product at +-127 * +-128
    _, out = _run(x, w, ws)
    want = out["q"].numpy().astype(np.int64) @ w.numpy().astype(np.int64)
    assert out["acc"].dtype == torch.int32
    assert np.array_equal(out["acc"].numpy().astype(np.int64), want)


def test_quantisation_rounds_half_to_even_and_saturates():
    x = torch.zeros(M, K)
    # row 0: absmax 127 -> scale exactly 1: the values are rounded as they stand (half to even)
    x[0, :6] = torch.tensor([127.0, 0.5, 1.5, 2.5, -2.5, -126.5])
    # row 1: absmax 254 -> scale 0.5; 127.5 * 0.5 etc.
    x[1, :4] = torch.tensor([254.0, -254.0, 255.0 / 2, 1.0])
    # row 2: all zeros (finite scale, zero codes); row 3: tiny values
    x[3, :2] = torch.tensor([1e-30, -1e-30])
    _, out = _run(x, torch.zeros(K, N, dtype=torch.int8), torch.ones(N))
    q, s = out["q"], out["qscale"]
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and tuple(s.shape) == (M, 1)
    assert q[0, :6].tolist() == [127, 0, 2, 2, -2, -126]
    assert q[1, :4].tolist() == [127, -127, 64, 0]  # 63.75 -> 64, 0.5 -> 0 (even)
    assert torch.all(q[2] == 0) and torch.isfinite(s[2]).all() and s[2].item() > 0
    assert q[3, :2].tolist() == [127, -127]
    assert torch.isfinite(out["y"]).all()


def test_quantisation_saturates_a_value_rounding_past_127():
    """x * (127/absmax) can round above 127 only through f32 rounding; the cast states saturate = true."""
    from attnc.ir.interpreter import cast_tensor

    v = torch.tensor([127.5, -128.5, 300.0, -300.0, 126.5])
    assert cast_tensor(v, "i8", "rint").tolist() == [127, -128, 127, -128, 126]
    assert cast_tensor(v, "i8", "round").tolist() == [127, -128, 127, -128, 127]


def test_a_float_to_i8_cast_without_saturate_is_refused():
    from attnc.ir import parse_ir

    text = """builtin.module {
  func.func @f(%x: tensor<4x4xf32>) -> tensor<4x4xi8> attributes {arg_names = ["x"], result_names = ["y"]} {
    %y = "attn.cast"(%x) <{rounding = "rint"}> {loc = "q.py:1"} : (tensor<4x4xf32>) -> tensor<4x4xi8>
    func.return %y : tensor<4x4xi8>
  }
}"""
    with pytest.raises(Exception, match="saturate = true"):
        parse_ir(text, "q.mlir").verify()


def test_dequantised_product_tracks_the_float_product():
    """Error of the W8A8 product against the f32 product of the dequantised weight: per-row activation rounding
    (<= absmax / 254 per element) bounds it; measured ~4e-3 normalised, declared 1e-2."""
    x, w, ws = _inputs(1)
    _, out = _run(x, w, ws)
    ref = x.double() @ (w.double() * ws.double())
    assert normalised_error(out["y"].double(), ref) <= 1e-2


@needs_pypto
def test_sim_equals_the_interpreter_after_lowering():
    """The probe through the tile pipeline into pypto SIM: int8 codes, int32 products, scales and the
    dequantised result equal to the interpreter bit for bit."""
    from attnc.codegen.pypto_target import run_pypto_sim

    x, w, ws = _inputs(2)
    x[3, :] = 0.0
    mod = build_stage(PROBE, CFG)
    run_pipeline(mod, "lower-to-tiles")
    want = dict(zip(("q", "qscale", "acc", "y"), run_module(mod, [x, w, ws])))
    res = run_pypto_sim(mod, {"x": x, "w": w, "w_scale": ws}, timeout_s=300)
    assert res.verify and not res.failed_records, res.failed_records[:3]
    for name, v in want.items():
        got = res.outputs[name]
        assert got.dtype == v.dtype, name
        assert torch.equal(got, v), (name, (got.double() - v.double()).abs().max())
