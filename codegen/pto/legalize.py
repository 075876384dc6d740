"""pto-legalize: bring each token loop (`tile.parallel`) body to what ptoas 0.1.1 can express, exactly.

* Gathers move to the host side: `gather_rows(table, view(...view(idx)))` inside the loop, with the table and
  the index tensor defined before the loop, becomes one `gather_rows(table, idx)` before the loop (a prepared
  input of the kernel) and a view of it at the composed offsets inside. 0.1.1 cannot gather by a runtime index
  in the kernel (`tmgather` is rejected by its verifier, `tgetval` aborts PlanMemory). Only views of full tiles
  (no valid shape) are composed, so every gathered row is one the original would gather.
* i1 masks become 0/1 values of the computing dtype (0.1.1 miscompiles `tcmp` — operands and predicate are
  dropped — and has no i1 tiles): an i1 tensor from before the loop is cast to f32 there; `cmp` becomes
  exact arithmetic (d = a - b is 0 iff a = b; d * 2^126 * 2^24 clamped to [0, 1] is 1 iff d > 0, subnormals
  included), `and` = mul, `or` = max, `select(m, x, y)` = x*m + y*(1-m) (x*m when y is the constant 0).
  Exact for finite values (x*0 = ±0; an infinite operand would give NaN — inputs are finite by contract).

* Index ramps (`iota`, no operands: the same for every token) move before the loop, a prepared input (0.1.1's
  `tci` lowers one-row ramps only and kernels compute no i32 values).
* Integer math on the token's row of arrays from before the loop (the indexer's visible-entry count
  min((pos + 1) // 4, NC): 0.1.1 has no i32 tdiv and drops tcvt's FLOOR mode) is the same op on every token's
  row: it runs once before the loop on the whole [T, ...] arrays and the loop views the token's row (a prepared
  input). Integer ops whose operands all come from before the loop move out as they are.

Index math, visibility and the other prologue work stay before the loop: they are the host-side part. What
cannot be rewritten is left for the PTO emitter to refuse with its location."""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects import arith
from xdsl.dialects.builtin import TensorType
from xdsl.ir import Operation, SSAValue

from attnc.ir.common import str_attr
from attnc.ir.tile_dialect import TILE
from attnc.ir.types import dtype_of, shape_of, tensor_type

from attnc.passes import AttncPass, register
from attnc.passes._build import addi, before, constant_value, defined_inside, tile_full, tile_op, val, view

_TWO_126 = 2.0 ** 126
_TWO_24 = 2.0 ** 24




def _is(op, kind: str) -> bool:
    return isinstance(op, Operation) and op.name == f"tile.{kind}"


def _hoist_gathers(par: Operation) -> None:
    for g in [op for op in par.body.walk() if _is(op, "gather_rows")]:
        if defined_inside(par, g.table):
            continue
        chain, v = [], g.indices
        while _is(v.owner, "view") and defined_inside(par, v) and not v.owner.valid:
            chain.append(v.owner)
            v = v.owner.source
        if not chain or defined_inside(par, v):
            continue
        rank = len(shape_of(v.type))
        extra = len(shape_of(g.table.type)) - 1
        with before(par):
            pool = tile_op("gather_rows", [g.table, v],
                           tensor_type((*shape_of(v.type), *shape_of(g.table.type)[1:]), dtype_of(g.table.type)))
        with before(g):
            offsets = list(chain[-1].offsets)
            for vw in reversed(chain[:-1]):
                offsets = [addi(a, b) for a, b in zip(offsets, vw.offsets)]
            assert len(offsets) == rank
            rows = view(pool, [*offsets, *[0] * extra], shape_of(g.result.type))
        g.result.replace_all_uses_with(val(rows))
        g.parent_block().erase_op(g)


_ROW_INT_OPS = {"add", "sub", "mul", "max", "min", "floordiv", "rem", "neg", "abs", "cast", "reshape", "broadcast"}


def _token_row_view(par: Operation, op: Operation) -> SSAValue | None:
    """The [T, ...] array from before the loop of which `op` views the token's row (whole), else None."""
    if not _is(op, "view") or op.valid or defined_inside(par, op.source):
        return None
    s, src = shape_of(op.result.type), shape_of(op.source.type)
    if op.offsets[0] is not par.body.block.args[0] or any(constant_value(o) != 0 for o in op.offsets[1:]):
        return None
    return op.source if s[0] == 1 and s[1:] == src[1:] else None


def _hoist_integer_math(par: Operation) -> None:
    if par.rows.value.data != 1:
        return
    block = par.body.block
    wide: dict[SSAValue, SSAValue] = {}  # a token's row in the loop -> the [T, ...] array before the loop
    for op in list(block.ops):
        src = _token_row_view(par, op)
        if src is not None:
            wide[op.result] = src
            continue
        tensors = [v for v in (*op.operands, *op.results) if isinstance(v.type, TensorType)]
        if not (op.name.startswith("tile.") and op.name[5:] in _ROW_INT_OPS and len(op.results) == 1
                and any(dtype_of(v.type) == "i32" for v in tensors)) or shape_of(op.result.type)[0] != 1:
            continue
        if not any(defined_inside(par, o) for o in op.operands):  # the same for every token
            op.detach()
            par.parent_block().insert_op_before(op, par)
            continue
        rows = {shape_of(wide[o].type)[0] for o in op.operands if o in wide}
        if len(rows) != 1 or any(o not in wide and not _is(o.owner, "full") and defined_inside(par, o)
                                 for o in op.operands):
            continue
        (t,) = rows
        with before(par):
            operands = []
            for o in op.operands:
                dt, s = dtype_of(o.type), shape_of(o.type)
                if o in wide:
                    operands.append(wide[o])
                elif _is(o.owner, "full"):
                    operands.append(val(tile_full((t, *s[1:]), o.owner.value.value.data, dt)))
                else:  # one row shared by every token
                    operands.append(val(tile_op("broadcast", [o], tensor_type((t, *s[1:]), dt))))
            hoisted = op.clone()
            hoisted.operands = operands
            hoisted.results[0]._type = tensor_type((t, *shape_of(op.result.type)[1:]), dtype_of(op.result.type))
            par.parent_block().insert_op_before(hoisted, par)
        with before(op):
            row = view(hoisted.results[0], [block.args[0]] + [0] * (len(shape_of(op.result.type)) - 1),
                       shape_of(op.result.type))
        op.result.replace_all_uses_with(val(row))
        wide[val(row)] = hoisted.results[0]
        block.erase_op(op)
    for op in reversed(list(block.ops)):  # the rows and splats only the hoisted ops read
        if op.name in ("tile.view", "tile.full") and not op.result.uses:
            block.erase_op(op)


def _f32(x) -> SSAValue:
    x = val(x)
    if dtype_of(x.type) == "f32":
        return x
    return val(tile_op("cast", [x], tensor_type(shape_of(x.type), "f32"), rounding=str_attr("rint")))


def _scalar(kind: str, x, s: float) -> SSAValue:
    from attnc.ir.common import float_attr

    return val(tile_op(kind, [x], val(x).type, scalar=float_attr(s)))


def _binary(kind: str, a, b) -> SSAValue:
    return val(tile_op(kind, [a, b], val(a).type))


def _greater(a, b) -> SSAValue:
    """1.0 where a > b else 0.0 (f32), exactly, for finite a, b."""
    a, b = _f32(a), _f32(b)
    d = _binary("sub", a, b)
    t = _scalar("muls", _scalar("muls", d, _TWO_126), _TWO_24)
    shape = shape_of(d.type)
    t = _binary("max", t, tile_full(shape, 0.0, "f32"))
    return _binary("min", t, tile_full(shape, 1.0, "f32"))


def _not(m) -> SSAValue:
    return _scalar("adds", _scalar("muls", m, -1.0), 1.0)


def _compare(pred: str, a, b) -> SSAValue:
    if pred == "gt":
        return _greater(a, b)
    if pred == "lt":
        return _greater(b, a)
    if pred == "ge":
        return _not(_greater(b, a))
    if pred == "le":
        return _not(_greater(a, b))
    eq = _binary("mul", _not(_greater(a, b)), _not(_greater(b, a)))
    return eq if pred == "eq" else _not(eq)


def _is_zero_full(v: SSAValue) -> bool:
    return _is(v.owner, "full") and v.owner.value.value.data == 0.0


def _masks_to_values(par: Operation) -> dict:
    masks: dict[SSAValue, SSAValue] = {}
    hoisted: dict[SSAValue, SSAValue] = {}

    def mask_of(v: SSAValue) -> SSAValue | None:
        if v in masks:
            return masks[v]
        if not defined_inside(par, v):
            if v not in hoisted:
                with before(par):
                    hoisted[v] = _f32(v)
            return hoisted[v]
        return None

    for op in list(par.body.walk()):
        i1_in = [o for o in op.operands if hasattr(o.type, "get_element_type") and dtype_of(o.type) == "i1"]
        if op.name == "tile.cmp":
            with before(op):
                masks[op.result] = _compare(op.predicate.data, op.lhs, op.rhs)
            continue
        if not i1_in:
            continue
        srcs = [mask_of(o) for o in i1_in]
        if any(s is None for s in srcs):
            continue
        with before(op):
            if op.name == "tile.view":
                m = srcs[0]
                masks[op.result] = val(view(m, list(op.offsets), shape_of(op.result.type), list(op.valid),
                                            op.pad.data))
            elif op.name in ("tile.reshape", "tile.broadcast"):
                kind = op.name.split(".")[1]
                masks[op.result] = val(tile_op(kind, [srcs[0]], tensor_type(shape_of(op.result.type), "f32")))
            elif op.name in ("tile.and", "tile.or"):
                masks[op.result] = _binary("mul" if op.name == "tile.and" else "max", srcs[0], srcs[1])
            elif op.name == "tile.select":
                x, y = op.on_true, op.on_false
                m = srcs[0]
                if dtype_of(x.type) != "f32":
                    m = val(tile_op("cast", [m], x.type, rounding=str_attr("rint")))
                out = _binary("mul", x, m)
                if not _is_zero_full(y):
                    out = _binary("add", out, _binary("mul", y, _not(m)))
                op.result.replace_all_uses_with(out)
                op.parent_block().erase_op(op)
    return masks


def _carry_masks_as_values(par: Operation, masks: dict) -> None:
    """An i1 tensor carried out of the loop (rows handed to a later loop) is carried as f32 0/1 and cast back
    to i1 after the loop (x != 0: exact for 0/1)."""
    from xdsl.rewriter import Rewriter

    block = par.body.block
    yld = block.last_op
    for k, init in enumerate(list(par.inits)):
        if dtype_of(init.type) != "i1":
            continue
        asm = yld.operands[k].owner
        if not _is(asm, "assemble") or asm.dest is not block.args[1 + k]:
            continue
        f32 = tensor_type(shape_of(init.type), "f32")
        with before(par):
            par.operands[2 + k] = _f32(init)
        arg = Rewriter.replace_value_with_new_type(block.args[1 + k], f32)
        with before(asm):
            tile = masks.get(asm.tile) or _f32(asm.tile)
            new = val(tile_op("assemble", [tile, arg, list(asm.offsets), list(asm.valid)], f32))
        yld.operands[k] = new
        asm.parent_block().erase_op(asm)
        res = par.results[k]
        uses = list(res.uses)
        res = Rewriter.replace_value_with_new_type(res, f32)
        nxt = par.next_op
        with before(nxt):
            back = val(tile_op("cast", [res], init.type, rounding=str_attr("rint")))
        for u in uses:
            u.operation.operands[u.index] = back


@register
@dataclass(frozen=True)
class PtoLegalize(AttncPass):
    name = "pto-legalize"
    summary = "token-loop bodies -> what ptoas 0.1.1 expresses: gathers, index ramps and integer row math hoisted to the host, i1 masks as 0/1 values"
    tolerance = 0.0

    def apply(self, ctx, op):
        for par in [o for o in op.walk() if _is(o, "parallel")]:
            for ramp in [o for o in par.body.walk() if _is(o, "iota")]:  # no operands: the same every token
                ramp.detach()
                par.parent_block().insert_op_before(ramp, par)
            _hoist_gathers(par)
            _carry_masks_as_values(par, _masks_to_values(par))
            _hoist_integer_math(par)  # after the masks: their compares cast i32 operands to f32
