"""pto-plan-memory: split each token loop's body into row chunks until its kernel's tiles fit the on-chip buffers.

A PTO kernel is one token loop body (`tile.parallel`, one token per kernel instance). At real sizes its tiles do
not fit: the flash attention core holds [64 heads, 512] f32 accumulators, 128 KiB each, in a 192 KiB UB. This
pass emits the body (codegen/pto_emit.py), plans its memory (codegen/pto_plan.py: lifetimes and addresses in
UB/L1/L0A/L0B/L0C) and, when the plan overflows, puts the body in an `scf.for` over chunks of G rows of its
outputs (G = R/2, R/4, ... of the R output rows, the heads of the attention cores), the largest G that fits.

Which values are chunked follows from the ops' definitions, backwards from the assembled outputs: an
elementwise op, a row reduction, a row expansion and the rows of a matmul's left operand (and of a
matmul_acc's accumulator) are row-local, so their operands are chunked like their result; a matmul's right
operand, a column expansion's vector and a row vector broadcast over rows are shared (used whole by every
chunk: key tiles are re-read per chunk). A view of an array from before the loop takes its chunk at an offset.
Anything else in the way (a reshape, a transpose, a reduction over rows, a chunked value used whole) leaves
the loop unsplit, and the emitter reports what does not fit. Exact rewrite (tolerance 0): each output row is
computed by the same ops on the same values."""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects import scf
from xdsl.dialects.builtin import TensorType
from xdsl.ir import Block, Operation, Region, SSAValue

from attnc.ir.types import shape_of

from . import AttncPass, PassError, register
from ._build import INDEX, addi, at_end, before, const, defined_inside, muli, view

_ROW_LOCAL = {"add", "sub", "mul", "div", "max", "min", "rem", "floordiv", "and", "or", "neg", "exp", "sqrt",
              "rsqrt", "recip", "relu", "abs", "cmp", "select", "cast", "adds", "muls", "maxs", "full",
              "row_sum", "row_max", "row_min"}


class _NoSplit(Exception):
    pass


def _kind(op: Operation) -> str:
    return op.name.split(".", 1)[1] if op.name.startswith("tile.") else op.name


def _rows(v: SSAValue) -> int:
    return shape_of(v.type)[-2]


def _chunked_operands(op: Operation) -> list[SSAValue]:
    """The operands of `op` that are chunked when its result is (by the op's definition)."""
    k = _kind(op)
    tensors = [o for o in op.operands if isinstance(o.type, TensorType)]
    if k in _ROW_LOCAL or k.startswith("row_expand_"):
        if any(_rows(o) != _rows(op.results[0]) for o in tensors):
            raise _NoSplit(f"{op.name} mixes row counts")
        return tensors
    if k.startswith("col_expand_"):
        return [op.lhs]
    if k == "matmul":
        return [op.lhs]
    if k == "matmul_acc":
        return [op.acc, op.lhs]
    if k == "broadcast":
        r_in, r_out = _rows(op.input), _rows(op.result)
        if r_in == r_out:
            return [op.input]
        if r_in == 1:
            return []
        raise _NoSplit("broadcast over rows")
    if k == "view" and not op.valid:
        return []  # a view of an array from before the loop: the chunk's offset (checked by the caller)
    raise _NoSplit(f"{op.name} is not row-local")


def _analyse(par: Operation) -> tuple[int, set[SSAValue]]:
    """(R, the values inside the loop that are chunked); raises _NoSplit."""
    body = par.body.block
    asms = [v.owner for v in body.last_op.operands]
    if not asms or any(_kind(a) != "assemble" or a.valid for a in asms):
        raise _NoSplit("outputs are not plain assembles")
    ranks = {len(shape_of(a.tile.type)) for a in asms}
    rows = {_rows(a.tile) for a in asms}
    if ranks != {3} or len(rows) != 1:
        raise _NoSplit("outputs are not [1, rows, cols] tiles of one row count")
    (R,) = rows
    chunked: set[SSAValue] = set()
    work = [a.tile for a in asms]
    while work:
        v = work.pop()
        if v in chunked:
            continue
        chunked.add(v)
        if not defined_inside(par, v):
            continue  # an array from before the loop: the chunk's view of it
        owner = v.owner
        if isinstance(owner, Block):  # an iteration argument of an scf.for
            loop = owner.parent_op()
            if not isinstance(loop, scf.ForOp) or v is owner.args[0]:
                raise _NoSplit("chunked loop index")
            k = owner.args.index(v) - 1
            work += [loop.iter_args[k], loop.body.block.last_op.operands[k], loop.results[k]]
            continue
        if isinstance(owner, scf.ForOp):
            k = list(owner.results).index(v)
            work += [owner.body.block.args[1 + k]]
            continue
        if _kind(owner) == "view":
            if defined_inside(par, owner.source) or owner.valid:
                raise _NoSplit("a view of a value made in the loop")
            continue
        work += _chunked_operands(owner)
    # every use of a chunked value must take it chunked
    for v in chunked:
        for use in v.uses:
            user = use.operation
            if isinstance(user, scf.YieldOp):
                loop = user.parent_op()
                if loop.results[use.index] not in chunked:
                    raise _NoSplit("a chunked value leaves an inner loop whole")
            elif isinstance(user, scf.ForOp):
                if user.body.block.args[1 + use.index - 3] not in chunked:
                    raise _NoSplit("a chunked value enters an inner loop whole")
            elif _kind(user) == "assemble" and user in asms and use.index == 0:
                continue
            elif not _inside(par, user):
                continue  # a value from before the loop, used before or after it
            elif user.results[0] not in chunked or v not in _chunked_operands(user):
                raise _NoSplit(f"{user.name} takes a chunked value whole")
    if any(_rows(v) != R for v in chunked if isinstance(v.type, TensorType) and len(shape_of(v.type)) == 3):
        raise _NoSplit("chunked values of another row count")
    return R, chunked


def _inside(par: Operation, op: Operation) -> bool:
    while op is not None:
        if op is par:
            return True
        op = op.parent_op()
    return False


def _retype(v: SSAValue, rows: int) -> None:
    s = list(shape_of(v.type))
    s[-2] = rows
    v._type = TensorType(v.type.get_element_type(), s)


def split_rows(par: Operation, g: int) -> None:
    """Put the body of `par` in an scf.for over chunks of g output rows (R % g == 0)."""
    R, chunked = _analyse(par)
    body = par.body.block
    yld = body.last_op
    ops = [op for op in body.ops if op is not yld]
    outs = list(body.args[1:])
    loop_body = Block(arg_types=[INDEX, *[o.type for o in outs]])
    step = loop_body.args[0]
    mapping: dict[SSAValue, SSAValue] = dict(zip(outs, loop_body.args[1:]))
    from attnc.ir.common import op_location

    loc = op_location(ops[0]) if ops else None
    with at_end(loop_body, loc):
        row0 = muli(step, g)
        for v in sorted((v for v in chunked if not defined_inside(par, v)), key=lambda v: str(shape_of(v.type))):
            s = list(shape_of(v.type))
            offs = [0] * len(s)
            offs[-2] = row0
            s[-2] = g
            mapping[v] = view(v, offs, s).value
    clones = []
    for op in ops:
        clones.append(op.clone(value_mapper=mapping))
        loop_body.add_op(clones[-1])
    for v in chunked:
        if defined_inside(par, v):
            _retype(mapping[v], g)
    for old, new in zip(ops, clones):
        for o_nested, n_nested in zip(old.walk(), new.walk()):
            k = _kind(n_nested)
            if k == "view" and n_nested.results[0] is not None and o_nested.results[0] in chunked:
                shift = 1 + len(n_nested.offsets) - 2
            elif k == "assemble" and o_nested.tile in chunked:
                shift = 2 + len(n_nested.offsets) - 2
            else:
                continue
            with before(n_nested):
                new_off = addi(n_nested.operands[shift], row0)
            operands = list(n_nested.operands)
            operands[shift] = new_off
            n_nested.operands = operands
    loop_body.add_op(scf.YieldOp(*[mapping[v] for v in yld.operands]))
    with before(yld):
        lb, ub, st = const(0), const(R // g), const(1)
    for_op = scf.ForOp(lb, ub, st, list(outs), Region(loop_body))
    body.insert_op_before(for_op, yld)
    yld.operands = list(for_op.results)
    for op in reversed(ops):
        op.detach()
        op.erase(safe_erase=False)


def _fits(par: Operation, name: str) -> bool | None:
    """Whether the kernel of `par` fits (None: the emitter refuses it for another reason)."""
    from attnc.codegen.pto_emit import PtoEmitError, _KernelEmitter

    try:
        plan = _KernelEmitter(par, name).run()
    except PtoEmitError:
        return None
    return plan.memory.overflow() is None


@register
@dataclass(frozen=True)
class PtoPlanMemory(AttncPass):
    name = "pto-plan-memory"
    summary = "token-loop bodies whose PTO kernel overflows UB/L1/L0 -> an scf.for over row chunks that fits"
    tolerance = 0.0
    rows: int = 0  # chunk rows; 0: the largest that fits

    def apply(self, ctx, op):
        if self.rows < 0:
            raise PassError(f"rows must be >= 0, got {self.rows}")
        for i, par in enumerate([o for o in op.walk() if o.name == "tile.parallel"]):
            try:
                R, _ = _analyse(par)
            except _NoSplit:
                continue
            if self.rows:
                if R % self.rows:
                    raise PassError(f"rows={self.rows} does not divide the loop's {R} output rows")
                if self.rows < R:
                    split_rows(par, self.rows)
                continue
            if _fits(par, f"plan{i}") is not False:
                continue
            g = R
            while g % 2 == 0 and g > 1:
                g //= 2
                trial = par.clone()
                split_rows(trial, g)
                fits = _fits(trial, f"plan{i}")
                trial.erase(safe_erase=False)
                if fits or g % 2 or g == 1:
                    break
            split_rows(par, g)
