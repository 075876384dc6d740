"""pypto 0.2.0 per-pass verify records FB4001 of one bf16 step, and where SIM and the interpreter round apart.

decode_csa (dense or paged) at tiny, seq=5 (the per-token loop of passes/schedule_attention.py `_per_token`),
max_pos=256, start position 60, seed 0. Measured (plog): `ErrCode: FB4001! TENSOR_L7_..._Pass_04_ExpandFunction
Verify ... FAILED` (and Pass_14_SplitK, Pass_17_L1CopyInReuseMerge, Pass_26_InferDynShape): a few of the 5120 values
of the loop's attention output differ from pypto's tensor-graph golden by one bf16 step (paged: golden -0.287109,
output -0.289062) or, downstream of a flipped bf16 weight, by up to one step of the largest value (dense: -0.0688477
vs -0.0703125, max |diff| 0.0039 at values up to 0.875). Cause: pypto's per-pass verify tolerance (rtol =
atol = 1e-3) is below one bf16 step (2^-8..2^-7 relative), and its tiled passes sum the loop's f32 values in
another order than the tensor graph before the cast to bf16 -- a verifier limit, not a wrong value: SPLIT_SUM below
(a row sum over two vector tiles, cast to bf16) gives the same record with outputs equal to the interpreter. Such a
record is excused only when every value pypto logs is a bf16 value and its largest difference is at most one bf16
step of the largest logged value (`pypto_target.one_bf16_step`: the bound of `attnc run`'s check).

The SIM outputs (pypto's tensor graph) against the interpreter: paged, `out` of exactly that iteration differs in
20 of 64 values. Cause (found by re-running the interpreter with pypto's calculator matmul, an f32
`torch.matmul`, at one op at a time): the loop's logit matmul q·K^T (kernels_src/sparse_attn.py:39 ->
schedule_attention.group_attention, `pypto.matmul(..., b_trans=True)` over d = 128) -- the interpreter rounds the
exact sum once, pypto's f32 BLAS sum lands one f32 step away, and after softmax, P·V and the cast one bf16 value of
the attention output rounds the other way; with that one matmul summed as pypto does, the interpreter reproduces
every SIM output bit for bit. No emitted order can make an f32 sum equal the exact one, so the claim is bounded:
bf16 outputs within one rounding step of the largest value (`sim_check`, the rule of `attnc run`)."""

import numpy as np
import pytest
import torch

from markers import needs_pypto

LOOP_PASSES = {"Pass_04_ExpandFunction", "Pass_14_SplitK", "Pass_17_L1CopyInReuseMerge", "Pass_26_InferDynShape"}

R, N = 64, 16384  # rows of 2 vector tiles of 8192 f32 (the emitter's default budget)
SPLIT_SUM = f"""\
builtin.module {{
  func.func @split_sum(%x: tensor<{R}x{N}xf32>) -> tensor<{R}x1xbf16> attributes {{arg_names = ["x"], result_names = ["s"]}} {{
    %s = "tile.row_sum"(%x) {{loc = "r.py:1"}} : (tensor<{R}x{N}xf32>) -> tensor<{R}x1xf32>
    %b = "tile.cast"(%s) <{{rounding = "rint"}}> {{loc = "r.py:2"}} : (tensor<{R}x1xf32>) -> tensor<{R}x1xbf16>
    func.return %b : tensor<{R}x1xbf16>
  }}
}}
"""


def _split_sum_input() -> torch.Tensor:
    """Each row: a bf16 rounding midpoint (1 + 2^-8) and 200 pairs +e, -e (exact sum 0) at random places, so the
    f32 sum's last bit -- hence the bf16 result -- depends on the summation order."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(R, N)
    x[:, 0] = 1 + 2.0 ** -8
    for r in range(R):
        pos = torch.randperm(N - 1, generator=g)[:400] + 1
        e = torch.ldexp(torch.ones(200), torch.randint(-27, -22, (200,), generator=g)) * (1 + torch.rand(200, generator=g))
        x[r, pos[:200]] = e
        x[r, pos[200:]] = -e
    return x


@needs_pypto
def test_split_row_sum_cast_to_bf16_reports_fb4001_one_step():
    """The reproducer of the excused FB4001 (~10 s): outputs equal the interpreter, every pass record is FB4001
    with adjacent bf16 values (asserted so that a pypto which lifts the limit is noticed)."""
    from attnc.codegen.pypto.target import excuse, one_bf16_step, run_pypto_sim, unexcused
    from attnc.ir import parse_ir
    from attnc.ir.interpreter import run_module

    mod = parse_ir(SPLIT_SUM, "split_sum.mlir")
    x = _split_sum_input()
    (want,) = run_module(mod, [x])
    res = run_pypto_sim(mod, {"x": x}, timeout_s=300)
    assert "pypto.set_vec_tile_shapes(1, 8192)\n    t1 = pypto.sum(x, -1, True)" in res.program
    assert torch.equal(res.outputs["s"], want)
    assert res.failed_records and not unexcused(res)
    for rec in res.failed_records:
        assert rec[3]["code"] == "FB4001" and one_bf16_step(rec[3]) and excuse(rec, res.program), rec


def test_fb4001_is_excused_only_within_one_bf16_step():
    """The plog lines of a record as pypto 0.2.0 writes them (decode_csa seq 5, start 60), parsed and judged."""
    from attnc.codegen.pypto.sim.runner import parse_log_lines
    from attnc.codegen.pypto.target import excuse

    def log(golden: str, output: str, max_abs: str) -> list:
        return [
            "[ERROR] PYPTO(1):2026-12-07 03:33:51.129 [flow_verifier.cpp:107][VERIFY]:ErrCode: FB4001! "
            "TENSOR_L7_Unroll1_PATH0_hiddenfunc0_35_Pass_04_ExpandFunction Verify for 1 data view list index 0 "
            "result FAILED",
            "[INFO ] PYPTO(1):2026-12-07 03:33:51.129 [flow_verifier.h:151][VERIFY]:  ",
            "    Error rtol=0.001000 atol=0.001000 index:3083 golden:-0.0688477 output:-0.0703125 absDiff:0.00146484 "
            "relDiff:0.0212766  ",
            f"    Error rtol=0.001000 atol=0.001000 index:3160 golden:{golden} output:{output} absDiff:0.00390625 "
            "relDiff:0.00448430",
            f"  All size:5120 failNum:0 maxAbsDiff:{max_abs} maxRelDiff:0.0307692averageAbsDiff:2.67029e-06 "
            "errorCount:7",
            "  maxAbs-> index:3083 golden:-0.2",
            "[INFO ] PYPTO(1):2026-12-07 03:33:51.135 [flow_verifier.cpp:113][VERIFY]:TENSOR_L7_Unroll1_PATH0_"
            "hiddenfunc0_35_Pass_04_ExpandFunction Verify for 1 data view list index 0 result PASS",
        ]

    (rec, ok), _ = parse_log_lines(log("0.871094", "0.875", "0.00390625"))  # decode_csa's record
    assert rec[3]["mismatches"] == [[-0.0688477, -0.0703125], [0.871094, 0.875]] and rec[3]["max_abs"] == 0.00390625
    assert excuse(rec) and ok[2] == "PASS"  # max |diff| one step (2^-8) of the largest logged value 0.875
    for bad in (("0.871094", "0.867188", "0.0078125"),  # two bf16 steps of the largest value
                ("0.3751", "0.373047", "0.00195312"),  # not a bf16 value (an f32 result)
                ("0.375", "0.373047", "0.00390625")):  # a difference of 2 steps of the largest logged value
        (rec, _), _ = parse_log_lines(log(*bad))
        assert excuse(rec) is None, bad


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["decode_csa", "decode_csa_paged"])
def test_per_token_loop_at_start_60_one_bf16_step(stage):
    """The records are excused by their cause; dense: every output equals the interpreter bit for bit at this seed;
    paged: `out` of batch row 1, token 1 differs in 20 of 64 values (the logit matmul's f32 sum, see above), within
    the bound of `attnc run`'s check, the rest bit for bit (f32 states within 1e-6)."""
    import attnc as api
    from attnc.ir.types import to_numpy
    from attnc.codegen.pypto.target import one_bf16_step, run_pypto_sim, unexcused
    from attnc.sim_check import check_outputs

    st = api.build(stage, "tiny", seq=5, max_pos=256)
    api.compile(st, target="pypto")
    arrays = api.inputs(st, seed=0, start_pos=60)
    inputs = api._tensors(st, arrays, "test")
    res = run_pypto_sim(st.module, inputs, timeout_s=900)
    assert not unexcused(res), unexcused(res)[:3]
    loop = [r for r in res.failed_records if r[3].get("code") == "FB4001"]
    assert loop, "pypto no longer reports the token loop's one-bf16-step records: the excuse may go"
    for rec in loop:
        name = rec[0]
        assert name.startswith("TENSOR_L7_") and any(name.endswith(p) for p in LOOP_PASSES), rec
        assert one_bf16_step(rec[3]), rec
    check = check_outputs(st.module, inputs, res.outputs, st.output_names)  # `attnc run`'s rule
    assert check.ok, check.failures
    got = {k: to_numpy(v) for k, v in res.outputs.items()}
    want = api.interpret(st, arrays)
    if stage == "decode_csa_paged":
        g, w = np.asarray(got.pop("out"), np.float64), np.asarray(want.pop("out"), np.float64)
        d = np.abs(g - w)
        assert {tuple(i[:2]) for i in np.argwhere(d > 0)} == {(1, 1)} and (d > 0).sum() == 20, d.max()
        assert {o.name: o.verdict for o in check.outputs}["out"] == "bounded"
    _assert_equal_to_the_interpreter(got, want)


def _assert_equal_to_the_interpreter(got: dict, want: dict) -> None:
    """bf16 and int outputs bit for bit; f32 states within 1e-6 of their largest magnitude (matmul summation
    order; measured 4.8e-7 absolute on values ~1)."""
    for name, w in want.items():
        g, w = np.asarray(got[name]), np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape, name
        if w.dtype == np.float32:
            assert np.abs(g - w).max() <= 1e-6 * max(np.abs(w).max(), 1e-30), name
        else:
            assert np.array_equal(g, w), name


@pytest.mark.parametrize("stage", ["decode_csa_paged"])
def test_per_token_loop_paged_at_start_3_has_no_failed_records_and_equals_the_interpreter(stage):
    """Default suite (~60 s): the token loop (seq 5 > the unroll bound) of the paged layer in SIM."""
    import attnc as api

    st = api.build(stage, "tiny", seq=5, max_pos=256)
    api.compile(st, target="pypto")
    arrays = api.inputs(st, seed=0, start_pos=3)
    want = api.interpret(st, arrays)
    got = api.run_sim(st, arrays)
    assert not got.failed_records, got.failed_records[:3]
    _assert_equal_to_the_interpreter(got.outputs, want)
