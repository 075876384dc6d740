"""The pypto emitter on small hand-built tile-level modules: deterministic readable text, structure, located
errors, and (when pypto 0.2.0 is importable) SIM runs that match the interpreter of the same module.

Modules (MLIR text, parsed with attnc.ir.parse_ir):
  PARALLEL  ragged tile.parallel (20 rows in chunks of 8: runtime valid shapes via arith.minsi) with view/assemble,
            exp, col/row expands, row_sum; its result is the output (the output param is carried, no scratch)
  OPS       matmul(b_trans) + softmax row ops + casts, gather_rows with a 2-D index, iota/cmp/select, scalar ops,
            a tile.read-driven view offset, transpose
  ONLINE    scf.for online softmax over key tiles (3 iter_args, matmul_acc); also returns the loop-carried
            accumulator and an input unchanged (both must be copied into their output params)
"""
from __future__ import annotations

import functools
import itertools
import re

import pytest
import torch

from attnc.codegen.pypto.emit import EmitError, emit_pypto
from attnc.ir import parse_ir, print_ir
from attnc.ir.interpreter import entry_function, run_module
from attnc.ir.types import dtype_of, shape_of, torch_dtype
from attnc.passes import PassError
from attnc.passes.verify import normalised_error
from tests.markers import needs_pypto

PARALLEL = """\
builtin.module {
  func.func @par(%x: tensor<20x64xf32>, %w: tensor<1x64xf32>) -> tensor<20x64xf32> attributes {arg_names = ["x", "w"], result_names = ["y"]} {
    %init = "tile.full"() <{value = 0.0 : f64}> {loc = "t.py:1"} : () -> tensor<20x64xf32>
    %c0 = arith.constant 0 : index
    %c8 = arith.constant 8 : index
    %c20 = arith.constant 20 : index
    %c64 = arith.constant 64 : index
    %r = "tile.parallel"(%c0, %c20, %init) <{rows = 8 : i64}> ({
    ^bb0(%row: index, %acc: tensor<20x64xf32>):
      %rem = arith.subi %c20, %row : index
      %n = arith.minsi %rem, %c8 : index
      %v = "tile.view"(%x, %row, %c0, %n, %c64) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 2>}> {loc = "t.py:2"} : (tensor<20x64xf32>, index, index, index, index) -> tensor<8x64xf32>
      %e = "tile.exp"(%v) {loc = "t.py:3"} : (tensor<8x64xf32>) -> tensor<8x64xf32>
      %m = "tile.col_expand_mul"(%e, %w) {loc = "t.py:4"} : (tensor<8x64xf32>, tensor<1x64xf32>) -> tensor<8x64xf32>
      %s = "tile.row_sum"(%m) {loc = "t.py:5"} : (tensor<8x64xf32>) -> tensor<8x1xf32>
      %d = "tile.row_expand_div"(%m, %s) {loc = "t.py:6"} : (tensor<8x64xf32>, tensor<8x1xf32>) -> tensor<8x64xf32>
      %a = "tile.assemble"(%d, %acc, %row, %c0, %n, %c64) <{operandSegmentSizes = array<i32: 1, 1, 2, 2>}> {loc = "t.py:7"} : (tensor<8x64xf32>, tensor<20x64xf32>, index, index, index, index) -> tensor<20x64xf32>
      "tile.yield"(%a) : (tensor<20x64xf32>) -> ()
    }) {loc = "t.py:8"} : (index, index, tensor<20x64xf32>) -> tensor<20x64xf32>
    func.return %r : tensor<20x64xf32>
  }
}
"""

OPS = """\
builtin.module {
  func.func @ops(%a: tensor<16x64xbf16>, %b: tensor<32x64xbf16>, %tab: tensor<40x32xf32>, %idx: tensor<4x4xi32>, %pos: tensor<2xi32>) -> (tensor<32x16xf32>, tensor<16x32xbf16>) attributes {arg_names = ["a", "b", "tab", "idx", "pos"], result_names = ["o_t", "o_p"]} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %mm = "tile.matmul"(%a, %b) <{transpose_b = true}> {loc = "ops.py:1"} : (tensor<16x64xbf16>, tensor<32x64xbf16>) -> tensor<16x32xf32>
    %s = "tile.muls"(%mm) <{scalar = 0.125 : f64}> {loc = "ops.py:2"} : (tensor<16x32xf32>) -> tensor<16x32xf32>
    %mx = "tile.row_max"(%s) {loc = "ops.py:3"} : (tensor<16x32xf32>) -> tensor<16x1xf32>
    %sh = "tile.row_expand_sub"(%s, %mx) {loc = "ops.py:3"} : (tensor<16x32xf32>, tensor<16x1xf32>) -> tensor<16x32xf32>
    %e = "tile.exp"(%sh) {loc = "ops.py:4"} : (tensor<16x32xf32>) -> tensor<16x32xf32>
    %sm = "tile.row_sum"(%e) {loc = "ops.py:5"} : (tensor<16x32xf32>) -> tensor<16x1xf32>
    %p = "tile.row_expand_div"(%e, %sm) {loc = "ops.py:5"} : (tensor<16x32xf32>, tensor<16x1xf32>) -> tensor<16x32xf32>
    %pc = "tile.cast"(%p) <{rounding = "rint"}> {loc = "ops.py:6"} : (tensor<16x32xf32>) -> tensor<16x32xbf16>
    %pf = "tile.cast"(%pc) <{rounding = "rint"}> {loc = "ops.py:6"} : (tensor<16x32xbf16>) -> tensor<16x32xf32>
    %g = "tile.gather_rows"(%tab, %idx) {loc = "ops.py:7"} : (tensor<40x32xf32>, tensor<4x4xi32>) -> tensor<4x4x32xf32>
    %gr = "tile.reshape"(%g) {loc = "ops.py:7"} : (tensor<4x4x32xf32>) -> tensor<16x32xf32>
    %z = "tile.add"(%pf, %gr) {loc = "ops.py:8"} : (tensor<16x32xf32>, tensor<16x32xf32>) -> tensor<16x32xf32>
    %zr = "tile.maxs"(%z) <{scalar = 0.0 : f64}> {loc = "ops.py:8"} : (tensor<16x32xf32>) -> tensor<16x32xf32>
    %io = "tile.iota"() <{axis = 1 : i64}> {loc = "ops.py:9"} : () -> tensor<16x32xi32>
    %thr = "tile.full"() <{value = 16.0 : f64}> {loc = "ops.py:9"} : () -> tensor<16x32xi32>
    %c = "tile.cmp"(%io, %thr) <{predicate = "lt"}> {loc = "ops.py:9"} : (tensor<16x32xi32>, tensor<16x32xi32>) -> tensor<16x32xi1>
    %neg = "tile.full"() <{value = -1.0 : f64}> {loc = "ops.py:10"} : () -> tensor<16x32xf32>
    %sel = "tile.select"(%c, %zr, %neg) {loc = "ops.py:10"} : (tensor<16x32xi1>, tensor<16x32xf32>, tensor<16x32xf32>) -> tensor<16x32xf32>
    %p0 = "tile.read"(%pos, %c1) {loc = "ops.py:11"} : (tensor<2xi32>, index) -> index
    %v = "tile.view"(%tab, %p0, %c0) <{pad = "none", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "ops.py:11"} : (tensor<40x32xf32>, index, index) -> tensor<16x32xf32>
    %o2 = "tile.add"(%sel, %v) {loc = "ops.py:12"} : (tensor<16x32xf32>, tensor<16x32xf32>) -> tensor<16x32xf32>
    %t = "tile.transpose"(%o2) <{perm = [1 : i64, 0 : i64]}> {loc = "ops.py:13"} : (tensor<16x32xf32>) -> tensor<32x16xf32>
    func.return %t, %pc : tensor<32x16xf32>, tensor<16x32xbf16>
  }
}
"""

ONLINE = """\
builtin.module {
  func.func @osm(%q: tensor<8x64xbf16>, %k: tensor<64x64xbf16>, %v: tensor<64x64xbf16>) -> (tensor<8x64xbf16>, tensor<8x64xf32>, tensor<8x64xbf16>) attributes {arg_names = ["q", "k", "v"], result_names = ["o", "acc", "q_copy"]} {
    %c0 = arith.constant 0 : index
    %c16 = arith.constant 16 : index
    %c64 = arith.constant 64 : index
    %m0 = "tile.full"() <{value = -1.0e30 : f64}> {loc = "osm.py:1"} : () -> tensor<8x1xf32>
    %l0 = "tile.full"() <{value = 0.0 : f64}> {loc = "osm.py:2"} : () -> tensor<8x1xf32>
    %a0 = "tile.full"() <{value = 0.0 : f64}> {loc = "osm.py:3"} : () -> tensor<8x64xf32>
    %m, %l, %acc = scf.for %j = %c0 to %c64 step %c16 iter_args(%mi = %m0, %li = %l0, %ai = %a0) -> (tensor<8x1xf32>, tensor<8x1xf32>, tensor<8x64xf32>) {
      %kj = "tile.view"(%k, %j, %c0) <{pad = "none", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "osm.py:5"} : (tensor<64x64xbf16>, index, index) -> tensor<16x64xbf16>
      %vj = "tile.view"(%v, %j, %c0) <{pad = "none", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "osm.py:6"} : (tensor<64x64xbf16>, index, index) -> tensor<16x64xbf16>
      %s = "tile.matmul"(%q, %kj) <{transpose_b = true}> {loc = "osm.py:7"} : (tensor<8x64xbf16>, tensor<16x64xbf16>) -> tensor<8x16xf32>
      %s2 = "tile.muls"(%s) <{scalar = 0.125 : f64}> {loc = "osm.py:7"} : (tensor<8x16xf32>) -> tensor<8x16xf32>
      %mt = "tile.row_max"(%s2) {loc = "osm.py:8"} : (tensor<8x16xf32>) -> tensor<8x1xf32>
      %mn = "tile.max"(%mi, %mt) {loc = "osm.py:8"} : (tensor<8x1xf32>, tensor<8x1xf32>) -> tensor<8x1xf32>
      %d = "tile.row_expand_sub"(%s2, %mn) {loc = "osm.py:9"} : (tensor<8x16xf32>, tensor<8x1xf32>) -> tensor<8x16xf32>
      %p = "tile.exp"(%d) {loc = "osm.py:9"} : (tensor<8x16xf32>) -> tensor<8x16xf32>
      %dm = "tile.sub"(%mi, %mn) {loc = "osm.py:10"} : (tensor<8x1xf32>, tensor<8x1xf32>) -> tensor<8x1xf32>
      %al = "tile.exp"(%dm) {loc = "osm.py:10"} : (tensor<8x1xf32>) -> tensor<8x1xf32>
      %ls = "tile.row_sum"(%p) {loc = "osm.py:11"} : (tensor<8x16xf32>) -> tensor<8x1xf32>
      %la = "tile.mul"(%li, %al) {loc = "osm.py:11"} : (tensor<8x1xf32>, tensor<8x1xf32>) -> tensor<8x1xf32>
      %ln = "tile.add"(%la, %ls) {loc = "osm.py:11"} : (tensor<8x1xf32>, tensor<8x1xf32>) -> tensor<8x1xf32>
      %pb = "tile.cast"(%p) <{rounding = "rint"}> {loc = "osm.py:12"} : (tensor<8x16xf32>) -> tensor<8x16xbf16>
      %as = "tile.row_expand_mul"(%ai, %al) {loc = "osm.py:13"} : (tensor<8x64xf32>, tensor<8x1xf32>) -> tensor<8x64xf32>
      %an = "tile.matmul_acc"(%as, %pb, %vj) <{transpose_b = false}> {loc = "osm.py:13"} : (tensor<8x64xf32>, tensor<8x16xbf16>, tensor<16x64xbf16>) -> tensor<8x64xf32>
      scf.yield %mn, %ln, %an : tensor<8x1xf32>, tensor<8x1xf32>, tensor<8x64xf32>
    } {loc = "osm.py:4"}
    %o = "tile.row_expand_div"(%acc, %l) {loc = "osm.py:14"} : (tensor<8x64xf32>, tensor<8x1xf32>) -> tensor<8x64xf32>
    %ob = "tile.cast"(%o) <{rounding = "rint"}> {loc = "osm.py:15"} : (tensor<8x64xf32>) -> tensor<8x64xbf16>
    func.return %ob, %acc, %q : tensor<8x64xbf16>, tensor<8x64xf32>, tensor<8x64xbf16>
  }
}
"""

MODULES = {"parallel": PARALLEL, "ops": OPS, "online": ONLINE}


def module(name: str):
    return parse_ir(MODULES[name], f"{name}.mlir")


def make_inputs(mod, seed: int = 0) -> dict:
    """Random inputs by the function's argument types; i32 tensors hold row indices / offsets in [0, 24)."""
    fn = entry_function(mod)
    g = torch.Generator().manual_seed(seed)
    names = [a.data for a in fn.attributes["arg_names"].data]
    out = {}
    for name, t in zip(names, fn.function_type.inputs.data):
        shape, dt = shape_of(t), dtype_of(t)
        if dt == "i32":
            out[name] = torch.randint(0, 24, shape, generator=g, dtype=torch.int32)
        else:
            out[name] = torch.randn(shape, generator=g).to(torch_dtype(dt))
    return out


def kernel_body(text: str) -> list[str]:
    """The kernel function's body lines (the host constants' values and their decoder follow it)."""
    lines = text.split("\ndef kernel(", 1)[1].split("):\n", 1)[1].splitlines()
    return list(itertools.takewhile(lambda line: not line or line.startswith(" "), lines))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_emission_is_deterministic(name):
    text = emit_pypto(module(name))
    assert text == emit_pypto(module(name))  # a fresh parse of the same IR
    assert text == emit_pypto(parse_ir(print_ir(module(name))))  # print/parse round trip


@pytest.mark.parametrize("name", sorted(MODULES))
def test_program_compiles_and_declares_the_contract(name):
    from attnc.codegen.pypto.host import host_constants

    mod = module(name)
    text = emit_pypto(mod)
    compile(text, f"{name}.py", "exec")
    fn = entry_function(mod)
    args = [a.data for a in fn.attributes["arg_names"].data]
    outs = [a.data for a in fn.attributes["result_names"].data]
    ns: dict = {}
    # the metadata lines are plain literals: evaluate them without importing pypto
    for line in text.splitlines():
        if line.startswith(("ARG_NAMES = ", "OUTPUT_NAMES = ", "ARG_DTYPES = ", "ARG_SHAPES = ", "SCRATCH_NAMES = ",
                            "HOST_CONSTANT_NAMES = ")):
            exec(line, ns)
    # then the scratch buffers and the constants computed from no input (their values in the program: host.py)
    extra = ns["SCRATCH_NAMES"] + ns.get("HOST_CONSTANT_NAMES", [])
    assert ns["ARG_NAMES"] == args + outs + extra and ns["OUTPUT_NAMES"] == outs
    assert set(ns["ARG_DTYPES"]) == set(args + outs + extra) and set(ns["ARG_SHAPES"]) == set(args + outs + extra)
    if "HOST_CONSTANT_NAMES" in ns:  # their values written into the program, as the interpreter computes them
        values = host_constants(mod)
        assert set(ns["HOST_CONSTANT_NAMES"]) == set(values)
        exec(text[text.index("\nHOST_CONSTANT_VALUES = {"):], ns)  # the values and their decoder: numpy only
        written = ns["host_constant_values"]()
        assert list(written) == ns["HOST_CONSTANT_NAMES"]
        for key, v in values.items():
            assert torch.equal(torch.from_numpy(written[key]).to(v.dtype), v), key
    assert "@pypto.frontend.jit(" in text and "\ndef kernel(" in text
    for line in kernel_body(text):  # every op's statement and every loop names its DSL line
        s = line.strip()
        if re.match(r"t\d+ = pypto\.", s) or s.startswith("for "):
            assert re.search(r"  # \w+\.py:\d+$", s), s


def test_parallel_becomes_a_loop_that_assembles_into_the_output_param():
    text = emit_pypto(module("parallel"))
    body = kernel_body(text)
    loops = [ln for ln in body if "pypto.loop(" in ln]
    assert len(loops) == 1 and "pypto.loop(0, 20, 8," in loops[0] and loops[0].rstrip().endswith("# t.py:8")
    assert any("pypto.min(" in ln for ln in body)  # ragged chunk: runtime valid row count
    assert any("pypto.view(x, [8, 64], [r1, 0], valid_shape=[" in ln for ln in body)
    # the tile.full init is dead (every row is assembled): the output itself is carried, no copy at the end
    assert any(ln.strip().startswith("pypto.assemble(") and ln.split("#")[0].rstrip().endswith(", y)") for ln in body)
    assert not any("pypto.full(" in ln for ln in body) and not any(ln.strip().startswith("y[:]") for ln in body)


def test_vector_ops_follow_a_tile_shape_of_their_rank_and_matmuls_a_cube_tile():
    for name in sorted(MODULES):
        body = [ln.strip() for ln in kernel_body(emit_pypto(module(name)))]
        vec_rank, cube = None, False
        for ln in body:
            if ln.startswith("pypto.set_vec_tile_shapes("):
                vec_rank = ln.count(",") + 1
                continue
            if ln.startswith("pypto.set_cube_tile_shapes("):
                cube = True
                continue
            call = re.search(r"pypto\.(\w+)\(", ln)
            if not call or ln.startswith("for ") or call.group(1) in ("min", "max", "ceildiv"):
                continue
            if call.group(1) == "matmul":
                assert cube, ln
                continue
            assert vec_rank is not None, ln
            # ops whose output shape is spelled out: the tile has that rank
            shaped = re.search(r"pypto\.(full|expand_clone|view)\((?:[^\[\]]*?, )?(\[[^\]]*\])", ln)
            if shaped:
                assert shaped.group(2).count(",") + 1 == vec_rank, ln
    body = [ln.strip() for ln in kernel_body(emit_pypto(module("ops")))]
    assert "pypto.set_vec_tile_shapes(16, 32)" in body
    text = "\n".join(body)
    assert "b_trans=True" in text and "pypto.index_select(tab, 0," in text
    assert "pypto.CastMode.CAST_RINT" in text and "pypto.transpose(" in text


def test_scf_for_carries_tensors_in_place_and_copies_aliased_outputs():
    text = emit_pypto(module("online"))
    body = [ln.strip() for ln in kernel_body(text)]
    assert sum("pypto.loop(" in ln for ln in body) == 1
    assert sum(ln.startswith(("t1[:] = ", "t2[:] = ", "t3[:] = ")) for ln in body) == 3  # x[:] = new per iter_arg
    # outputs are stored as clones: pypto 0.2.0 may leave `out[:] = t` unwritten (loop-carried tensors,
    # arguments, index_select results)
    assert any(re.fullmatch(r"o\[:\] = pypto\.clone\(t\d+\)", ln) for ln in body)
    assert "acc[:] = pypto.clone(t3)" in body and "q_copy[:] = pypto.clone(q)" in body


def test_unsupported_ops_raise_located_emit_errors():
    three_d = """\
builtin.module {
  func.func @f(%x: tensor<2x3x4xf32>) -> tensor<3x4x2xf32> attributes {arg_names = ["x"], result_names = ["y"]} {
    %t = "tile.transpose"(%x) <{perm = [1 : i64, 2 : i64, 0 : i64]}> {loc = "k.py:7"} : (tensor<2x3x4xf32>) -> tensor<3x4x2xf32>
    func.return %t : tensor<3x4x2xf32>
  }
}
"""
    with pytest.raises(EmitError, match=r"^k\.py:7: tile\.transpose has no pypto 0\.2\.0 lowering: "):
        emit_pypto(parse_ir(three_d))
    tensor_level = """\
builtin.module {
  func.func @f(%x: tensor<4x8xf32>) -> tensor<4x1xf32> attributes {arg_names = ["x"], result_names = ["y"]} {
    %r = "attn.reduce"(%x) <{kind = "sum", axis = 1 : i64}> {loc = "k.py:3"} : (tensor<4x8xf32>) -> tensor<4x1xf32>
    func.return %r : tensor<4x1xf32>
  }
}
"""
    with pytest.raises(EmitError, match=r"^k\.py:3: attn\.reduce has no pypto 0\.2\.0 lowering: "):
        emit_pypto(parse_ir(tensor_level))
    computed_scalar = """\
builtin.module {
  func.func @f(%x: tensor<4xi32>) -> tensor<4xi32> attributes {arg_names = ["x"], result_names = ["y"]} {
    %t = "tile.add"(%x, %x) {loc = "k.py:5"} : (tensor<4xi32>, tensor<4xi32>) -> tensor<4xi32>
    %c = arith.constant 1 : index
    %s = "tile.read"(%t, %c) {loc = "k.py:6"} : (tensor<4xi32>, index) -> index
    %v = "tile.view"(%x, %s) <{pad = "zero", operandSegmentSizes = array<i32: 1, 1, 0>}> {loc = "k.py:7"} : (tensor<4xi32>, index) -> tensor<4xi32>
    func.return %v : tensor<4xi32>
  }
}
"""
    # a block table's ids are read as scalars of the kernel parameter; a computed tensor's scalars fail in pypto
    with pytest.raises(PassError, match=r"^k\.py:6: tile\.read of a computed tensor has no pypto 0\.2\.0 lowering"):
        emit_pypto(parse_ir(computed_scalar))


@functools.lru_cache(maxsize=None)
def sim_run(name: str):
    from attnc.codegen.pypto.target import run_pypto_sim

    mod = module(name)
    inputs = make_inputs(mod)
    fn = entry_function(mod)
    want = dict(zip([a.data for a in fn.attributes["result_names"].data], run_module(mod, list(inputs.values()))))
    return want, run_pypto_sim(mod, inputs, timeout_s=300)


@needs_pypto
@pytest.mark.parametrize("name", sorted(MODULES))
def test_sim_matches_the_interpreter(name):
    """Tolerance: normalised error (max|sim - interp| / max|interp|) <= 1e-6 per output. The SIM output is
    pypto's torch interpretation of the tensor graph, so the only difference is f32 summation order in
    matmul (seen: 1.4e-7 on the online-softmax accumulator; everything else bit-exact)."""
    want, res = sim_run(name)
    assert res.verify and not res.failed_records, res.failed_records[:3]
    assert res.aicore_us is not None and res.aicore_us > 0
    for out, w in want.items():
        got = res.outputs[out]
        assert got.dtype == w.dtype and tuple(got.shape) == tuple(w.shape), out
        assert normalised_error(got.float(), w.float()) <= 1e-6, out


@needs_pypto
@pytest.mark.parametrize("stage", ["qkv_proj_rope", "sparse_attn_core"])
def test_default_pipeline_with_several_row_chunks_matches_the_interpreter(stage):
    """The default pipeline with 2-row chunks (tiny has 4 tokens, so the token loop really iterates; the default
    16-row chunks give one iteration, covered by test_pypto_target). ~5-8 s per stage."""
    from attnc.codegen.pypto.target import run_pypto_sim
    from attnc.kernels_src import STAGES, build_stage, resolve_config
    from attnc.kernels_src.inputs import make_inputs as stage_inputs
    from attnc.passes import DEFAULT_PIPELINE
    from attnc.passes.verify import run_pipeline

    pipeline, n = re.subn(r"parallelize-tokens\{rows=\d+\}", "parallelize-tokens{rows=2}", DEFAULT_PIPELINE)
    assert n == 1, DEFAULT_PIPELINE
    cfg = resolve_config("tiny")
    mod = build_stage(STAGES[stage], cfg)
    run_pipeline(mod, pipeline)
    inputs = stage_inputs(STAGES[stage], cfg, 3)
    want = dict(zip(STAGES[stage].outputs, run_module(mod, list(inputs.values()))))
    res = run_pypto_sim(mod, inputs, timeout_s=300)
    assert sum("pypto.loop(0, 4, 2," in ln for ln in res.program.splitlines()) == 1
    assert res.verify and not res.failed_records, res.failed_records[:3]
    for out, w in want.items():
        assert res.outputs[out].dtype == w.dtype
        assert normalised_error(res.outputs[out].float(), w.float()) <= 1e-6, out


# A keepdim reduction's [T, d, 1] reshaped to [T, d] (the compressor's pooled entry, compressor.py:60-61): pypto
# 0.2.0 copies the reshape's readers in through the input's layout with the unit dim padded to 32 bytes (8 f32), so
# the reader's [16, 512] tile needs 16 x 512 x 8 x 4 = 256 KiB of UB (192 KiB) and OoOSchedule fails ("Alloc tensor
# size [262144] exceeds MEM_UB size [196608]"): decode_hca and decode_csa at flash (d = 512) failed so.
POOLED = """\
builtin.module {
  func.func @pooled(%x: tensor<ROWSx512x128xf32>) -> tensor<ROWSx512xf32> attributes {arg_names = ["x"], result_names = ["y"]} {
    %s = "tile.row_sum"(%x) {loc = "p.py:1"} : (tensor<ROWSx512x128xf32>) -> tensor<ROWSx512x1xf32>
    %r = "tile.reshape"(%s) {loc = "p.py:2"} : (tensor<ROWSx512x1xf32>) -> tensor<ROWSx512xf32>
    %m = "tile.mul"(%r, %r) {loc = "p.py:3"} : (tensor<ROWSx512xf32>, tensor<ROWSx512xf32>) -> tensor<ROWSx512xf32>
    func.return %m : tensor<ROWSx512xf32>
  }
}
"""


def _pooled(rows: int):
    return parse_ir(POOLED.replace("ROWS", str(rows)), "pooled.mlir")


def test_reshape_of_a_padded_unit_dim_is_made_dense_when_its_readers_would_overflow_ub():
    body = [ln.strip() for ln in kernel_body(emit_pypto(_pooled(32)))]
    at = body.index("t2 = pypto.reshape(t1, [32, 512])  # p.py:2")
    # the clone's tile shrunk by the padding factor 8: its copy-in is 2 x 512 x 8 x 4 = 32 KiB
    assert body[at + 1:at + 3] == ["pypto.set_vec_tile_shapes(2, 512)",
                                   "t2 = pypto.clone(t2)  # dense: its readers' tiles fit UB"]
    assert "pypto.set_vec_tile_shapes(16, 512)" in body[at + 3:]  # the reader's own tile is unchanged
    small = "\n".join(kernel_body(emit_pypto(_pooled(2))))  # a [2, 512] reader tile padded: 32 KiB, fits
    assert "pypto.reshape(t1, [2, 512])" in small and "dense" not in small


def _emit_with(mod, op_name: str, fact: str, factor: int | None) -> list[str]:
    """The kernel body of mod emitted with pypto-legalize's `fact` on its `op_name` ops set to factor (None: absent)."""
    from xdsl.dialects.builtin import IntegerAttr, i64

    from attnc.codegen.pypto.legalize import legalize_function

    fn = entry_function(mod)
    legalize_function(fn)
    for op in fn.walk():
        if op.name == op_name:
            op.attributes.pop(fact, None)
            if factor is not None:
                op.attributes[fact] = IntegerAttr(factor, i64)
    return [ln.strip() for ln in kernel_body(emit_pypto(mod))]


def test_the_padded_reader_clone_is_decided_by_the_padded_in_fact_alone():
    """The emitter computes no padding from types: the clone and its tile follow the reshape's `padded_in`."""
    clone = "t2 = pypto.clone(t2)  # dense: its readers' tiles fit UB"
    for factor, tile in ((8, "(2, 512)"), (16, "(1, 512)")):
        body = _emit_with(_pooled(32), "tile.reshape", "padded_in", factor)
        at = body.index("t2 = pypto.reshape(t1, [32, 512])  # p.py:2")
        assert body[at + 1:at + 3] == [f"pypto.set_vec_tile_shapes{tile}", clone], factor
    for factor in (2, None):  # a [16, 512] reader tile padded 2x (64 KiB) fits UB; without the fact, no clone
        body = _emit_with(_pooled(32), "tile.reshape", "padded_in", factor)
        assert "t2 = pypto.reshape(t1, [32, 512])  # p.py:2" in body and clone not in body, factor


PAIRS = """\
builtin.module {
  func.func @pairs(%x: tensor<256x64xf32>) -> tensor<256x2x32xf32> attributes {arg_names = ["x"], result_names = ["y"]} {
    %e = "tile.exp"(%x) {loc = "q.py:1"} : (tensor<256x64xf32>) -> tensor<256x64xf32>
    %r = "tile.reshape"(%e) {loc = "q.py:2"} : (tensor<256x64xf32>) -> tensor<256x32x2xf32>
    %t = "tile.transpose"(%r) <{perm = [0 : i64, 2 : i64, 1 : i64]}> {loc = "q.py:3"} : (tensor<256x32x2xf32>) -> tensor<256x2x32xf32>
    func.return %t : tensor<256x2x32xf32>
  }
}
"""


def test_a_reshape_into_a_narrow_dim_shrinks_its_tile_by_the_padded_out_fact_alone():
    """The RoPE pairs' [.., 32, 2] f32: pypto-legalize states padded_out = 8 and the reshape's tile (its input's,
    [256, 64] under the 8192 budget) shrinks to 8192 / 8 elements; another factor, another tile; none, none.
    Likewise a transpose out of them (padded_in, its result's tile)."""
    mod = parse_ir(PAIRS, "pairs.mlir")
    from attnc.codegen.pypto.legalize import legalize_function

    fn = entry_function(mod)
    legalize_function(fn)
    (reshape,) = [op for op in fn.walk() if op.name == "tile.reshape"]
    assert reshape.attributes["padded_out"].value.data == 8 and "padded_in" not in reshape.attributes
    for factor, tile in ((8, "(16, 64)"), (2, "(64, 64)"), (None, "(128, 64)")):
        body = _emit_with(parse_ir(PAIRS, "pairs.mlir"), "tile.reshape", "padded_out", factor)
        at = next(i for i, ln in enumerate(body) if ln.startswith("t2 = pypto.reshape(t1"))
        assert body[at - 1] == f"pypto.set_vec_tile_shapes{tile}", (factor, body[at - 1])
    (transpose,) = [op for op in fn.walk() if op.name == "tile.transpose"]
    assert transpose.attributes["padded_in"].value.data == 8
    for factor, tile in ((8, "(16, 2, 32)"), (None, "(128, 2, 32)")):
        body = _emit_with(parse_ir(PAIRS, "pairs.mlir"), "tile.transpose", "padded_in", factor)
        at = next(i for i, ln in enumerate(body) if "= pypto.transpose(" in ln)
        assert body[at - 1] == f"pypto.set_vec_tile_shapes{tile}", (factor, body[at - 1])


@needs_pypto
def test_pooled_reshape_made_dense_simulates_bit_exact():
    from attnc.codegen.pypto.target import run_pypto_sim

    mod = _pooled(32)
    inputs = make_inputs(mod)
    (want,) = run_module(mod, list(inputs.values()))
    res = run_pypto_sim(mod, inputs, timeout_s=300)
    assert res.verify and not res.failed_records and torch.equal(res.outputs["y"], want)


@needs_pypto
@pytest.mark.slow
def test_pooled_reshape_without_the_rule_fails_in_ooo_schedule(monkeypatch, tmp_path):
    """The reproducer of the pypto 0.2.0 limit: the same program without the clone fails in OoOSchedule (checked so
    that a pypto which lifts the limit is noticed)."""
    from attnc.codegen.pypto import emit as pypto_emit
    from attnc.codegen.pypto.sim import PyptoSimError, run_in_subprocess

    mod = _pooled(32)
    inputs = make_inputs(mod)
    monkeypatch.setattr(pypto_emit._Emitter, "_materialize_unpadded", lambda self, op, res: None)
    program = emit_pypto(mod)
    assert "dense" not in program
    (tmp_path / "pooled.py").write_text(program)
    with pytest.raises(PyptoSimError, match="OoOSchedule"):
        run_in_subprocess(tmp_path / "pooled.py", {"x": inputs["x"].numpy()}, verify="none", timeout_s=300)


# A loop that assembles into a tensor which is neither a kernel parameter nor a `pypto.tensor` declaration (the
# result of pypto.full, exp, clone, ...) is never given its buffer by pypto 0.2.0's runtime: "Missing
# RUNTIME_SlotMarkNeedAlloc for assemble slot N" (F74007), then F7A008 (item pool index out of range) and a double
# free in time-only SIM; a whole flash layer then hangs (a `pypto.tensor` declaration instead crashes verify runs of
# some programs, F76005): the emitter makes it a scratch parameter. PARALLEL with its result read by another op
# (`SCRATCH`), and with a loop that leaves rows 16..19 of the zero init unwritten (`PARTIAL`).
SCRATCH = PARALLEL.replace(
    "    func.return %r : tensor<20x64xf32>",
    '    %y = "tile.muls"(%r) <{scalar = 2.0 : f64}> {loc = "t.py:9"} : (tensor<20x64xf32>) -> tensor<20x64xf32>\n'
    "    func.return %y : tensor<20x64xf32>")
PARTIAL = SCRATCH.replace('"tile.parallel"(%c0, %c20, %init)', '"tile.parallel"(%c0, %c16, %init)').replace(
    "    %c20 = arith.constant 20 : index\n", "    %c20 = arith.constant 20 : index\n    %c16 = arith.constant 16 : index\n")


def test_a_loop_assembles_into_a_scratch_parameter_filled_only_when_it_does_not_write_every_element():
    assert SCRATCH != PARALLEL and PARTIAL != SCRATCH
    text = emit_pypto(parse_ir(SCRATCH, "scratch.mlir"))
    body = [ln.strip() for ln in kernel_body(text)]
    assert 'SCRATCH_NAMES = ["ws1"]' in text and "    ws1: pypto.Tensor([20, 64], pypto.DT_FP32),\n" in text
    assert not any("pypto.full(" in ln or "pypto.tensor(" in ln for ln in body)  # the zero init is dead
    assert any(ln.startswith("pypto.assemble(") and ln.split("#")[0].rstrip().endswith(", ws1)") for ln in body)
    text = emit_pypto(parse_ir(PARTIAL, "partial.mlir"))
    body = [ln.strip() for ln in kernel_body(text)]
    (name,) = re.findall(r'SCRATCH_NAMES = \["(ws\d+)"\]', text)
    fill = [i for i, ln in enumerate(body) if re.match(rf"pypto\.assemble\(t\d+, \[0, 0\], {name}\)", ln)]
    assert len(fill) == 1  # the zero fill, after the full it copies
    assert any("pypto.full([20, 64], 0.0" in ln for ln in body[:fill[0]])


@needs_pypto
@pytest.mark.parametrize("text", [SCRATCH, PARTIAL], ids=["covers", "partial"])
def test_loop_into_a_scratch_parameter_simulates_without_runtime_errors_and_matches_the_interpreter(text, tmp_path):
    from attnc.codegen.pypto.sim import run_in_subprocess
    from attnc.codegen.pypto.target import run_pypto_sim

    mod = parse_ir(text, "scratch.mlir")
    inputs = make_inputs(mod)
    (want,) = run_module(mod, list(inputs.values()))
    res = run_pypto_sim(mod, inputs, timeout_s=300)
    assert res.verify and not res.failed_records and normalised_error(res.outputs["y"], want) <= 1e-6
    assert torch.equal(res.outputs["y"][16:], want[16:])  # PARTIAL: the unwritten rows keep the zero fill
    (tmp_path / "k.py").write_text(emit_pypto(mod))  # time only: the runtime errors show without the verifier
    timed = run_in_subprocess(tmp_path / "k.py", {k: v.numpy() for k, v in inputs.items()}, verify="none",
                              timeout_s=300)
    assert timed.aicore_us and not timed.errors, timed.errors[:3]


@needs_pypto
@pytest.mark.slow
def test_loop_into_an_op_result_trips_the_pypto_runtime(monkeypatch, tmp_path):
    """The reproducer of the pypto 0.2.0 limit: SCRATCH with the loop assembling into pypto.full's result logs
    F74007, which the harness reports as a failed run (checked so that a pypto which lifts the limit is noticed)."""
    from attnc.codegen.pypto import emit as pypto_emit
    from attnc.codegen.pypto.sim import PyptoSimError, run_in_subprocess
    from attnc.codegen.pypto import legalize as pypto_legalize

    mod = parse_ir(SCRATCH, "scratch.mlir")
    monkeypatch.setattr(pypto_legalize, "scratch_inits", lambda block, outputs: set())
    monkeypatch.setattr(pypto_legalize, "written_in_parts", lambda loop, j: False)
    program = emit_pypto(mod)
    assert "pypto.tensor(" not in program and "pypto.full([20, 64]" in program
    (tmp_path / "k.py").write_text(program)
    with pytest.raises(PyptoSimError, match="runtime errors.*F74007.*SlotMarkNeedAlloc"):
        run_in_subprocess(tmp_path / "k.py", {k: v.numpy() for k, v in make_inputs(mod).items()}, verify="none",
                          timeout_s=300)


# At batch = 1 a token loop runs once and the view of its row of a [1, d] parameter (the step's kv row, kv_step) at
# the loop index is all of that parameter. pypto 0.2.0 fails to compile an assemble of all of a kernel parameter's
# buffer, inside a loop, into a tensor a matmul reads: "The L0C-to-L1 copy op can have only one input and one output
# tensor" (SrcDstBufferMerge, merge_src_dst_buffer.cpp:315; a verify run dies of SIGSEGV first). sparse_attn_core
# (m = 0), hca_attn_core and decode_swa/hca/csa failed so at batch 1. The emitter assembles a copy of such a piece.
# WHOLE: one query group's keys [zero row | valid ring rows | step row], STEP_ROWS = 1 (all of `step`) or 2 (a row).
WHOLE = """\
builtin.module {
  func.func @whole(%q: tensor<4x128xbf16>, %ring: tensor<8x128xbf16>, %step: tensor<STEP_ROWSx128xbf16>, %n: tensor<1xi32>) -> tensor<1x4x10xf32> attributes {arg_names = ["q", "ring", "step", "n"], result_names = ["s"]} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c128 = arith.constant 128 : index
    %z = "tile.full"() <{value = 0.0 : f64}> {loc = "w.py:1"} : () -> tensor<1x128xbf16>
    %init = "tile.full"() <{value = 0.0 : f64}> {loc = "w.py:1"} : () -> tensor<1x4x10xf32>
    %r = "tile.parallel"(%c0, %c1, %init) <{rows = 1 : i64}> ({
    ^bb0(%row: index, %acc: tensor<1x4x10xf32>):
      %n0 = "tile.read"(%n, %row) {loc = "w.py:2"} : (tensor<1xi32>, index) -> index
      %v = "tile.view"(%ring, %c0, %c0, %n0, %c128) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 2>}> {loc = "w.py:3"} : (tensor<8x128xbf16>, index, index, index, index) -> tensor<8x128xbf16>
      %sv = "tile.view"(%step, %row, %c0) <{pad = "zero", operandSegmentSizes = array<i32: 1, 2, 0>}> {loc = "w.py:4"} : (tensor<STEP_ROWSx128xbf16>, index, index) -> tensor<1x128xbf16>
      %k = "tile.concat"(%z, %v, %sv) <{axis = 0 : i64}> {loc = "w.py:5"} : (tensor<1x128xbf16>, tensor<8x128xbf16>, tensor<1x128xbf16>) -> tensor<10x128xbf16>
      %s = "tile.matmul"(%q, %k) <{transpose_b = true}> {loc = "w.py:6"} : (tensor<4x128xbf16>, tensor<10x128xbf16>) -> tensor<4x10xf32>
      %s3 = "tile.reshape"(%s) {loc = "w.py:7"} : (tensor<4x10xf32>) -> tensor<1x4x10xf32>
      %a = "tile.assemble"(%s3, %acc, %row, %c0, %c0) <{operandSegmentSizes = array<i32: 1, 1, 3, 0>}> {loc = "w.py:8"} : (tensor<1x4x10xf32>, tensor<1x4x10xf32>, index, index, index) -> tensor<1x4x10xf32>
      "tile.yield"(%a) : (tensor<1x4x10xf32>) -> ()
    }) {loc = "w.py:9"} : (index, index, tensor<1x4x10xf32>) -> tensor<1x4x10xf32>
    func.return %r : tensor<1x4x10xf32>
  }
}
"""


def _whole(step_rows: int = 1):
    mod = parse_ir(WHOLE.replace("STEP_ROWS", str(step_rows)), "whole.mlir")
    inputs = make_inputs(mod)
    inputs["n"] = torch.tensor([5], dtype=torch.int32)  # 5 valid ring rows, 3 padding rows
    return mod, inputs


def test_a_packed_piece_that_is_all_of_a_parameter_is_assembled_as_a_copy():
    body = [ln.strip() for ln in kernel_body(emit_pypto(_whole(1)[0]))]
    # the loop has one iteration: its index is 0, so the step's view at it is all of the step, the parameter
    assert not any("pypto.view(step" in ln for ln in body)
    assert "pypto.assemble(pypto.clone(step), [9, 0], k4)" in body
    assert "pypto.assemble(t3, [1, 0], k4)" in body  # the ring's valid rows: a part of it, no copy
    partial = [ln.strip() for ln in kernel_body(emit_pypto(_whole(2)[0]))]  # a row of a 2-row step: no copy
    assert "pypto.assemble(t4, [9, 0], k5)" in partial and not any("clone" in ln for ln in partial)


@needs_pypto
def test_a_packed_piece_that_is_all_of_a_parameter_simulates():
    """Tolerance as test_sim_matches_the_interpreter (f32 matmul summation order: 5.8e-8 seen); records excused by
    cause only (pypto's AssembleChecker reads the ring piece's runtime row offset as 0)."""
    from attnc.codegen.pypto.target import describe, run_pypto_sim, unexcused

    mod, inputs = _whole(1)
    (want,) = run_module(mod, list(inputs.values()))
    res = run_pypto_sim(mod, inputs, timeout_s=300)
    assert res.verify and not unexcused(res), [describe(r, res.program) for r in unexcused(res)]
    assert normalised_error(res.outputs["s"], want) <= 1e-6


@needs_pypto
@pytest.mark.slow
def test_a_packed_piece_that_is_all_of_a_parameter_fails_pypto_without_the_copy(monkeypatch, tmp_path):
    """The reproducer of the pypto 0.2.0 limit: WHOLE assembling the view itself fails to compile (checked so that a
    pypto which lifts the limit is noticed)."""
    from attnc.codegen.pypto import emit as pypto_emit
    from attnc.io import to_numpy
    from attnc.codegen.pypto.sim import PyptoSimError, run_in_subprocess

    mod, inputs = _whole(1)
    monkeypatch.setattr(pypto_emit._Emitter, "whole_of", lambda self, v: v)
    program = emit_pypto(mod)
    assert "pypto.assemble(t4, [9, 0], k5)" in program
    (tmp_path / "k.py").write_text(program)
    with pytest.raises(PyptoSimError, match="L0C-to-L1 copy op can have only one input and one output tensor"):
        run_in_subprocess(tmp_path / "k.py", {k: to_numpy(v) for k, v in inputs.items()}, verify="none",
                          timeout_s=300)


# pypto 0.2.0's per-pass verifier cannot execute the tiles of an index_select whose gathered rows span several
# vector tiles: each [1, 32, 256] tile of this [12, 128, 256] gather is an EXCEPTION record (FB200F "ExecuteOperation
# error: op GATHER", "some elements of the input tensor and the written-to tensor refer to a single memory location":
# torch's overlap check in the calculator's tile Gather, whose input is a fresh index_select result) at
# ExpandFunction, InferParamIndex and CodegenPreproc -- no loop, no runtime valid shape. The outputs are the tensor
# graph's and exact. The m = 128 compressor's window gather ([T, 128] ids) is this op: at T = 12 (batch 2, seq 6) its
# records reach InferDynShape too, which is why decode_hca could not run a step of 8+ tokens; decode_hca's state
# gather gives the ExpandFunction / SplitK / L1CopyInReuseMerge records at every T.
SPLIT_GATHER = """\
builtin.module {
  func.func @split_gather(%table: tensor<268x256xf32>, %ids: tensor<12x128xi32>) -> tensor<12x128x1xf32> attributes {arg_names = ["table", "ids"], result_names = ["s"]} {
    %t = "tile.muls"(%table) <{scalar = 2.0 : f64}> {loc = "g.py:1"} : (tensor<268x256xf32>) -> tensor<268x256xf32>
    %g = "tile.gather_rows"(%t, %ids) {loc = "g.py:2"} : (tensor<268x256xf32>, tensor<12x128xi32>) -> tensor<12x128x256xf32>
    %s = "tile.row_sum"(%g) {loc = "g.py:3"} : (tensor<12x128x256xf32>) -> tensor<12x128x1xf32>
    func.return %s : tensor<12x128x1xf32>
  }
}
"""


@needs_pypto
@pytest.mark.slow
def test_a_gather_split_over_vector_tiles_fails_pypto_per_pass_verify_with_exact_outputs():
    """The reproducer of the pypto 0.2.0 verifier limit (checked so that a pypto which lifts it is noticed)."""
    from attnc.codegen.pypto.target import run_pypto_sim

    mod = parse_ir(SPLIT_GATHER, "split_gather.mlir")
    g = torch.Generator().manual_seed(0)
    inputs = {"table": torch.randn(268, 256, generator=g),
              "ids": torch.randint(0, 268, (12, 128), generator=g, dtype=torch.int32)}
    (want,) = run_module(mod, list(inputs.values()))
    res = run_pypto_sim(mod, inputs, timeout_s=300)
    assert "pypto.set_vec_tile_shapes(1, 32, 256)\n    t2 = pypto.index_select(t1, 0, ids)" in res.program
    assert torch.equal(res.outputs["s"], want)
    assert sorted(r[0].split(":")[-1] for r in res.failed_records) == ["CodegenPreproc", "ExpandFunction",
                                                                       "InferParamIndex"]
    assert all(r[2] == "EXCEPTION" for r in res.failed_records)
