"""lower-to-tiles: every remaining `attn` op becomes its `tile` counterpart.

Shared families map one to one; reductions along the last axis become row_sum/row_max/row_min (max/min along
another axis: transpose it last, reduce rows, transpose back; a sum along another axis is refused, its f32 order
would change); a binary op whose operand is a row vector [.., M, 1] or a column vector [1.., 1, N] broadcast to
the tile becomes row_expand_* / col_expand_* (the broadcast is never materialised); a binary op with a float
splat operand becomes adds/muls/maxs (x - c: adds of -c) when that is bit-exact (x / c stays a tile.div); static
slices become tile views at constant offsets; attn.to_tokens / attn.from_tokens become tile.reshape. Composite ops must have been decomposed by their passes first.
Exact rewrite."""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.ir import Operation
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern

from attnc.ir.common import float_attr, int_array, ints_of, op_location
from attnc.ir.dsl import emit_op
from attnc.ir.tile_dialect import EXPAND_KINDS, TILE
from attnc.ir.types import FLOAT_DTYPES, dtype_of, round_scalar, shape_of, tensor_type

from . import PatternPass, PassError, register
from ._build import before, tile_op, view

_DECOMPOSED_BY = {"rmsnorm": "fuse-rmsnorm", "rope": "rope-selector-matmul or rope-pair-swap",
                 "sparse_attention": "tile-softmax",
                 "cache_attention": "gather-keys or schedule-attention", "scaled_matmul": "quantize-w8a8",
                 "compress_pool": "schedule-compressor"}
_COMMUTATIVE = {"add", "mul", "max", "min"}
# token-row markers (read by parallelize-tokens) are reshapes in value
_TILE_KIND = {"to_tokens": "reshape", "from_tokens": "reshape"}
# x op splat(c) -> tile.<scalar op>(x, c'): add/mul/max directly, and x - c as x + (-c) (negation is exact and
# IEEE x - c == x + (-c) bit for bit). x / c stays tile.div of a tile.full: x * (1/c) is not bit-exact.
_SCALAR_OF = {"add": ("adds", 1.0), "mul": ("muls", 1.0), "max": ("maxs", 1.0), "sub": ("adds", -1.0)}


def _broadcast_source(v):
    op = v.owner
    if isinstance(op, Operation) and op.name in ("attn.broadcast", "tile.broadcast"):
        return op.input
    return None


def _splat_value(v) -> float | None:
    op = v.owner
    if isinstance(op, Operation) and op.name in ("attn.full", "tile.full"):
        return op.value.value.data
    return None


def _expand_kind(x_shape, v_shape) -> str | None:
    if len(v_shape) != len(x_shape):
        return None
    if v_shape == (*x_shape[:-1], 1) and x_shape[-1] != 1:
        return "row_expand"
    if v_shape[-1] == x_shape[-1] and all(d == 1 for d in v_shape[:-1]) and any(d != 1 for d in x_shape[:-1]):
        return "col_expand"
    return None


class _Lower(RewritePattern):
    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter):
        if not op.name.startswith("attn."):
            return
        kind = op.name.split(".", 1)[1]
        if kind in _DECOMPOSED_BY:
            by = _DECOMPOSED_BY[kind]
            raise PassError(f"{op_location(op)}: attn.{kind} must be decomposed first by {by}" if by else
                            f"{op_location(op)}: attn.{kind} must be decomposed first, but no attnc pass lowers it yet")
        with before(op):
            new = self._lower(op, kind)
        for fact in ("tile_rows", "tile_cols", "row_group"):  # a vector tile's row cap and width, a chain's row group
            if fact in op.attributes and new.owner is not op:
                new.owner.attributes[fact] = op.attributes[fact]
        rewriter.replace(op, [], [new])

    def _lower(self, op, kind):
        rtype = op.result.type
        if kind == "reduce":
            return self._reduce(op)
        if kind == "slice":
            return view(op.input, ints_of(op.offsets), ints_of(op.sizes), pad="none").value
        if kind in EXPAND_KINDS:
            fused = self._fuse_operand(op, kind)
            if fused is not None:
                return fused
        operands = [list(op.inputs)] if kind == "concat" else list(op.operands)
        new = emit_op(TILE[_TILE_KIND.get(kind, kind)], operands, [rtype], dict(op.properties))
        for key in ("n_tile", "l1_reuse", "nbuffer"):  # a matmul's cube N tile, L1 reuse, n-buffering (tile-matmul)
            if key in op.attributes:
                new.attributes[key] = op.attributes[key]
        return new.results[0]

    def _reduce(self, op):
        axis, red = op.axis.value.data, op.kind.data
        si = shape_of(op.input.type)
        last = len(si) - 1
        if axis == last:
            return tile_op(f"row_{red}", [op.input], op.result.type).value
        if red == "sum":
            # a sum over another axis would become a row sum of the transposed tile: a different f32 summation
            # order, so not an exact rewrite of this level
            raise PassError(f"{op_location(op)}: attn.reduce sum along axis {axis} of {len(si)}: tiles sum rows "
                            f"only and a transposed sum is not bit-exact (reduce along the last axis in the stage)")
        # max/min are order-independent: move the axis last, reduce rows, move it back
        perm = list(range(len(si)))
        perm[axis], perm[last] = last, axis
        swapped = tuple(si[p] for p in perm)
        dt = dtype_of(op.input.type)
        xt = tile_op("transpose", [op.input], tensor_type(swapped, dt), perm=int_array(perm))
        r = tile_op(f"row_{red}", [xt], tensor_type((*swapped[:-1], 1), dt))
        return tile_op("transpose", [r], op.result.type, perm=int_array(perm)).value

    def _fuse_operand(self, op, kind):
        x_shape = shape_of(op.result.type)
        for this, other, swapped in ((op.rhs, op.lhs, False), (op.lhs, op.rhs, True)):
            if swapped and kind not in _COMMUTATIVE:
                continue
            src = _broadcast_source(this)
            if src is not None:
                form = _expand_kind(x_shape, shape_of(src.type))
                if form is not None and shape_of(other.type) == x_shape:
                    return tile_op(f"{form}_{kind}", [other, src], op.result.type).value
            scalar = _splat_value(this)
            if scalar is not None and kind in _SCALAR_OF:
                # the splat holds the scalar rounded to the tile dtype: use exactly that value (integer tiles keep
                # their splat: the scalar ops compute in float)
                dt = dtype_of(this.type)
                if dt in FLOAT_DTYPES:
                    exact = round_scalar(scalar, dt)
                    name, sign = _SCALAR_OF[kind]
                    return tile_op(name, [other], op.result.type, scalar=float_attr(sign * exact)).value
        return None


def _drop_dead(module) -> None:
    changed = True
    while changed:
        changed = False
        for op in list(module.walk()):
            if op.name in ("tile.broadcast", "tile.full", "arith.constant") and all(not r.uses for r in op.results):
                op.detach()
                op.erase()
                changed = True


@register
@dataclass(frozen=True)
class LowerToTiles(PatternPass):
    name = "lower-to-tiles"
    summary = "remaining attn ops -> tile ops (row reductions, row/col expands, scalar ops, views)"
    tolerance = 0.0

    def pattern(self):
        return _Lower()

    def finish(self, op):
        _drop_dead(op)
        left = sorted({o.name for o in op.walk() if o.name.startswith("attn.")})
        if left:
            raise PassError(f"attn ops left after lower-to-tiles: {', '.join(left)}")
