"""A reshape read as the lhs of a one-row batched matmul is cloned (pypto-legalize `clone` on tile.reshape).

pypto 0.2.0's per-pass verify, from InferDynShape on (InferDynShape, InferParamIndex, CodegenPreproc), computes a
batched matmul whose lhs is a `pypto.reshape` result with one row per batch ([B, 1, K], B > 1) from batch 0's lhs
row for every batch: FB4001, the rows of batches 1.. wholly different from the tensor graph's (the indexer at
seq 1, batch 2 and 3: `TENSOR_default_loop_1_..._hiddenfunc2_9`, the weighted head sum kernels_src/indexer.py:59,
max |diff| 3.17; decode_csa's same matmul showed no record at batch 2, and is cloned too). The SIM outputs are right. Not seen with two rows per batch, with the
reshape on the rhs, or when another op stands between the reshape and the matmul; the clone gives the operand its own
buffer and the records go away. ONE_ROW is the reproducer (the indexer's [B, H] weights reshaped to [B, 1, H] times
[B, H, NC] scores)."""
from __future__ import annotations

import pytest
import torch

from attnc.codegen.pypto.emit import emit_pypto
from attnc.ir import parse_ir
from attnc.ir.interpreter import run_module
from tests.markers import needs_pypto

ONE_ROW = """\
builtin.module {
  func.func @one_row(%w: tensor<BxMKxf32>, %d: tensor<Bx8x64xf32>) -> tensor<BxMx64xf32> attributes {arg_names = ["w", "d"], result_names = ["s"]} {
    %e = tile.relu %w {loc = "r.py:1"} : (tensor<BxMKxf32>) -> tensor<BxMKxf32>
    %a = tile.reshape %e {loc = "r.py:2"} : (tensor<BxMKxf32>) -> tensor<BxMx8xf32>
    %s = tile.matmul %a, %d {loc = "r.py:3", transpose_b = false} : (tensor<BxMx8xf32>, tensor<Bx8x64xf32>) -> tensor<BxMx64xf32>
    func.return %s : tensor<BxMx64xf32>
  }
}
"""
RECORD_PASSES = ["CodegenPreproc", "InferDynShape", "InferParamIndex"]


def _one_row(batch: int = 2, rows: int = 1):
    text = ONE_ROW.replace("MK", str(rows * 8)).replace("B", str(batch)).replace("M", str(rows))
    return parse_ir(text, "one_row.mlir")


def _inputs(batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(batch, 8, generator=g), "d": torch.randn(batch, 8, 64, generator=g)}


def test_only_a_one_row_batched_lhs_reshape_is_cloned():
    program = emit_pypto(_one_row())
    assert ("t2 = pypto.reshape(t1, [2, 1, 8])  # r.py:2\n    pypto.set_vec_tile_shapes(2, 1, 16)\n"
            "    t2 = pypto.clone(t2)\n") in program
    for batch, rows in ((1, 1), (2, 2)):  # one batch: no other batch to misread; two rows per batch: verified right
        assert "pypto.clone(t2)" not in emit_pypto(_one_row(batch, rows)), (batch, rows)


@needs_pypto
def test_one_row_batched_matmul_simulates_without_verify_records():
    from attnc.codegen.pypto.target import run_pypto_sim
    from attnc.sim_check import check_outputs

    mod, inputs = _one_row(), _inputs()
    res = run_pypto_sim(mod, inputs, timeout_s=300)
    assert res.verify and not res.failed_records
    check = check_outputs(mod, inputs, res.outputs, ["s"])
    assert check.ok, check.failures


@needs_pypto
@pytest.mark.slow
def test_one_row_batched_matmul_without_the_clone_fails_pypto_per_pass_verify(monkeypatch):
    """The reproducer of the pypto 0.2.0 verifier defect (checked so that a pypto which fixes it is noticed): the
    same program without the clone gives FB4001 records whose logged outputs are batch 0's lhs row times batch 1's
    rhs, while the SIM outputs equal the interpreter."""
    from attnc.codegen.pypto import legalize
    from attnc.codegen.pypto.target import run_pypto_sim, unexcused

    mod, inputs = _one_row(), _inputs()
    monkeypatch.setattr(legalize, "one_row_batched_lhs", lambda use: False)
    res = run_pypto_sim(mod, inputs, timeout_s=300)
    assert "pypto.clone(t2)" not in res.program
    assert sorted(r[0].rsplit("_Pass_", 1)[1].split("_", 1)[1] for r in res.failed_records) == RECORD_PASSES
    assert len(unexcused(res)) == len(res.failed_records) == 3
    w = torch.relu(inputs["w"])
    misread = (w[0] @ inputs["d"][1]).tolist()  # batch 1 computed from batch 0's lhs row
    right = (w[1] @ inputs["d"][1]).tolist()
    for rec in res.failed_records:
        assert rec[3]["code"] == "FB4001" and rec[3]["max_abs"] > 0.5, rec
        for golden, output in rec[3]["mismatches"]:
            assert min(abs(output - v) for v in misread) <= 1e-5 * max(1.0, abs(output)), (output, rec)
            assert min(abs(golden - v) for v in right) <= 1e-5 * max(1.0, abs(golden)), (golden, rec)
    (want,) = run_module(mod, list(inputs.values()))
    torch.testing.assert_close(res.outputs["s"], want, rtol=1e-6, atol=1e-6)
