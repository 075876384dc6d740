"""lower-to-tiles: every remaining `attn` op becomes its `tile` counterpart.

Shared families map one to one; reductions along the last axis become row_sum/row_max/row_min; a binary op
whose operand is a row vector [.., M, 1] or a column vector [1.., 1, N] broadcast to the tile becomes
row_expand_* / col_expand_* (the broadcast is never materialised); a binary op with a splat operand becomes
adds/muls/maxs when that is bit-exact; static slices become tile views. Composite ops must have been
decomposed by their passes first. Exact rewrite."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from xdsl.ir import Operation
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern

from attnc.ir.common import float_attr, ints_of, op_location
from attnc.ir.dsl import emit_op
from attnc.ir.tile_dialect import EXPAND_KINDS, TILE
from attnc.ir.types import dtype_of, shape_of, torch_dtype

from . import PatternPass, PassError, register
from ._build import before, tile_op, view

_DECOMPOSED_BY = {"rmsnorm": "fuse-rmsnorm", "rope": "rope-selector-matmul", "sparse_attention": "tile-softmax",
                  "topk": "(no pass yet: topk has no tile lowering)"}
_COMMUTATIVE = {"add", "mul", "max", "min"}
_SCALAR_OF = {"add": "adds", "mul": "muls", "max": "maxs"}


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
            raise PassError(f"{op_location(op)}: attn.{kind} must be decomposed first by {_DECOMPOSED_BY[kind]}")
        with before(op):
            new = self._lower(op, kind)
        rewriter.replace(op, [], [new])

    def _lower(self, op, kind):
        rtype = op.result.type
        if kind == "reduce":
            axis = op.axis.value.data
            if axis != len(shape_of(op.input.type)) - 1:
                raise PassError(f"{op_location(op)}: attn.reduce along axis {axis}: tiles reduce rows only "
                                f"(transpose the axis last in the stage)")
            return tile_op(f"row_{op.kind.data}", [op.input], rtype).value
        if kind == "slice":
            return view(op.input, ints_of(op.offsets), ints_of(op.sizes), pad="none").value
        if kind in EXPAND_KINDS:
            fused = self._fuse_operand(op, kind)
            if fused is not None:
                return fused
        operands = [list(op.inputs)] if kind == "concat" else list(op.operands)
        return emit_op(TILE[kind], operands, [rtype], dict(op.properties)).results[0]

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
                # the splat holds the scalar rounded to the tile dtype: use exactly that value
                dt = torch_dtype(dtype_of(this.type))
                exact = float(torch.tensor(scalar, dtype=torch.float64).to(dt).double()) if dt.is_floating_point \
                    else float(int(scalar))
                if dt.is_floating_point:
                    return tile_op(_SCALAR_OF[kind], [other], op.result.type, scalar=float_attr(exact)).value
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
