"""pto-plan-memory: split each token loop's body into row chunks until its kernel's tiles fit the on-chip buffers.

A PTO kernel is one token loop body (`tile.parallel`, one token per kernel instance). At real sizes its tiles do
not fit: the flash attention core holds [64 heads, 512] f32 accumulators, 128 KiB each, in a 192 KiB UB. This
pass emits the body (codegen/pto/emit.py), plans its memory (codegen/pto/plan.py: lifetimes and addresses in
UB/L1/L0A/L0B/L0C) and, when the plan overflows, puts the body in an `scf.for` over chunks of G rows of its
outputs (G = R/2, R/4, ... of the R output rows, the heads of the attention cores), the largest G that fits.

Which values are chunked follows from the ops' definitions, backwards from the assembled outputs: an
elementwise op, a row reduction, a row expansion and the rows of a matmul's left operand (and of a
matmul_acc's accumulator) are row-local, so their operands are chunked like their result; a matmul's right
operand, a column expansion's vector and a row vector broadcast over rows are shared (used whole by every
chunk: key tiles are re-read per chunk). A view of an array from before the loop takes its chunk at an offset.
Column chunks: the rows of a reshape [.., R*C] -> [.., R, C] (qkv_proj_rope's q heads) are column chunks of
its input, and a column chunk of a matmul is its right operand's columns (the left operand shared); rows of a
last-two-axes transpose are its input's columns. Row-local outputs join the chunk loop largest first (an
output of u*R rows takes u*g rows per chunk). When no output chunk fits (decode_hca's m = 128 compressor: a
norm over the pooled channels follows the pooling), the row-local value with the most work before it becomes a
new output of the token loop (a GM scratch), computed in chunks; the rest of the body reads it back whole.
Anything else in the way (a reduction over rows, a chunked value used whole) leaves the loop unsplit, and the
emitter reports what does not fit. Exact rewrite (tolerance 0): each output row is computed by the same ops on
the same values."""
from __future__ import annotations

import math
from dataclasses import dataclass

from xdsl.dialects import scf
from xdsl.dialects.builtin import TensorType
from xdsl.ir import Block, Operation, Region, SSAValue

from attnc.ir.types import dtype_of, shape_of

from attnc.passes import AttncPass, PassError, register
from attnc.passes._build import INDEX, addi, assemble, at_end, before, const, constant_value, defined_inside, muli, tile_full, view

_ROW_LOCAL = {"add", "sub", "mul", "div", "max", "min", "rem", "floordiv", "and", "or", "neg", "exp", "sqrt",
              "rsqrt", "recip", "relu", "abs", "cmp", "select", "cast", "adds", "muls", "maxs", "full",
              "row_sum", "row_max", "row_min"}


class _NoSplit(Exception):
    pass


def _kind(op: Operation) -> str:
    return op.name.split(".", 1)[1] if op.name.startswith("tile.") else op.name


def _rows(v: SSAValue) -> int:
    return shape_of(v.type)[-2]


ROW = (-2, 1)  # a chunk spec (axis, unit): chunk i of g output rows is [i*g*unit, (i+1)*g*unit) along axis


def _chunked_operands(par: Operation, op: Operation, spec: tuple[int, int]) -> list[tuple[SSAValue, tuple[int, int]]]:
    """The operands of `op` that are chunked when its result is chunked by `spec`, with their specs (by the op's
    definition). A row chunk (axis -2) follows rows; a column chunk (axis -1) follows columns: a matmul's
    right operand and the columns of an elementwise op, through a reshape that splits the last axis into rows."""
    k = _kind(op)
    tensors = [o for o in op.operands if isinstance(o.type, TensorType)]
    res = op.results[0]
    if k == "reshape":
        s_in, s_out = shape_of(op.input.type), shape_of(res.type)
        if s_in == s_out:
            return [(op.input, spec)]
        if spec[0] == -2 and s_in[:-1] == s_out[:-2] and s_in[-1] == s_out[-2] * s_out[-1]:
            return [(op.input, (-1, spec[1] * s_out[-1]))]  # rows of [.., R, C] = column chunks of [.., R*C]
        raise _NoSplit("a reshape that does not split the last axis into rows")
    if k == "transpose" and [a.value.data for a in op.perm.data] == [0, 2, 1]:
        return [(op.input, (-1 if spec[0] == -2 else -2, spec[1]))]  # rows of the result = columns of the input
    if k == "view" and spec[0] == -2 and _whole_rows(par, op):
        return [(op.source, spec)]  # some columns of every row of a loop value: row-local
    if k == "view" and not op.valid:
        return []  # a view of an array from before the loop: the chunk's offset (checked by the caller)
    if k == "concat" and spec[0] == -2 and op.axis.value.data == len(shape_of(res.type)) - 1:
        return [(o, spec) for o in op.inputs]  # side by side: the rows of each part
    if spec[0] == -1:
        if k in _ROW_LOCAL and not k.startswith("row_"):
            if any(shape_of(o.type) != shape_of(res.type) for o in tensors):
                raise _NoSplit(f"{op.name} mixes shapes in a column chunk")
            return [(o, spec) for o in tensors]
        if k.startswith("row_expand_"):
            return [(op.operands[0], spec)]
        if k.startswith("col_expand_"):
            return [(op.lhs, spec), (op.operands[1], spec)]
        if k in ("matmul", "matmul_acc"):
            rhs = [(op.rhs, (-2 if op.transpose_b.value.data else -1, spec[1]))]
            return rhs + ([(op.acc, spec)] if k == "matmul_acc" else [])
        if k == "broadcast":
            s_in = shape_of(op.input.type)
            if s_in == shape_of(res.type):
                return [(op.input, spec)]
            if s_in[-1] == 1:
                return []
        raise _NoSplit(f"{op.name} is not column-local")
    if k in _ROW_LOCAL or k.startswith("row_expand_"):
        if any(_rows(o) != _rows(res) for o in tensors):
            raise _NoSplit(f"{op.name} mixes row counts")
        return [(o, spec) for o in tensors]
    if k.startswith("col_expand_"):
        return [(op.lhs, spec)]
    if k == "matmul":
        return [(op.lhs, spec)]
    if k == "matmul_acc":
        return [(op.acc, spec), (op.lhs, spec)]
    if k == "broadcast":
        r_in, r_out = _rows(op.input), _rows(op.result)
        if r_in == r_out:
            return [(op.input, spec)]
        if r_in == 1:
            return []
        raise _NoSplit("broadcast over rows")
    raise _NoSplit(f"{op.name} is not row-local")


def _whole_rows(par: Operation, view_op: Operation) -> bool:
    """A view of a value made in the loop that keeps every row (row offset 0, the rows of its source)."""
    src = view_op.source
    return defined_inside(par, src) and not view_op.valid and _rows(src) == _rows(view_op.results[0]) \
        and all(constant_value(o) == 0 for o in view_op.offsets[:-1])


def _demand(par: Operation, root: SSAValue, spec: tuple[int, int]) -> dict[SSAValue, tuple[int, int]]:
    """The values that are chunked when `root`'s rows are, with their chunk specs (backwards, by the ops'
    definitions); raises _NoSplit."""
    chunked: dict[SSAValue, tuple[int, int]] = {}
    work = [(root, spec)]
    while work:
        v, spec = work.pop()
        if v in chunked:
            if chunked[v] != spec:
                raise _NoSplit("a value chunked along two axes")
            continue
        chunked[v] = spec
        if not defined_inside(par, v):
            continue  # an array from before the loop: the chunk's view of it
        owner = v.owner
        if isinstance(owner, Block):  # an iteration argument of an scf.for
            loop = owner.parent_op()
            if not isinstance(loop, scf.ForOp) or v is owner.args[0]:
                raise _NoSplit("chunked loop index")
            k = owner.args.index(v) - 1
            work += [(x, spec) for x in (loop.iter_args[k], loop.body.block.last_op.operands[k], loop.results[k])]
            continue
        if isinstance(owner, scf.ForOp):
            k = list(owner.results).index(v)
            work += [(owner.body.block.args[1 + k], spec)]
            continue
        if _kind(owner) == "view" and (defined_inside(par, owner.source) or owner.valid) \
                and not (spec[0] == -2 and _whole_rows(par, owner)):
            raise _NoSplit("a view of a value made in the loop")
        work += _chunked_operands(par, owner, spec)
    return chunked


def _top(par: Operation, op: Operation) -> Operation:
    """The op of the loop body that holds `op`."""
    while op.parent_op() is not par:
        op = op.parent_op()
    return op


def _cone(par: Operation, roots: list[SSAValue], stop: set) -> set[Operation]:
    """The ops of the loop body that the roots depend on (not through values in `stop`)."""
    ops: set[Operation] = set()
    work = [r for r in roots if r not in stop]
    while work:
        v = work.pop()
        if not defined_inside(par, v) or v.owner is par.body.block:
            continue
        owner = v.owner if isinstance(v.owner, Operation) else v.owner.parent_op()
        top = _top(par, owner)
        if top in ops:
            continue
        ops.add(top)
        for nested in top.walk():
            work += [o for o in nested.operands if o not in stop]
    return ops


@dataclass
class _Split:
    rows: int                   # R, the fewest output rows of the chunked outputs
    chunked: dict               # values inside the loop computed per chunk -> chunk spec (axis, unit)
    outs: list[int]             # the outputs computed in chunks
    rest: list[int]             # outputs computed after the chunk loop, reading the chunked outputs from GM
    first: set                  # body ops of the chunk loop
    second: set                 # body ops after it


def _analyse(par: Operation) -> _Split:
    """Which outputs are computed in row chunks and which after them; raises _NoSplit. Row-local outputs join
    the chunk loop largest first while the chunks stay consistent; outputs of R' = u*R rows (R the fewest
    rows among them) take u*g rows per chunk of g."""
    body = par.body.block
    asms = [v.owner for v in body.last_op.operands]
    if not asms or any(_kind(a) != "assemble" or a.valid for a in asms):
        raise _NoSplit("outputs are not plain assembles")
    cands = []
    for k, a in enumerate(asms):
        try:
            if len(shape_of(a.tile.type)) == 3 and _rows(a.tile) > 1:
                _demand(par, a.tile, ROW)
                cands.append(k)
        except _NoSplit:
            pass
    if not cands:
        raise _NoSplit("no output is row-local")
    cands.sort(key=lambda k: (-math.prod(shape_of(asms[k].tile.type)), k))
    best, why = None, None
    for k in cands:
        outs = sorted((best.outs if best else []) + [k])
        try:
            best = _try_split(par, asms, outs)
        except _NoSplit as e:
            why = why or e
    if best is None:
        raise why
    return best


def _try_split(par: Operation, asms: list[Operation], outs: list[int]) -> _Split:
    R = min(_rows(asms[k].tile) for k in outs)
    if any(_rows(asms[k].tile) % R for k in outs):
        raise _NoSplit("row counts that do not divide")
    rest = [k for k in range(len(asms)) if k not in outs]
    chunked: dict[SSAValue, tuple[int, int]] = {}
    for k in outs:
        for v, spec in _demand(par, asms[k].tile, (-2, _rows(asms[k].tile) // R)).items():
            if chunked.setdefault(v, spec) != spec:
                raise _NoSplit("a value chunked along two axes")
    first = _cone(par, [asms[k].result for k in outs], set())
    tiles = {asms[k].tile for k in outs}
    second = _cone(par, [asms[k].result for k in rest] + [o for k in outs for o in asms[k].offsets], tiles)
    # every use of a chunked value in the chunk loop must take it chunked
    for v in chunked:
        for use in v.uses:
            user = use.operation
            if not _inside(par, user) or _top(par, user) not in first:
                continue  # before or after the loop, or after the chunk loop (recomputed whole there)
            if isinstance(user, scf.YieldOp):
                if user.parent_op().results[use.index] not in chunked:
                    raise _NoSplit("a chunked value leaves an inner loop whole")
            elif isinstance(user, scf.ForOp):
                if user.body.block.args[1 + use.index - 3] not in chunked:
                    raise _NoSplit("a chunked value enters an inner loop whole")
            elif _kind(user) == "assemble" and user in asms and use.index == 0:
                continue
            elif (user.results[0] not in chunked
                  or (v, chunked[v]) not in _chunked_operands(par, user, chunked[user.results[0]])):
                raise _NoSplit(f"{user.name} takes a chunked value whole")
    for v, (axis, unit) in chunked.items():
        if isinstance(v.type, TensorType) and (axis == -1 or len(shape_of(v.type)) == 3) \
                and shape_of(v.type)[axis] != R * unit:
            raise _NoSplit("chunked values of another row count")
    return _Split(R, chunked, outs, rest, first, second)


def _inside(par: Operation, op: Operation) -> bool:
    while op is not None:
        if op is par:
            return True
        op = op.parent_op()
    return False


def _retype(v: SSAValue, spec: tuple[int, int], g: int) -> None:
    s = list(shape_of(v.type))
    s[spec[0]] = g * spec[1]
    v._type = TensorType(v.type.get_element_type(), s)


def split_rows(par: Operation, g: int) -> None:
    """Put the work of the row-local outputs of `par` in an scf.for over chunks of g rows (R % g == 0); the
    other outputs are computed after it, reading the chunked outputs' rows back from the loop's output."""
    from attnc.ir.common import op_location

    sp = _analyse(par)
    chunked = sp.chunked
    body = par.body.block
    yld = body.last_op
    asms = [v.owner for v in yld.operands]
    ops = [op for op in body.ops if op is not yld]
    outs = [body.args[1 + k] for k in sp.outs]
    loop_body = Block(arg_types=[INDEX, *[o.type for o in outs]])
    mapping: dict[SSAValue, SSAValue] = dict(zip(outs, loop_body.args[1:]))
    loc = op_location(ops[0]) if ops else None
    with at_end(loop_body, loc):
        start = {u: muli(loop_body.args[0], g * u) for u in sorted({u for _, u in chunked.values()})}
        outside = []  # in order of first use (deterministic output)
        for op in ops:
            for nested in op.walk():
                outside += [o for o in nested.operands if o in chunked and not defined_inside(par, o)
                            and o not in outside]
        for v in outside:
            axis, unit = chunked[v]
            shp = list(shape_of(v.type))
            offs = [0] * len(shp)
            offs[axis] = start[unit]
            shp[axis] = g * unit
            mapping[v] = view(v, offs, shp).value
    firsts = [op for op in ops if op in sp.first]
    clones = []
    for op in firsts:
        clones.append(op.clone(value_mapper=mapping))
        loop_body.add_op(clones[-1])
    for v in chunked:
        if defined_inside(par, v) and v in mapping:
            _retype(mapping[v], chunked[v], g)
    for old, new in zip(firsts, clones):
        for o_nested, n_nested in zip(old.walk(), new.walk()):
            k = _kind(n_nested)
            if k == "view" and o_nested.results[0] in chunked and not defined_inside(par, o_nested.source):
                axis, unit = chunked[o_nested.results[0]]
                at = 1 + len(n_nested.offsets) + axis
            elif k == "assemble" and o_nested.tile in chunked:
                axis, unit = chunked[o_nested.tile]
                at = 2 + len(n_nested.offsets) + axis
            else:
                continue
            with before(n_nested):
                shifted = addi(n_nested.operands[at], start[unit])
            operands = list(n_nested.operands)
            operands[at] = shifted
            n_nested.operands = operands
    loop_body.add_op(scf.YieldOp(*[mapping[yld.operands[k]] for k in sp.outs]))
    with before(yld):
        lb, ub, st = const(0), const(sp.rows // g), const(1)
    for_op = scf.ForOp(lb, ub, st, list(outs), Region(loop_body))
    body.insert_op_before(for_op, yld)
    results = dict(zip(sp.outs, for_op.results))
    if sp.rest:  # the chunked outputs' tiles, read back whole from the loop's output rows
        mapping2: dict[SSAValue, SSAValue] = {}
        for k in sp.outs:
            offs = []
            for o in asms[k].offsets:
                c = constant_value(o)
                if o is body.args[0]:
                    offs.append(o)
                elif c is not None:
                    offs.append(c)
                else:
                    raise PassError(f"{op_location(asms[k])}: pto-plan-memory: an output row offset that is "
                                    f"neither the token row nor a constant")
            with before(yld):
                mapping2[asms[k].tile] = view(results[k], offs, shape_of(asms[k].tile.type)).value
        for op in ops:
            if op in sp.second:
                body.insert_op_before(op.clone(value_mapper=mapping2), yld)
        for k in sp.rest:
            results[k] = mapping2[yld.operands[k]]
    yld.operands = [results[k] for k in range(len(asms))]
    for op in reversed(ops):
        op.detach()
        op.erase(safe_erase=False)


def _fold_views(par: Operation) -> None:
    """A view of a view of an array from before the loop -> one view of that array (offsets added): a chunk
    of the outer view is then a chunk of the array (exact: the same elements)."""
    for op in list(par.body.block.ops):
        inner = op.operands[0].owner if _kind(op) == "view" and not op.valid else None
        if not (isinstance(inner, Operation) and _kind(inner) == "view" and not inner.valid
                and not defined_inside(par, inner.source)):
            continue
        with before(op):
            offs = [addi(a, b) if constant_value(a) is None or constant_value(b) is None
                    else constant_value(a) + constant_value(b) for a, b in zip(inner.offsets, op.offsets)]
            new = view(inner.source, offs, shape_of(op.results[0].type), pad=op.pad.data).value
        op.results[0].replace_all_uses_with(new)
        op.detach()
        op.erase()


def _scratch_candidate(par: Operation) -> SSAValue | None:
    """The row-local value of the loop body (rank 3, more than one row, not an output) with the most work
    before it: computed in row chunks into a GM scratch output, the rest of the body after it reads it whole."""
    body = par.body.block
    outs = {v.owner.tile for v in body.last_op.operands if _kind(v.owner) == "assemble"}
    best, most = None, 0
    for op in body.ops:
        for v in op.results:
            if not isinstance(v.type, TensorType) or len(shape_of(v.type)) != 3 or _rows(v) < 2 or v in outs:
                continue
            try:
                _demand(par, v, ROW)
            except _NoSplit:
                continue
            n = len(_cone(par, [v], set()))
            if n > most:
                best, most = v, n
    return best


def add_scratch(par: Operation, v: SSAValue) -> Operation:
    """A new token loop like `par` with one more output: `v`'s rows at each token row (a GM scratch the
    kernel writes and reads back); returns it (par is replaced)."""
    T = shape_of(par.outs[0].type)[0]
    ty = TensorType(v.type.get_element_type(), [T, *shape_of(v.type)[1:]])
    with before(par):
        init = tile_full(shape_of(ty), 0.0, dtype_of(ty)).value
    body = par.body.block
    arg = body.insert_arg(ty, len(body.args))
    yld = body.last_op
    with before(yld):
        out = assemble(v, arg, [body.args[0]] + [0] * (len(shape_of(ty)) - 1)).value
    yld.operands = [*yld.operands, out]
    new = par.__class__.create(operands=[par.lower, par.upper, *par.inits, init],
                               result_types=[*[r.type for r in par.outs], ty], properties=dict(par.properties),
                               attributes=dict(par.attributes), regions=[par.detach_region(par.body)])
    par.parent_block().insert_op_before(new, par)
    for old, r in zip(par.outs, new.outs):
        old.replace_all_uses_with(r)
    par.detach()
    par.erase()
    return new


def _fits(par: Operation, name: str) -> bool | None:
    """Whether the kernel of `par` fits (None: the emitter refuses it for another reason)."""
    from .emit import PtoEmitError, _KernelEmitter

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
            name = f"plan{i}"
            try:
                R = _analyse(par).rows
            except _NoSplit:
                R = None
            if self.rows:
                if R is None:
                    continue
                if R % self.rows:
                    raise PassError(f"rows={self.rows} does not divide the loop's {R} output rows")
                if self.rows < R:
                    split_rows(par, self.rows)
                continue
            if _fits(par, name) is not False:
                continue
            g, fits = _largest_fit(par, R, name) if R is not None else (None, False)
            if not fits and self._split_with_scratch(par, name):
                continue
            if g is not None:
                split_rows(par, g)  # the smallest chunk: the emitter names what still does not fit

    @staticmethod
    def _split_with_scratch(par: Operation, name: str) -> bool:
        """No chunk of the outputs fits: compute the row-local value with the most work before it in row
        chunks into a GM scratch (a new output of the token loop), the rest of the body after the chunk loop."""
        trial = par.clone()
        par.parent_block().insert_op_after(trial, par)
        _fold_views(trial)
        v = _scratch_candidate(trial)
        fits = False
        if v is not None:
            trial = add_scratch(trial, v)
            try:
                g, fits = _largest_fit(trial, _analyse(trial).rows, name)
            except _NoSplit:
                pass
        if not fits:
            init = trial.inits[-1].owner if v is not None else None
            trial.detach()
            trial.erase(safe_erase=False)
            if init is not None:
                init.detach()
                init.erase()
            return False
        for old, new in zip(par.outs, trial.outs):
            old.replace_all_uses_with(new)
        par.detach()
        par.erase(safe_erase=False)
        split_rows(trial, g)
        return True


def _largest_fit(par: Operation, R: int, name: str) -> tuple[int, bool]:
    """The largest chunk of g = R/2, R/4, ... rows whose kernel fits (or the smallest tried), and whether it fits."""
    g, fits = R, False
    while g % 2 == 0 and g > 1:
        g //= 2
        trial = par.clone()
        split_rows(trial, g)
        fits = _fits(trial, name)
        trial.erase(safe_erase=False)
        if fits:
            break
    return g, bool(fits)
