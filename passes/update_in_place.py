"""update-in-place: state in the IR which cache/state writes update a kernel parameter in place.

A stage returns an in/out array under the name of the parameter it updates (`kv_cmp` in, `kv_cmp` out: the stage
contract). When that result is a chain of `tile.scatter_rows` whose first table is the parameter itself, each
scatter of the chain gets `in_place = true`: its result is the table's own buffer with the step's rows written, so
the emitter writes the parameter (one in/out kernel parameter, only the rows the ids name) instead of a copy of the
whole table. The pass also orders the writes after every read of the table they update: the scatter moves after
the last op computed from the old table (e.g. the window attention reading `kv_ring` through a reshape, which
aliases the parameter in the emitted program), so no read of a step sees a row the step wrote (pypto-lib#492). A chain it cannot order (a read of the new table before
a read of the old one) or a parameter returned twice stays a copy. Value semantics are unchanged: exact."""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects import func
from xdsl.dialects.builtin import BoolAttr
from xdsl.ir import Block, Operation, SSAValue

from . import AttncPass, register


def _top_level(op: Operation, block: Block) -> Operation:
    while op.parent_block() is not block:
        op = op.parent_op()
    return op


def in_place_chain(value: SSAValue, arg: SSAValue) -> list[Operation] | None:
    """The tile.scatter_rows ops, first to last, that turn `arg` into `value`, or None if `value` is not one."""
    chain = []
    while value is not arg:
        op = value.owner
        if not (isinstance(op, Operation) and op.name == "tile.scatter_rows"):
            return None
        chain.insert(0, op)
        value = op.table
    return chain or None


@register
@dataclass(frozen=True)
class UpdateInPlace(AttncPass):
    name = "update-in-place"
    summary = "cache/state scatters of a parameter returned under its name write it in place, after its reads"
    tolerance = 0.0

    def apply(self, ctx, module):
        for fn in [op for op in module.ops if isinstance(op, func.FuncOp)]:
            block = fn.body.block
            args = dict(zip((a.data for a in fn.attributes["arg_names"].data), block.args))
            ret = block.last_op
            returned = list(ret.operands)
            for name, value in zip((a.data for a in fn.attributes["result_names"].data), returned):
                arg = args.get(name)
                chain = in_place_chain(value, arg) if arg is not None else None
                if chain is None or returned.count(value) > 1 or any(o.parent_block() is not block for o in chain):
                    continue
                if all(self._order_after_reads(op, block) for op in chain):
                    for op in chain:
                        op.attributes["in_place"] = BoolAttr.from_bool(True)

    @staticmethod
    def _order_after_reads(scatter: Operation, block: Block) -> bool:
        """Move `scatter` after every op that reads its table, directly or through values computed from it (a
        reshape or view of a parameter aliases its buffer in the emitted program); False if such an op also
        depends on the scatter's result, or a user of the result would precede the write."""
        order = {op: i for i, op in enumerate(block.ops)}
        readers, after = _dependents(scatter.table, block, skip=scatter), _dependents(scatter.result, block)
        if readers & after:
            return False
        last = max(readers, key=order.__getitem__, default=None)
        if last is None or order[last] < order[scatter]:
            return True
        if any(order[u] <= order[last] for u in after):
            return False
        scatter.detach()
        block.insert_op_after(scatter, last)
        return True


def _dependents(value: SSAValue, block: Block, skip: Operation | None = None) -> set[Operation]:
    """Top-level ops of `block` that use `value` or a value computed from it (not through `skip`)."""
    found, todo = set(), [value]
    while todo:
        for use in todo.pop().uses:
            top = _top_level(use.operation, block)
            if top is skip or top in found or top is block.last_op:
                continue
            found.add(top)
            todo.extend(top.results)
    return found
