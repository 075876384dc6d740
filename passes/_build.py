"""Helpers shared by the passes: build replacement IR with the DSL vocabulary at an op's position (new ops
inherit its DSL location), index arithmetic, and the tile-level ops."""
from __future__ import annotations

import contextlib
from collections.abc import Sequence

from xdsl.dialects import arith, scf
from xdsl.dialects.builtin import IndexType, IntegerAttr, IntegerType, StringAttr, TensorType, i64
from xdsl.ir import Block, Operation, Region, SSAValue
from xdsl.rewriter import InsertPoint

from attnc.ir.common import LOC_ATTR, float_attr, op_location
from attnc.ir.dsl import Tensor, emit_op, emitting
from attnc.ir.tile_dialect import TILE
from attnc.ir.types import dtype_of, shape_of, tensor_type

INDEX = IndexType()


@contextlib.contextmanager
def before(op: Operation):
    with emitting(InsertPoint.before(op), op_location(op) if LOC_ATTR in op.attributes else None):
        yield


@contextlib.contextmanager
def at_end(block, loc: str | None):
    with emitting(InsertPoint.at_end(block), loc):
        yield


def T(v: SSAValue | Tensor) -> Tensor:
    return v if isinstance(v, Tensor) else Tensor(v)


def val(v) -> SSAValue:
    return v.value if isinstance(v, Tensor) else v


# ---------------------------------------------------------------------------------------------- index math


def const(v: int) -> SSAValue:
    return emit_op(arith.ConstantOp, [], [INDEX], {"value": IntegerAttr(int(v), INDEX)}).results[0]


def _index_op(cls, a, b) -> SSAValue:
    a = const(a) if isinstance(a, int) else a
    b = const(b) if isinstance(b, int) else b
    return emit_op(cls, [a, b], [INDEX]).results[0]


def addi(a, b): return _index_op(arith.AddiOp, a, b)
def subi(a, b): return _index_op(arith.SubiOp, a, b)
def muli(a, b): return _index_op(arith.MuliOp, a, b)
def minsi(a, b): return _index_op(arith.MinSIOp, a, b)
def maxsi(a, b): return _index_op(arith.MaxSIOp, a, b)
def ceildivsi(a, b): return _index_op(arith.CeilDivSIOp, a, b)


def floordiv_nonneg(a, b: int):
    """floor(a / b) for a >= 0 (the emitted index arithmetic has ceildiv only): ceil((a + 1) / b) - 1."""
    return subi(ceildivsi(addi(a, 1), b), 1)


def read(source, indices: Sequence) -> SSAValue:
    """Scalar read of an i32 tensor element as an index value."""
    return emit_op(TILE["read"], [val(source), [as_index(i) for i in indices]], [INDEX]).results[0]


def as_index(v) -> SSAValue:
    return const(v) if isinstance(v, int) else v


def constant_value(v: SSAValue) -> int | None:
    op = v.owner if isinstance(v.owner, Operation) else None
    if isinstance(op, arith.ConstantOp) and isinstance(op.value, IntegerAttr):
        return op.value.value.data
    return None


def peeled_loop(anchor: Operation, count: int, inits: Sequence, step_fn, loc: str | None) -> list[Tensor]:
    """Iterations 1..count-1 of a loop whose iteration 0 the caller computed (`inits`): an scf.for before
    `anchor` carrying the values; `step_fn(index, *carried)` builds one iteration and returns the new values."""
    inits = [T(v) for v in inits]
    if count <= 1:
        return inits
    body = Block(arg_types=[INDEX, *[v.value.type for v in inits]])
    with at_end(body, loc):
        new = step_fn(body.args[0], *[T(a) for a in body.args[1:]])
        emit_op(scf.YieldOp, [[val(v) for v in new]], [])
    with before(anchor):
        loop = emit_op(scf.ForOp, [const(1), const(count), const(1), [v.value for v in inits]],
                       [[v.value.type for v in inits]], regions=[Region(body)])
    return [T(r) for r in loop.results]


def defined_inside(region_op: Operation, v: SSAValue) -> bool:
    """Whether `v` is defined by an op nested in `region_op` (or is a block argument of one of its blocks)."""
    owner = v.owner
    op = owner if isinstance(owner, Operation) else owner.parent_op()
    while op is not None:
        if op is region_op:
            return True
        op = op.parent_op()
    return False


# ---------------------------------------------------------------------------------------------- tile ops


def view(source, offsets: Sequence, shape: Sequence[int], valid: Sequence = (), pad: str = "zero") -> Tensor:
    src = val(source)
    ty = tensor_type(shape, dtype_of(src.type))
    op = emit_op(TILE["view"], [src, [as_index(o) for o in offsets], [as_index(v) for v in valid]], [ty],
                 {"pad": StringAttr(pad)})
    return Tensor(op.results[0])


def assemble(tile, dest, offsets: Sequence, valid: Sequence = ()) -> Tensor:
    d = val(dest)
    op = emit_op(TILE["assemble"], [val(tile), d, [as_index(o) for o in offsets], [as_index(v) for v in valid]],
                 [d.type])
    return Tensor(op.results[0])


def tile_full(shape, value: float, dtype: str) -> Tensor:
    return Tensor(emit_op(TILE["full"], [], [tensor_type(shape, dtype)], {"value": float_attr(value)}).results[0])


def tile_op(kind: str, operands: Sequence, result_type: TensorType, **props) -> Tensor:
    return Tensor(emit_op(TILE[kind], [val(o) for o in operands], [result_type], props).results[0])


def shape(v) -> tuple[int, ...]:
    return shape_of(val(v).type)


def chain_values(out, inputs, through=None):
    """The values computing `out` from `inputs` (the inputs excluded), walking back from `out` through the ops of
    the values `through` accepts (all when None)."""
    stop, todo = {val(x) for x in inputs}, [val(out)]
    while todo:
        v = todo.pop()
        if v in stop or not isinstance(v.owner, Operation):
            continue
        stop.add(v)
        if through is not None and not through(v):
            continue
        yield v
        todo.extend(v.owner.operands)


def cap_tile_rows(out, inputs, rows: int, chunk: int = 0, row_stats: bool = True, stats_cols: int = 0):
    """State `tile_rows` (the row cap of each op's vector tile, read by the pypto emitter) on the ops that compute
    `out` from `inputs`: the pooling's ops are views of [N, n, d], [N, n/2, d] ... whose budget tiles would take
    4, 8, 16 rows, so each fold level waits on several tiles of the last and runs as its own task; one row count
    lets pypto 0.2.0 fuse a row group's whole chain into one task (flash m = 4, by hand: 242.9 -> 217.2 us).
    `chunk` states `chunk_rows`, the token rows per chunk of the loop parallelize-tokens makes of them:
    8-row chunks run the pooling's chain as 16 tasks side by side instead of 4 (flash m = 4 211.4 -> 194.0 us).
    `row_stats=False` leaves the ops whose result is a per-row statistic ([.., 1]: a norm's or an absmax's row
    values) uncapped: the row ops keep one tile for the chunk (see quantize-w8a8). `stats_cols` caps them too and
    states `tile_cols`, their tile's width: the row ops' (pypto 0.2.0 fuses a chain into one task only where the
    tile shapes agree: a [4, 1024] row tile and a [4, 16] statistic tile split it; flash W8A8 qkv_proj_rope 225.8 ->
    217.4 us with the qr norm and quantisation's statistics at [4, 1024])."""
    for v in chain_values(out, inputs):
        stat = isinstance(v.type, TensorType) and shape_of(v.type)[-1:] == (1,)
        if stat and stats_cols:
            v.owner.attributes["tile_cols"] = IntegerAttr(stats_cols, i64)
        if row_stats or not stat or stats_cols:
            v.owner.attributes["tile_rows"] = IntegerAttr(rows, i64)
        if chunk:
            v.owner.attributes["chunk_rows"] = IntegerAttr(chunk, i64)


def state_row_group(out, inputs, rows_lead: Sequence[int]) -> None:
    """State `row_group` (one id per chain, read by the pypto emitter) on the ops that compute `out` from `inputs`
    whose results are per-row values ([*rows_lead, ...]): the emitter gives every op of a group in a loop body the
    same vector tile row count, the fewest its budget tiles of them take, so the chain's row groups fuse into
    one task each (pypto 0.2.0 splits a task where the row tiling changes). A chain whose `out` comes straight from
    a grouped op joins that op's group (an RMSNorm feeding a RoPE: one chain)."""
    out = val(out)
    fn = out.owner
    while fn is not None and not hasattr(fn, "sym_name"):
        fn = fn.parent_op()
    first = [val(x) for x in inputs if isinstance(val(x).owner, Operation) and "row_group" in val(x).owner.attributes]
    if first:
        group = first[0].owner.attributes["row_group"].value.data
    else:
        used = [o.attributes["row_group"].value.data for o in fn.walk() if "row_group" in o.attributes] if fn else []
        group = max(used, default=0) + 1
    lead = list(rows_lead)

    def per_row(v) -> bool:
        return any(isinstance(r.type, TensorType) and list(shape_of(r.type))[:len(lead)] == lead and
                   len(shape_of(r.type)) > len(lead) for r in v.owner.results)

    for v in chain_values(out, inputs, per_row):
        v.owner.attributes["row_group"] = IntegerAttr(group, IntegerType(64))
