"""In-place cache and state writes (issue 7 item 2): attn.scatter_rows, the rings written with it, the
update-in-place pass (the IR's aliasing statement and the write order) and the emitted in/out parameters.
SIM bit-exactness of the in-place programs is tests/test_pypto_target.py (every compressor and layer case)."""
from __future__ import annotations

import re

import pytest
import torch

from attnc.codegen.pypto.emit import emit_pypto, in_place_outputs
from attnc.codegen.pypto.legalize import PyptoLegalize
from attnc.ir import parse_ir
from attnc.ir.interpreter import entry_function, run_module
from attnc.kernels_src import STAGES, build_stage, resolve_config
from attnc.kernels_src.inputs import make_inputs
from attnc.passes import PYPTO_PIPELINE
from attnc.passes.update_in_place import _dependents
from attnc.passes.verify import run_pipeline

IN_OUT = {"compressor": ("kv_state", "score_state", "kv_cmp"),
          "decode_swa": ("kv_ring",),
          "decode_csa": ("kv_ring", "kv_state", "score_state", "kv_cmp", "ikv_state", "iscore_state", "idx_cmp")}


def _compiled(stage: str, pipeline: str = PYPTO_PIPELINE, **overrides):
    cfg = resolve_config("tiny", overrides)
    module = build_stage(STAGES[stage], cfg)
    inputs = list(make_inputs(STAGES[stage], cfg, 3).values())
    report = run_pipeline(module, pipeline, verify_inputs=inputs)
    return module, inputs, report


@pytest.mark.parametrize("stage", sorted(IN_OUT))
def test_every_in_out_array_is_written_in_place_after_its_reads(stage):
    module, _, report = _compiled(stage)
    assert all(r.ok for r in report.records), [r.line() for r in report.records if not r.ok][:2]
    fn = entry_function(module)
    assert in_place_outputs(fn) == set(IN_OUT[stage])
    block = fn.body.block
    order = {op: i for i, op in enumerate(block.ops)}
    scatters = [op for op in block.ops if op.name == "tile.scatter_rows"]
    assert scatters and all(op.attributes["in_place"].value.data for op in scatters)
    for op in scatters:  # no op computed from the old table comes after the write
        assert all(order[r] < order[op] for r in _dependents(op.table, block, skip=op)), op


@pytest.mark.parametrize("stage", sorted(IN_OUT))
def test_program_has_one_in_out_parameter_per_cache_and_copies_no_table(stage):
    module, _, _ = _compiled(stage)
    text = emit_pypto(module)
    params = re.findall(r"^    (\w+): pypto\.Tensor", text, re.M)
    assert len(params) == len(set(params)) and not any(p.endswith("_out") for p in params)
    for name in IN_OUT[stage]:
        assert name in params
        assert not re.search(rf"pypto\.clone\({name}\)|\b{name}\[:\] =", text), name  # never copied or overwritten whole
        writes = re.findall(rf"pypto\.assemble\((\w+), \[[^\]]*\], {name}\)", text)
        # the row writes of one loop over the step's rows (pypto-legalize's scatter-rows per iteration: they divide
        # these rows; or all of them at once when their ids are consecutive), no other write
        assert len(writes) == PyptoLegalize.scatter_rows + 1, (name, writes)
    assert "OUTPUT_NAMES = " + str(list(STAGES[stage].outputs)).replace("'", '"') in text


def test_without_update_in_place_the_program_copies_the_table():
    """The same stage without the pass: value semantics as written, a copy of the table per write."""
    module, _, _ = _compiled("compressor", PYPTO_PIPELINE.replace(",update-in-place", ""))
    text = emit_pypto(module)
    # the copy: the table assembled whole into a scratch parameter the row loop then writes (codegen/pypto/emit.py)
    assert "kv_cmp_out: pypto.Tensor" in text and re.search(r"pypto\.assemble\(kv_cmp, \[0, 0, 0\], ws\d+\)", text)
    assert in_place_outputs(entry_function(module)) == set()


_CONFLICT = '''builtin.module {
  func.func @f(%t: tensor<4x2xf32>, %r: tensor<1x2xf32>, %i: tensor<1xi32>) -> (tensor<4x2xf32>, tensor<4x2xf32>) {
    %new = "tile.scatter_rows"(%t, %r, %i) {loc = "k.py:1"} : (tensor<4x2xf32>, tensor<1x2xf32>, tensor<1xi32>) -> tensor<4x2xf32>
    %a = "tile.add"(%new, %t) {loc = "k.py:2"} : (tensor<4x2xf32>, tensor<4x2xf32>) -> tensor<4x2xf32>
    func.return %new, %a : tensor<4x2xf32>, tensor<4x2xf32>
  }
}'''


def test_a_write_that_cannot_follow_every_read_of_the_old_table_stays_a_copy():
    """%a reads the old and the new table: no order makes the write in place legal."""
    from xdsl.dialects.builtin import ArrayAttr, StringAttr

    module = parse_ir(_CONFLICT)
    fn = entry_function(module)
    fn.attributes["arg_names"] = ArrayAttr([StringAttr(n) for n in ("t", "r", "i")])
    fn.attributes["result_names"] = ArrayAttr([StringAttr(n) for n in ("t", "a")])
    args = [torch.arange(8.0).reshape(4, 2), -torch.ones(1, 2), torch.tensor([2], dtype=torch.int32)]
    want = run_module(module, args)
    run_pipeline(module, "update-in-place")
    assert "in_place" not in next(op for op in fn.body.block.ops if op.name == "tile.scatter_rows").attributes
    assert all(torch.equal(a, b) for a, b in zip(run_module(module, args), want))
    assert re.search(r"pypto\.assemble\(t, \[0, 0\], ws\d+\)", emit_pypto(module))  # the copy written


def test_ring_store_keeps_the_newest_positions_of_a_chunk_longer_than_the_ring():
    """scatter_rows skips the tokens of a long step that are not among the newest R (id -1): a 16-token chunk
    through a window of 8 at tiny leaves slot p mod 8 = the row of the newest such p (independent check)."""
    cfg = resolve_config("tiny", {"seq": 16, "max_pos": 256})
    module = build_stage(STAGES["decode_swa"], cfg)
    inputs = make_inputs(STAGES["decode_swa"], cfg, 4)
    outs = dict(zip(STAGES["decode_swa"].outputs, run_module(module, list(inputs.values()))))
    q_mod = build_stage(STAGES["qkv_proj_rope"], cfg)
    qkv_in = {k: inputs[k] for k in STAGES["qkv_proj_rope"].params}
    kv = dict(zip(STAGES["qkv_proj_rope"].outputs, run_module(q_mod, list(qkv_in.values()))))["kv"]
    B, S, W = cfg["batch"], cfg["seq"], cfg["window"]
    kv = kv.reshape(B, S, -1)
    for b in range(B):
        for s in range(S - W, S):
            p = int(inputs["start_pos"][b]) + s
            assert torch.equal(outs["kv_ring"][b, p % W], kv[b, s]), (b, s)
