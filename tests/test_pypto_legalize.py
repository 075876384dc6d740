"""pypto-legalize (codegen/pypto/legalize.py): each fact it states on the tile IR, the verifier of each fact's form,
the emitter printing from the facts (a changed fact changes the program), and the emitter's IR queries: it
inspects no uses or producers of a value (issue 19). Hand-built modules from tests/test_pypto_emit.py."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from xdsl.dialects.builtin import ArrayAttr, IntegerAttr, StringAttr, i1

from attnc.codegen.pypto.emit import emit_pypto, in_place_outputs
from attnc.ir import parse_ir, print_ir
from attnc.ir.interpreter import entry_function
from attnc.codegen.pypto.legalize import legalize_function
from tests.test_pypto_emit import PARALLEL, PARTIAL, SCRATCH, WHOLE

EMITTER = Path(__file__).resolve().parents[1] / "codegen" / "pypto" / "emit.py"
# what a value's uses or producer are, or where an op sits: the questions the emitter must not ask
IR_QUERIES = {"uses", "owner", "parent", "parent_op", "parent_block", "parent_region", "has_one_use", "first_use",
              "get_unique_use", "next_op", "prev_op", "users", "get_users"}


def _legalized(text: str):
    mod = parse_ir(text, "t.mlir")
    fn = entry_function(mod)
    legalize_function(fn)
    return mod, fn


def _ops(fn, name: str):
    return [op for op in fn.walk() if op.name == name]


def test_the_emitter_inspects_no_uses_or_producers():
    tree = ast.parse(EMITTER.read_text())
    found = set()

    def scan(node, where: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.ClassDef)):
                scan(child, f"{where}.{child.name}" if where else child.name)
                continue
            if isinstance(child, ast.Attribute) and child.attr in IR_QUERIES:
                found.add((where.replace("_Emitter.", "") if where.startswith("_Emitter.") else where, child.attr))
            scan(child, where)

    scan(tree, "")
    assert not found, f"the emitter asks the IR where a value comes from or goes: {sorted(found)}"


def test_an_output_written_whole_by_its_loop_is_carried():
    _, fn = _legalized(PARALLEL)
    (init,) = _ops(fn, "tile.full")
    assert init.attributes["buffer"].data == "output" and init.attributes["output"].value.data == 0
    (par,) = _ops(fn, "tile.parallel")
    assert par.inits[0] is init.result  # carried as it is: no copy


def test_an_output_returned_through_a_reshape_is_carried_and_declared_as_the_loops_rows():
    """from_tokens' reshape of token rows to [batch, seq, ...]: the loop writes the output parameter (declared with
    the loop's rows, the same bytes), no copy out of a scratch buffer; the harness reads it in the stage's shape."""
    text = PARALLEL.replace("-> tensor<20x64xf32> attributes", "-> tensor<4x5x64xf32> attributes").replace(
        "    func.return %r : tensor<20x64xf32>",
        '    %y = "tile.reshape"(%r) {loc = "t.py:9"} : (tensor<20x64xf32>) -> tensor<4x5x64xf32>\n'
        "    func.return %y : tensor<4x5x64xf32>")
    mod, fn = _legalized(text)
    (init,) = _ops(fn, "tile.full")
    assert init.attributes["buffer"].data == "output" and init.attributes["output"].value.data == 0
    assert [c.value.data for c in fn.attributes["copy_out"].data] == [0]
    (reshape,) = _ops(fn, "tile.reshape")
    assert reshape.attributes["inplace"] == _flag_true()
    program = emit_pypto(mod)
    assert "y: pypto.Tensor([20, 64], pypto.DT_FP32)" in program and "y[:] =" not in program
    assert 'RESULT_SHAPES = {"y": [4, 5, 64]}' in program


def _flag_true():
    return IntegerAttr(1, i1)


def test_an_init_written_whole_but_read_after_the_loop_is_scratch_and_a_partial_one_is_copied():
    _, fn = _legalized(SCRATCH)
    (init,) = _ops(fn, "tile.full")
    assert init.attributes["buffer"].data == "scratch" and "output" not in init.attributes
    mod, fn = _legalized(PARTIAL)  # rows 16..19 unwritten: the fill is live, the loop writes a scratch copy
    init, buf = _ops(fn, "tile.full")
    assert "buffer" not in init.attributes and buf.attributes["buffer"].data == "scratch"
    (copy,) = _ops(fn, "tile.assemble")[:1]
    (par,) = _ops(fn, "tile.parallel")
    assert (copy.tile, copy.dest, par.inits[0]) == (init.result, buf.result, copy.result)
    once = print_ir(mod)
    legalize_function(fn)  # the copy stays one copy, its buffer declared
    assert print_ir(mod) == once


def test_a_scatter_that_is_not_in_place_writes_a_scratch_copy_of_its_table():
    """Without update-in-place's `in_place` the table is not the scatter's to update: the scatter writes a copy
    (a scratch parameter: pypto 0.2.0 gives an assembled tensor a buffer only as a kernel parameter)."""
    mod, fn = _legalized(SCATTER)
    (sc,) = _ops(fn, "tile.scatter_rows")
    (copy,) = _ops(fn, "tile.assemble")
    assert sc.table is copy.result and copy.tile is fn.body.block.args[0] and sc.attributes["in_place"].value.data
    assert copy.dest.owner.attributes["buffer"].data == "scratch"
    text = emit_pypto(mod)
    assert 'SCRATCH_NAMES = ["ws1"]' in text and "pypto.assemble(t, [0, 0], ws1)  # s.py:6" in text


def test_a_row_concat_with_a_zero_padded_piece_is_packed():
    """Rewritten into assembles of its pieces at their row offsets into a local buffer; the zero-padded piece's
    `zero_pad`, the piece that is all of a kernel parameter (the one-row step) `clone`; the same after a rerun."""
    mod, fn = _legalized(WHOLE.replace("STEP_ROWS", "1"))
    assert not _ops(fn, "tile.concat")
    (buf,) = [op for op in _ops(fn, "tile.full") if op.attributes.get("buffer") == StringAttr("local")]
    pieces, cur = [], buf.result
    while cur.has_one_use() and next(iter(cur.uses)).operation.name == "tile.assemble":
        pieces.append(next(iter(cur.uses)).operation)
        cur = pieces[-1].result
    assert [("zero_pad" in p.attributes, "clone" in p.attributes) for p in pieces] == [
        (False, False), (True, False), (False, True)]
    assert pieces[0].dest is buf.result and all(b.dest is a.result for a, b in zip(pieces, pieces[1:]))
    assert not any("zero_fill" in v.attributes for v in _ops(fn, "tile.view"))  # a packed concat: no zero fill
    once = print_ir(mod)
    legalize_function(fn)
    assert print_ir(mod) == once


ZERO_FILL = """\
builtin.module {
  func.func @zf(%x: tensor<8x64xf32>, %n: tensor<1xi32>) -> tensor<8x128xf32> attributes {arg_names = ["x", "n"], result_names = ["y"]} {
    %c0 = arith.constant 0 : index
    %c64 = arith.constant 64 : index
    %n0 = "tile.read"(%n, %c0) {loc = "z.py:1"} : (tensor<1xi32>, index) -> index
    %v = "tile.view"(%x, %c0, %c0, %n0, %c64) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 2>}> {loc = "z.py:2"} : (tensor<8x64xf32>, index, index, index, index) -> tensor<8x64xf32>
    %k = "tile.concat"(%v, %v) <{axis = 1 : i64}> {loc = "z.py:3"} : (tensor<8x64xf32>, tensor<8x64xf32>) -> tensor<8x128xf32>
    func.return %k : tensor<8x128xf32>
  }
}
"""


def test_a_zero_padded_view_read_by_an_unpacked_concat_is_zero_filled():
    """A column concat is not packed: pypto concatenates the valid part only, so the view gets its zeros first."""
    mod, fn = _legalized(ZERO_FILL)
    (concat,) = _ops(fn, "tile.concat")
    assert "packed" not in concat.attributes
    (view,) = _ops(fn, "tile.view")
    assert view.attributes["zero_fill"].value.data
    assert "t2 = pypto.reshape(t2, [8, 64], valid_shape=[8, 64])" in emit_pypto(mod)


def test_the_pass_is_idempotent_and_keeps_values():
    mod, fn = _legalized(PARTIAL)
    once = print_ir(mod)
    legalize_function(fn)
    assert print_ir(mod) == once
    assert "pypto_legalized" in once and "in_out = []" in once


def test_in_out_results_are_the_in_place_scatter_chains():
    from attnc.kernels_src import STAGES, build_stage, resolve_config
    from attnc.passes import PYPTO_PIPELINE
    from attnc.passes.verify import run_pipeline
    from attnc.kernels_src.inputs import make_inputs

    cfg = resolve_config("tiny")
    module = build_stage(STAGES["decode_swa"], cfg)
    report = run_pipeline(module, PYPTO_PIPELINE, verify_inputs=list(make_inputs(STAGES["decode_swa"], cfg, 3).values()))
    recs = [r for r in report.records if r.pass_name.startswith("pypto-legalize")]
    assert recs and all(r.ok and r.error == 0.0 for r in recs)
    assert in_place_outputs(entry_function(module)) == {"kv_ring"}


def test_the_emitter_prints_the_facts_it_is_given():
    """A fact changed by hand changes the program: the emitter decides nothing of its own."""
    mod, fn = _legalized(PARALLEL)
    carried = emit_pypto(mod)
    assert "y: pypto.Tensor" in carried and "ws" not in carried  # the output is carried, no scratch
    (init,) = _ops(fn, "tile.full")
    init.attributes["buffer"] = StringAttr("scratch")
    init.attributes.pop("output")
    fn.attributes["copy_out"] = ArrayAttr([IntegerAttr(1, i1)])
    declared = emit_pypto(mod)
    assert 'SCRATCH_NAMES = ["ws1"]' in declared and "pypto.full(" not in declared
    assert "y[:] = pypto.clone(ws1)" in declared


@pytest.mark.parametrize("attr, value, message", [
    ("buffer", 'buffer = "somewhere"', "buffer must be"),
    ("output", 'buffer = "output"', "output buffer names its result index"),
    ("splat", "splat = 3 : i64", "splat must be a bool"),
    ("inplace", "inplace = true", "inplace is a tile.reshape fact"),
])
def test_the_verifier_checks_each_facts_form(attr, value, message):
    text = PARALLEL.replace('"tile.full"() <{value = 0.0 : f64}> {loc = "t.py:1"}',
                            f'"tile.full"() <{{value = 0.0 : f64}}> {{loc = "t.py:1", {value}}}')
    assert text != PARALLEL
    with pytest.raises(Exception, match=message):  # parse_ir verifies: IRError with the location
        parse_ir(text, "bad.mlir")


SCATTER = """\
builtin.module {
  func.func @sc(%t: tensor<8x2xf32>, %r: tensor<4x2xf32>, %p: tensor<1xi32>) -> tensor<8x2xf32> attributes {arg_names = ["t", "r", "p"], result_names = ["t"]} {
    %i = "tile.iota"() <{axis = 0 : i64}> {loc = "s.py:1"} : () -> tensor<4xi32>
    %p4 = "tile.broadcast"(%p) {loc = "s.py:2"} : (tensor<1xi32>) -> tensor<4xi32>
    %two = "tile.full"() <{value = 2.0 : f64}> {loc = "s.py:3"} : () -> tensor<4xi32>
    %m = "tile.mul"(%i, %two) {loc = "s.py:4"} : (tensor<4xi32>, tensor<4xi32>) -> tensor<4xi32>
    %ids = "tile.add"(%m, %p4) {loc = "s.py:5"} : (tensor<4xi32>, tensor<4xi32>) -> tensor<4xi32>
    %new = "tile.scatter_rows"(%t, %r, %ids) {loc = "s.py:6"} : (tensor<8x2xf32>, tensor<4x2xf32>, tensor<4xi32>) -> tensor<8x2xf32>
    func.return %new : tensor<8x2xf32>
  }
}
"""


def test_a_scatter_id_is_stated_as_scalar_steps_and_printed_from_them():
    """The ids ops are never made (scalar_ids); the scatter carries its row m's id as scalar steps, which the
    emitter prints as they are (a changed step changes the program)."""
    mod, fn = _legalized(SCATTER)
    assert all("scalar_ids" in op.attributes for op in fn.body.block.ops
               if op.name in ("tile.iota", "tile.broadcast", "tile.full", "tile.mul", "tile.add")
               and "buffer" not in op.attributes)  # (the table's scratch copy)
    (sc,) = _ops(fn, "tile.scatter_rows")
    assert [s.data for s in sc.attributes["scalar_id"].data] == ["({m} * 2)", "p[0]", "({s0} + {s1})", "{s2}"]
    text = emit_pypto(mod)
    assert "s2 = (w1 * 2)\n        s3 = p[0]\n        s4 = (s2 + s3)\n        if s4 >= 0:" in text
    sc.attributes["scalar_id"] = ArrayAttr([StringAttr("({m} + 5)"), StringAttr("{s0}")])
    text = emit_pypto(mod)
    assert "s2 = (w1 + 5)\n        if s2 >= 0:" in text and "p[0]" not in text


def test_a_scatter_id_without_a_scalar_form_is_refused_by_the_pass():
    from attnc.passes import PassError

    text = SCATTER.replace(
        '%ids = "tile.add"(%m, %p4) {loc = "s.py:5"} : (tensor<4xi32>, tensor<4xi32>) -> tensor<4xi32>',
        '%f = "tile.full"() <{value = 2.0 : f64}> {loc = "s.py:5"} : () -> tensor<4xf32>\n'
        '    %ids = "tile.cast"(%f) <{rounding = "rint"}> {loc = "s.py:7"} : (tensor<4xf32>) -> tensor<4xi32>')
    assert text != SCATTER
    with pytest.raises(PassError, match=r"s\.py:7: tile\.cast computes a scatter_rows id"):
        _legalized(text)


def test_tile_floor_is_an_f32_op_the_interpreter_rounds_down():
    import torch

    from attnc.ir.interpreter import run_module

    text = """builtin.module {
  func.func @fl(%x: tensor<4xf32>) -> tensor<4xf32> attributes {arg_names = ["x"], result_names = ["y"]} {
    %y = "tile.floor"(%x) {loc = "f.py:1"} : (tensor<4xf32>) -> tensor<4xf32>
    func.return %y : tensor<4xf32>
  }
}"""
    (y,) = run_module(parse_ir(text, "f.mlir"), [torch.tensor([-1.5, -1.0, 0.5, 2.9])])
    assert torch.equal(y, torch.tensor([-2.0, -1.0, 0.0, 2.0]))
    with pytest.raises(Exception, match="operand must be f32"):
        parse_ir(text.replace("xf32", "xi32"), "f.mlir")
