"""`tile`: the tile-level dialect — explicit loops, static tile shapes with runtime valid shapes, tile views
of tensors, and the compute ops that pypto and PTO express on tiles."""
from __future__ import annotations

from xdsl.dialects.builtin import BoolAttr, FloatAttr, IndexType, IntegerAttr, StringAttr, TensorType, UnitAttr
from xdsl.ir import Dialect
from xdsl.irdl import ParsePropInAttrDict, AttrSizedOperandSegments, region_def, traits_def, var_result_def
from xdsl.traits import IsTerminator, RecursiveMemoryEffect

from .common import (
    _make,
    define_shared_ops,
    operand_def,
    prop_def,
    result_def,
    var_operand_def,
)
from .types import describe, dtype_of, shape_of

PAD_VALUES = ("zero", "min", "none")
PARALLEL_SCHEDULES = ("batch", "token")
ROW_REDUCTIONS = ("row_sum", "row_max", "row_min")
EXPAND_KINDS = ("add", "sub", "mul", "div", "max")
SCALAR_KINDS = ("adds", "muls", "maxs")


def _view_verify(self):
    ss, so = shape_of(self.source.type), shape_of(self.result.type)
    self.expect(len(self.offsets) == len(ss) == len(so),
                f"{len(self.offsets)} offsets for a rank-{len(ss)} view of rank {len(so)}")
    self.expect(len(self.valid) in (0, len(so)), "valid shape must be empty or full rank")
    self.expect(self.pad.data in PAD_VALUES, f"pad must be one of {PAD_VALUES}")
    self.same_dtype(self.source, self.result)
    self.expect(all(t <= s for t, s in zip(so, ss)) or len(self.valid) > 0,
                f"tile {describe(self.result.type)} larger than {describe(self.source.type)} needs a valid shape")


def _assemble_verify(self):
    st, sd = shape_of(self.tile.type), shape_of(self.dest.type)
    self.expect(len(self.offsets) == len(sd) == len(st), "offsets must match the rank")
    self.expect(len(self.valid) in (0, len(st)), "valid shape must be empty or full rank")
    self.same_dtype(self.tile, self.dest, self.result)
    self.expect(shape_of(self.result.type) == sd, "result must have the destination's type")


def _read_verify(self):
    self.expect(dtype_of(self.source.type) == "i32", "scalar reads come from i32 tensors")
    self.expect(len(self.indices) == len(shape_of(self.source.type)), "one index per dim")


def _row_reduce_verify(self):
    si, so = shape_of(self.input.type), shape_of(self.result.type)
    self.expect(so == (*si[:-1], 1), f"result must be {[*si[:-1], 1]}, got {describe(self.result.type)}")
    self.same_dtype(self.input, self.result)


def _row_expand_verify(self):
    sx, sv = shape_of(self.lhs.type), shape_of(self.rhs.type)
    self.expect(sv == (*sx[:-1], 1), f"row vector must be {[*sx[:-1], 1]}, got {describe(self.rhs.type)}")
    self.same_dtype(self.lhs, self.rhs, self.result)
    self.same_shape(self.lhs, self.result)


def _col_expand_verify(self):
    sx, sv = shape_of(self.lhs.type), shape_of(self.rhs.type)
    self.expect(len(sv) == len(sx) and sv[-1] == sx[-1] and all(d == 1 for d in sv[:-1]),
                f"column vector must be [1.., {sx[-1]}], got {describe(self.rhs.type)}")
    self.same_dtype(self.lhs, self.rhs, self.result)
    self.same_shape(self.lhs, self.result)


def _scalar_verify(self):
    self.same_shape(self.input, self.result)
    self.same_dtype(self.input, self.result)


def _matmul_acc_verify(self):
    from .common import _matmul_shapes

    out = _matmul_shapes(self, self.lhs, self.rhs, self.transpose_b.value.data)
    self.expect(shape_of(self.acc.type) == out and dtype_of(self.acc.type) in ("f32", "i32"),
                f"accumulator must be f32/i32{list(out)}, got {describe(self.acc.type)}")
    self.same_shape(self.acc, self.result)


def _parallel_verify(self):
    block = self.body.block
    self.expect(len(block.args) == 1 + len(self.inits), "body takes the row offset and one arg per init")
    self.expect(isinstance(block.args[0].type, IndexType), "first body argument must be index")
    for a, v, r in zip(block.args[1:], self.inits, self.outs):
        self.expect(a.type == v.type == r.type, "carried tensors must keep their types")
    self.expect(self.rows.value.data > 0, "rows must be positive")
    # iterations write rows of the carried tensors: constant bounds must lie within them (no runaway loops)
    lower, upper = (_constant_index(v) for v in (self.lower, self.upper))
    if lower is not None:
        self.expect(lower >= 0, f"lower bound {lower} is negative")
    if upper is not None and self.inits:
        rows = min(shape_of(v.type)[0] if shape_of(v.type) else 1 for v in self.inits)
        self.expect(upper <= rows, f"upper bound {upper} exceeds the {rows} rows of the carried tensors")
    schedule = self.attributes.get("schedule")  # set by schedule-attention: the query groups one iteration takes
    self.expect(schedule is None or (isinstance(schedule, StringAttr) and schedule.data in PARALLEL_SCHEDULES),
                f"schedule must be one of {PARALLEL_SCHEDULES}")
    reciprocal = self.attributes.get("reciprocal_divisions")  # set by schedule-attention (pypto-legalize reads it)
    self.expect(reciprocal is None or isinstance(reciprocal, UnitAttr), "reciprocal_divisions is a unit attribute")
    budget = self.attributes.get("vec_tile_elems")  # set by schedule-attention: vector tile size inside the loop
    self.expect(budget is None or (isinstance(budget, IntegerAttr) and 16 <= budget.value.data <= 1 << 20),
                "vec_tile_elems must be an integer in [16, 2^20]")


def _constant_index(v):
    from xdsl.dialects.arith import ConstantOp

    owner = v.owner
    if isinstance(owner, ConstantOp) and isinstance(owner.value, IntegerAttr):
        return owner.value.value.data
    return None


def _yield_verify(self):
    pass


_SHARED = define_shared_ops("tile")

ViewOp = _make("tile.view", dict(
    source=operand_def(TensorType), offsets=var_operand_def(IndexType), valid=var_operand_def(IndexType),
    pad=prop_def(StringAttr), result=result_def(TensorType),
    assembly_format="$source `[` $offsets `]` (`valid` `[` $valid^ `]`)? attr-dict `:` type($source) `->` "
                    "type($result)",
    irdl_options=(AttrSizedOperandSegments(as_property=True), ParsePropInAttrDict()), verify_=_view_verify))
AssembleOp = _make("tile.assemble", dict(
    tile=operand_def(TensorType), dest=operand_def(TensorType), offsets=var_operand_def(IndexType),
    valid=var_operand_def(IndexType), result=result_def(TensorType),
    assembly_format="$tile `into` $dest `[` $offsets `]` (`valid` `[` $valid^ `]`)? attr-dict `:` type($tile) `,` "
                    "type($dest) `->` type($result)",
    irdl_options=(AttrSizedOperandSegments(as_property=True), ParsePropInAttrDict()), verify_=_assemble_verify))
ReadOp = _make("tile.read", dict(source=operand_def(TensorType), indices=var_operand_def(IndexType),
                                 result=result_def(IndexType), verify_=_read_verify))
MatmulAccOp = _make("tile.matmul_acc", dict(
    acc=operand_def(TensorType), lhs=operand_def(TensorType), rhs=operand_def(TensorType),
    transpose_b=prop_def(BoolAttr), result=result_def(TensorType), verify_=_matmul_acc_verify))
_ROW = [_make(f"tile.{k}", dict(input=operand_def(TensorType), result=result_def(TensorType),
                                verify_=_row_reduce_verify)) for k in ROW_REDUCTIONS]
_ROW_EXPAND = [_make(f"tile.row_expand_{k}", dict(lhs=operand_def(TensorType), rhs=operand_def(TensorType),
                                                  result=result_def(TensorType), verify_=_row_expand_verify))
               for k in EXPAND_KINDS]
_COL_EXPAND = [_make(f"tile.col_expand_{k}", dict(lhs=operand_def(TensorType), rhs=operand_def(TensorType),
                                                  result=result_def(TensorType), verify_=_col_expand_verify))
               for k in EXPAND_KINDS]


def _floor_verify(self):
    self.same_shape(self.input, self.result)
    self.same_dtype(self.input, self.result)
    self.expect(dtype_of(self.input.type) == "f32", f"operand must be f32, got {describe(self.input.type)}")


# rounding toward -inf in f32: the integer division pypto-legalize writes in f32 (pypto 0.2.0 has no int32 one)
FloorOp = _make("tile.floor", dict(input=operand_def(TensorType), result=result_def(TensorType),
                                   verify_=_floor_verify))


def _topk_pairs_verify(self):
    ss, sv, si = shape_of(self.scores.type), shape_of(self.values.type), shape_of(self.ids.type)
    k = self.k.value.data
    self.expect(dtype_of(self.scores.type) == "f32", f"scores must be f32, got {describe(self.scores.type)}")
    self.expect(len(ss) >= 1 and 1 <= k <= ss[-1], f"k = {k} must lie in [1, {ss[-1] if ss else 0}]")
    self.expect(sv == si == (*ss[:-1], k), f"values and ids must be [..., {k}]")
    self.expect(dtype_of(self.values.type) == "f32" and dtype_of(self.ids.type) == "i32",
                "values must be f32 and ids i32")


# the k largest scores of each row (last axis), descending, ties to the lower id, and their ids: pypto.topk as it
# is (pypto-legalize writes tile.topk with it: the validity as a sentinel score, picks of it -1)
TopkPairsOp = _make("tile.topk_pairs", dict(scores=operand_def(TensorType), k=prop_def(IntegerAttr),
                                            values=result_def(TensorType), ids=result_def(TensorType),
                                            verify_=_topk_pairs_verify))


def _fill_padding_verify(self):
    self.expect(self.input.type == self.result.type, "result must have the input's type")


# the tile as it is, padding included: a zero-padded view's padding rows/columns become valid (pypto-legalize writes
# it before a concat, which pypto joins by valid parts); the values are the view's, so the interpreter returns them
FillPaddingOp = _make("tile.fill_padding", dict(input=operand_def(TensorType), result=result_def(TensorType),
                                                verify_=_fill_padding_verify))
def _fill_verify(self):
    self.expect(len(self.valid) == len(shape_of(self.result.type)), "valid shape must be full rank")


# a tile of one value whose valid shape is runtime (pypto.full(..., valid_shape=)): pypto-legalize writes it for a
# zero-padded piece's zeros, assembled by its valid part; the interpreter fills the whole tile
FillOp = _make("tile.fill", dict(
    valid=var_operand_def(IndexType), value=prop_def(FloatAttr), result=result_def(TensorType),
    assembly_format="`valid` `[` $valid `]` attr-dict `:` type($result)",
    irdl_options=(ParsePropInAttrDict(),), verify_=_fill_verify))
_SCALAR = [_make(f"tile.{k}", dict(input=operand_def(TensorType), scalar=prop_def(FloatAttr),
                                   result=result_def(TensorType), verify_=_scalar_verify)) for k in SCALAR_KINDS]

YieldOp = _make("tile.yield", dict(values=var_operand_def(TensorType), verify_=_yield_verify,
                                   assembly_format="($values^ `:` type($values))? attr-dict",
                                   traits=traits_def(IsTerminator())))
ParallelOp = _make("tile.parallel", dict(
    lower=operand_def(IndexType), upper=operand_def(IndexType), inits=var_operand_def(TensorType),
    rows=prop_def(IntegerAttr), body=region_def("single_block"), outs=var_result_def(TensorType),
    assembly_format="$lower `to` $upper (`inits` `(` $inits^ `:` type($inits) `)`)? attr-dict-with-keyword $body `->` "
                    "type($outs)",
    irdl_options=(ParsePropInAttrDict(),),
    traits=traits_def(RecursiveMemoryEffect()), verify_=_parallel_verify))

TILE_OPS = [*_SHARED, ViewOp, AssembleOp, ReadOp, MatmulAccOp, FloorOp, TopkPairsOp, FillPaddingOp, FillOp, *_ROW, *_ROW_EXPAND, *_COL_EXPAND, *_SCALAR,
            YieldOp, ParallelOp]
Tile = Dialect("tile", TILE_OPS, [])
TILE = {op.name.split(".", 1)[1]: op for op in TILE_OPS}
