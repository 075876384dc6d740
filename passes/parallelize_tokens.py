"""parallelize-tokens: per-token work becomes `tile.parallel` loops over the T = batch*seq token rows in chunks.

Token rows are a fact of the IR, never a guess from shapes: they are the results of `attn.to_tokens` (the DSL's
[batch, seq, ...] -> [T, ...] flatten of per-token data) and every result of a token-local op computed from them.
A networkx def-use graph orders the walk that proves the loops legal: every token op must treat axis 0 as an
independent batch axis, so chunks of rows never depend on each other. Anything else — a reduction over tokens, a
transpose moving them, a matmul contracting over them, a gather whose table is per token — is refused with the
op's location. Other operands of token work are shared (used whole by every chunk) or replicated (splats, iotas
and broadcasts that are the same on every row, re-made per chunk).

Rows leave token work through `attn.from_tokens` ([T, ...] -> [batch, seq, ...]): an op none of whose operands
are token rows — e.g. one taking un-flattened [batch, seq, ...] values — is batch-major work. Rows may feed
batch-major work (a ring or cache written, then gathered per token) and come back through a to_tokens: each such
hand-over starts a new dependence level, and each level's token work becomes one loop, placed after the
batch-major work it needs (the body is reordered; all ops are pure).
A loop's inputs are token rows (row views), its outputs the token rows used after it, assembled into carried [T, ...]
tensors. Chunks are whole: `rows` is an upper bound, the loop takes the largest divisor of T not above it (T = 48 in
chunks of at most 32: 2 x 24), so no chunk has a runtime valid row count (pypto 0.2.0 drops one in expand_clone,
reshape and fills, and its SIM calculator then fails an op mixing valid shapes). `row-tile` (0: off) takes a chunk
above it only as a multiple of it (the pypto pipeline's 16: T = 48 in 3 x 16, T = 24 in 2 x 12), so a target that
tiles rows in powers of two tiles every chunk whole (docs/limitations.md: pypto 0.2.0's SIM cannot run the leaf
function that a 24-row chunk of the compressor pooling makes OoOSchedule spill). Exact rewrite.

A loop that multiplies token rows by a kernel parameter (a weight: a matmul whose right operand is read from a
function argument) reads the whole weight once per chunk: `weight-rows` (0: `rows`) sets its chunk rows instead,
so a step of up to that many tokens reads each weight once, with the cube M tile as tall as the chunk (the
hand-written prologs unroll token rows by 128/64/32/16/1); `weight-vec-tile` (0: the target's budget) is the
vector tile budget in elements of such a loop, recorded on it as `vec_tile_elems` (no padded key lists there,
so the 16384 that pypto 0.2.0 cannot run on attention's padded keys is allowed)."""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
from xdsl.dialects import func, scf
from xdsl.dialects.builtin import IntegerAttr, TensorType, i64
from xdsl.ir import Block, Operation, Region, SSAValue

from attnc.ir.common import int_array, ints_of, op_location
from attnc.ir.dsl import emit_op
from attnc.ir.tile_dialect import ParallelOp, YieldOp
from attnc.ir.types import dtype_of, shape_of

from . import AttncPass, PassError, register
from ._build import (INDEX, assemble, at_end, before, const, constant_value, defined_inside, tile_full,
                     view)

_ELEMENTWISE = {"add", "sub", "mul", "div", "max", "min", "rem", "floordiv", "and", "or", "neg", "exp", "sqrt",
                "rsqrt", "recip", "relu", "abs", "cmp", "select", "cast"}


def _kind(op: Operation) -> str:
    return op.name.split(".", 1)[1] if op.name.startswith("attn.") else op.name


def _lead(v: SSAValue) -> int | None:
    return shape_of(v.type)[0] if isinstance(v.type, TensorType) and shape_of(v.type) else None


@dataclass
class _Region:
    tokens: int
    batch_seq: tuple[int, int]
    token_values: set
    ops: list


class _Analysis:
    def __init__(self, fn: func.FuncOp):
        b, s = ints_of(fn.attributes["token_dims"])
        self.bs, self.T = (b, s), b * s
        self.block = fn.body.block
        self.nested_tok: set = set()  # token rows defined inside loops nested in token work

    def top_level(self, op: Operation) -> Operation:
        while op.parent_block() is not self.block:
            op = op.parent_op()
        return op

    # -- classification helpers: the IR states where token rows begin and end
    def is_flatten(self, op) -> bool:
        if op.name != "attn.to_tokens":
            return False
        if shape_of(op.input.type)[:2] != self.bs:
            raise PassError(f"{op_location(op)}: 'attn.to_tokens' flattens {list(shape_of(op.input.type)[:2])} "
                            f"rows but the function's token dims are {list(self.bs)}")
        return True

    @staticmethod
    def is_exit(op) -> bool:
        """attn.from_tokens hands token rows to batch-major work (or to the return)."""
        return op.name == "attn.from_tokens"

    def is_generator(self, op) -> bool:
        """Token-independent data replicated over the T rows (splats, iotas along other axes, broadcasts of
        [1, ...]): cloned into the loop with `rows` rows."""
        if not op.results or _lead(op.results[0]) != self.T:
            return False
        kind = _kind(op)
        if kind == "full":
            return True
        if kind == "iota":
            return op.axis.value.data != 0
        if kind == "broadcast":
            return _lead(op.input) == 1
        return False

    def is_parameter_view(self, op) -> bool:
        """A slice of a kernel parameter (or of a parameter reshaped whole): its buffer in place, made again in
        each loop that reads it (pypto 0.2.0 copies a view made outside the loop that uses it: wo_a's 8 group
        slices cost 1024 copy tasks at flash B=64)."""
        if _kind(op) != "slice":
            return False
        v = op.operands[0]
        while isinstance(v.owner, Operation) and _kind(v.owner) == "reshape":
            v = v.owner.operands[0]
        return v in self.block.args

    def check_local(self, op: Operation, tok: set) -> None:
        """Raise unless `op` treats axis 0 of its token operands as an independent batch axis."""
        kind = _kind(op)

        def is_tok(v):
            return v in tok

        def refuse(why: str):
            raise PassError(f"{op_location(op)}: '{op.name}' {why}: its loop iterations would depend on each "
                            f"other, so the token loop is refused")

        tensors = [v for v in op.operands if isinstance(v.type, TensorType)]
        if kind in _ELEMENTWISE:
            # a shared operand is used whole by every chunk: with operands of one shape, only the single row
            # of T == 1 matches a chunk
            for v in tensors:
                if not is_tok(v) and self.T != 1:
                    refuse("mixes token rows with a [T, ...] value that is not token rows")
            return
        if kind == "broadcast":
            if _lead(op.input) != _lead(op.result):
                refuse("broadcasts along the token axis")
            return
        if kind == "reduce":
            if op.axis.value.data == 0:
                refuse("reduces over the token axis")
            return
        if kind == "matmul":
            if not is_tok(op.lhs):
                refuse("contracts over the token axis (token rows as the right operand)")
            if is_tok(op.rhs) and len(shape_of(op.rhs.type)) == 2:
                refuse("contracts over the token axis (token rows as the right operand)")
            return
        if kind in ("rmsnorm",):
            if op.gamma is not None and is_tok(op.gamma):
                refuse("takes a per-token gamma")
            return
        if kind == "rope":
            if not (is_tok(op.input) and is_tok(op.positions)):
                refuse("rotates tokens with positions that are not per token")
            return
        if kind == "sparse_attention":
            if not all(is_tok(v) for v in (op.q, op.kv, op.valid)) or is_tok(op.sink):
                refuse("mixes per-token and shared operands")
            return
        if kind == "topk":
            return
        if kind == "gather_rows":
            if is_tok(op.table):
                refuse("gathers rows of a per-token table (other tokens' rows)")
            return
        if kind == "slice":
            if ints_of(op.offsets)[0] != 0 or ints_of(op.sizes)[0] != self.T:
                refuse("slices the token axis")
            return
        if kind == "concat":
            if op.axis.value.data == 0:
                refuse("concatenates along the token axis")
            return
        if kind == "transpose":
            if ints_of(op.perm)[0] != 0:
                refuse("moves the token axis")
            return
        if kind == "reshape":
            if _lead(op.input) != self.T or _lead(op.result) != self.T:
                refuse("reshapes across the token axis")
            return
        if kind == "to_tokens":
            refuse("flattens token rows again")
        if op.name == "tile.view":
            full_rows = _lead(op.result) == self.T and constant_value(op.offsets[0]) == 0 and (
                not len(op.valid) or constant_value(op.valid[0]) == self.T)
            if not is_tok(op.source) or not full_rows:
                refuse("views a part of the token axis")
            return
        if isinstance(op, scf.ForOp):
            inner = set(tok)
            inner.update(a for a, init in zip(op.body.block.args[1:], op.iter_args) if is_tok(init))
            if not all(is_tok(init) for init in op.iter_args):
                refuse("carries a value that is not token rows")
            for nested in op.body.block.ops:
                if isinstance(nested, scf.YieldOp):
                    continue
                if self.is_generator(nested):
                    inner.update(nested.results)
                elif any(v in inner for v in nested.operands):
                    self.check_local(nested, inner)
                    inner.update(_tensor_results(nested))
            if not all(v in inner for v in op.body.block.last_op.operands):
                refuse("carries a value that is not token rows")
            self.nested_tok.update(inner - tok)
            return
        refuse("is not known to be token-local")

    def external_operands(self, op: Operation) -> list[SSAValue]:
        """Values of the function body that `op` or an op nested in it uses."""
        return [v for nested in op.walk() for v in nested.operands if not defined_inside(op, v)]

    def levels(self) -> list[list[Operation]]:
        """Token regions in dependence order, after putting the body in an order that makes each contiguous.

        A forward walk classifies ops: a flatten of non-token data seeds token rows; an op using token rows is
        token work (and must be token-local); an un-flatten of token rows or the return leaves the rows. The
        level of an op counts the token loops that must finish before it can run: work after an un-flatten that
        feeds token work again (a ring written, then gathered) belongs to the next loop. Each level's token work
        becomes one loop, placed after the non-token ops of its level."""
        ops = list(self.block.ops)
        index = {op: i for i, op in enumerate(ops)}
        graph = nx.DiGraph()  # def-use between top-level ops (uses inside loop bodies count for the loop)
        graph.add_nodes_from(ops)
        for op in ops:
            for v in self.external_operands(op):
                if isinstance(v.owner, Operation) and v.owner in index:
                    graph.add_edge(v.owner, op)
        tok: set = set()
        replicated: set = set()
        level: dict = {}
        token_ops: set = set()
        for op in nx.lexicographical_topological_sort(graph, key=index.__getitem__):
            used = self.external_operands(op)
            tok_in = [v for v in used if v in tok]

            def from_defs(token_step: int) -> int:
                lv = 0
                for v in used:
                    d = v.owner
                    if isinstance(d, Operation) and d in level:
                        lv = max(lv, level[d] + (token_step if d in token_ops else 0))
                return lv

            if isinstance(op, func.ReturnOp):
                level[op] = from_defs(1)
            elif self.is_flatten(op) and not tok_in:
                token_ops.add(op)
                level[op] = from_defs(0)
                tok.add(op.results[0])
            elif tok_in and self.is_exit(op):
                level[op] = from_defs(1)
            elif tok_in:
                self.check_local(op, tok | replicated)
                token_ops.add(op)
                level[op] = from_defs(0)
                tok.update(_tensor_results(op))
            elif self.is_generator(op):
                replicated.update(op.results)
                level[op] = 0
            else:
                level[op] = from_defs(1)
        if not any(op for op in token_ops if not self.is_flatten(op)):
            return []
        top = max(level.values())
        # batch-major work goes in front of the level of its first user (as late as its uses allow), not of its
        # own level: it then shares the target's function with the work that reads it (pypto 0.2.0 links tasks
        # of different root functions tensor by tensor, and materialises a broadcast made in another one)
        place = {}
        for op in reversed(list(nx.lexicographical_topological_sort(graph, key=index.__getitem__))):
            users = [place[u] for u in graph.successors(op) if not isinstance(u, func.ReturnOp)]
            place[op] = level[op] if op in token_ops or not users else min(users)
        order = []
        for lv in range(top + 1):
            order += [op for op in ops if place[op] == lv and op not in token_ops and not isinstance(op, func.ReturnOp)]
            order += [op for op in ops if level[op] == lv and op in token_ops]
        order += [op for op in ops if isinstance(op, func.ReturnOp)]
        if order != ops:
            for op in ops:
                op.detach()
            for op in order:
                self.block.add_op(op)
        groups = []
        for lv in range(top + 1):
            group = [op for op in order if level[op] == lv and op in token_ops]
            # a loop needs work beyond flattening its inputs
            if any(not self.is_flatten(op) for op in group):
                groups.append(group)
        self.replicated, self.tok = replicated, tok
        return groups

    def constants(self) -> set:
        """Top-level ops computing small data from no input at all (iota / full and the elementwise, concat,
        cast chains over them: the RoPE permutation matrices), at most CONSTANT_ELEMS per result."""
        out: set = set()
        for op in self.block.ops:
            if (op.regions or not op.results or any(r in self.replicated for r in op.results)
                    or not all(isinstance(r.type, TensorType) and _elems(r) <= CONSTANT_ELEMS for r in op.results)):
                continue
            if all(isinstance(v.owner, Operation) and v.owner in out for v in op.operands):
                out.add(op)
        return out

    def region(self, group: list[Operation], constants: bool = False
               ) -> tuple[list[Operation], list[SSAValue], list[SSAValue]]:
        """(region ops in program order, region inputs, region outputs) of one level's token work: the flattens
        stay outside (their results are the row views of the loop), replicated data is cloned into the loop, and
        with `constants` (a one-trip loop: made once either way) so are the constants it reads: pypto 0.2.0 makes
        a value computed outside the loop one task whose edges to every task reading it one AICPU thread resolves
        while its cores wait (the RoPE selectors of qkv_proj_rope: ~150 edges, 33 us idle at flash B=64)."""
        work = [op for op in group if op.parent_block() is self.block and not (
            self.is_flatten(op) and not any(v.owner in group for v in self.external_operands(op)
                                            if isinstance(v.owner, Operation)))]
        work_set = set(work)
        generators = []
        for op in self.block.ops:
            if (any(r in self.replicated for r in op.results) or self.is_parameter_view(op)) and any(
                    self.top_level(u.operation) in work_set for r in op.results for u in r.uses):
                generators.append(op)
        region_set = work_set | set(generators)
        constants = self.constants() if constants else set()
        for op in reversed(list(self.block.ops)):  # a constant the region reads, and the constants it reads
            if op in constants and any(self.top_level(u.operation) in region_set for r in op.results for u in r.uses):
                region_set.add(op)
        region = [op for op in self.block.ops if op in region_set]
        inputs, outputs = [], []
        for op in region:
            for v in self.external_operands(op):
                d = v.owner
                if isinstance(d, Operation) and (self.top_level(d) in region_set):
                    continue
                if v in self.tok and v not in inputs:  # token rows: viewed per chunk; anything else is shared
                    inputs.append(v)
            if op in constants:  # made again in the loop; uses outside keep the original
                continue
            for r in op.results:
                if any(self.top_level(u.operation) not in region_set for u in r.uses) and r not in outputs:
                    outputs.append(r)
        return region, inputs, outputs


CONSTANT_ELEMS = 16384  # one vector tile: re-made in every chunk of the loop at the cost of one vector task


def _elems(v: SSAValue) -> int:
    n = 1
    for d in shape_of(v.type):
        n *= d
    return n


def _tensor_results(op: Operation) -> list[SSAValue]:
    """Results of a token-local op: all token rows (it keeps axis 0 as the token axis)."""
    return [r for r in op.results if isinstance(r.type, TensorType)]


def _retype(v: SSAValue, rows: int) -> None:
    v._type = TensorType(v.type.get_element_type(), [rows, *shape_of(v.type)[1:]])


def _shrink(op: Operation, rows_of: set, T: int, rows: int) -> None:
    """Replace the token extent T by `rows` in a cloned op: the types of the values it defines that are token
    rows or replicated (`rows_of`, cloned values), the sizes of slices and valid row counts of views of them."""
    for nested in op.walk():
        for r in nested.results:
            if r in rows_of:
                _retype(r, rows)
        for region in nested.regions:
            for blk in region.blocks:
                for a in blk.args:
                    if a in rows_of:
                        _retype(a, rows)
        if nested.name == "attn.slice" and nested.input in rows_of:
            sizes = list(ints_of(nested.sizes))
            sizes[0] = rows
            nested.sizes = int_array(sizes)
        viewed = {"tile.view": "source", "tile.assemble": "dest"}.get(nested.name)
        if viewed and getattr(nested, viewed) in rows_of and len(nested.valid) and \
                constant_value(nested.valid[0]) == T:
            index = (2 if nested.name == "tile.assemble" else 1) + len(nested.offsets)
            with before(nested):
                rows_value = const(rows)
            operands = list(nested.operands)
            operands[index] = rows_value
            nested.operands = operands


def _parallelize(fn: func.FuncOp, rows: int, weight_rows: int = 0, weight_vec_tile: int = 0,
                 row_tile: int = 0) -> None:
    an = _Analysis(fn)
    params = set(fn.body.block.args)
    for group in an.levels():
        region, inputs, outputs = an.region(group)
        weights = _multiplies_weights(region, an.tok | an.nested_tok, params)
        # a pass may state smaller chunks for its token ops (`chunk_rows`: schedule-compressor's pooling), so more
        # chunks of a long per-row chain run side by side; not in a loop reading a weight (once per chunk)
        stated = [] if weights else [o.attributes["chunk_rows"].value.data for top in region for o in top.walk()
                                     if "chunk_rows" in o.attributes and any(r in an.tok for r in o.results)]
        chunk = min([(weight_rows or rows) if weights else rows, *stated])
        if chunk_rows(an.T, chunk, row_tile) == an.T:  # one trip: its constants are made in it at no extra cost
            region, inputs, outputs = an.region(group, constants=True)
        _parallelize_region(an, region, inputs, outputs, chunk, weight_vec_tile if weights else 0, row_tile)


def chunk_rows(T: int, rows: int, row_tile: int = 0) -> int:
    """The rows of a token loop's chunk: the largest divisor of T not above `rows` (every chunk whole) and, with
    `row_tile`, at most `row_tile` or a multiple of it (a chunk its target tiles in whole row tiles)."""
    return max(d for d in range(1, min(rows, T) + 1)
               if T % d == 0 and (not row_tile or d <= row_tile or d % row_tile == 0))


def _reads_parameter(v: SSAValue, params: set) -> bool:
    """Is v a kernel parameter, or a cast / reshape / slice of one (the value a weight matmul reads)?"""
    while isinstance(v.owner, Operation) and _kind(v.owner) in ("cast", "reshape", "slice", "tile.view"):
        v = v.owner.operands[0]
    return v in params


def _multiplies_weights(region, tok: set, params: set) -> bool:
    """Does the region multiply token rows by a weight (a matmul whose right operand a kernel parameter gives)?"""
    return any(_kind(op) == "matmul" and op.lhs in tok and _reads_parameter(op.rhs, params)
               for top in region for op in top.walk())


def _parallelize_region(an: _Analysis, region, inputs, outputs, rows: int, vec_tile: int = 0,
                        row_tile: int = 0) -> None:
    T = an.T
    rows = chunk_rows(T, rows, row_tile)
    last = region[-1]
    anchor = last.next_op
    loc = op_location(last)
    body = Block(arg_types=[INDEX, *[o.type for o in outputs]])
    row0 = body.args[0]
    mapping: dict[SSAValue, SSAValue] = {}
    with at_end(body, loc):
        for v in inputs:
            rest = shape_of(v.type)[1:]
            mapping[v] = view(v, (row0, *[0] * len(rest)), (rows, *rest)).value
    clones = []
    for op in region:
        clones.append(op.clone(value_mapper=mapping))  # maps nested values too
        body.add_op(clones[-1])
    rows_of = {mapping[v] for v in an.tok | an.replicated | an.nested_tok if v in mapping}
    for new in clones:
        _shrink(new, rows_of, T, rows)
    with at_end(body, loc):
        carried = []
        for out, acc in zip(outputs, body.args[1:]):
            rest = shape_of(out.type)[1:]
            carried.append(assemble(mapping[out], acc, (row0, *[0] * len(rest))).value)
        emit_op(YieldOp, [carried], [])
    with before(anchor):
        inits = [tile_full(shape_of(o.type), 0.0, _dtype(o)).value for o in outputs]
        par = emit_op(ParallelOp, [const(0), const(T), inits], [[o.type for o in outputs]],
                      {"rows": IntegerAttr(rows, i64)}, regions=[Region(body)])
        if vec_tile:
            par.attributes["vec_tile_elems"] = IntegerAttr(vec_tile, i64)
    an.tok.update(par.results)
    region_set = set(region)
    for old, new in zip(outputs, par.results):
        old.replace_uses_with_if(new, lambda use: use.operation not in region_set)
    for op in reversed(region):
        if all(not r.uses for r in op.results):
            op.detach()
            op.erase()


def _dtype(v):
    return dtype_of(v.type)


@register
@dataclass(frozen=True)
class ParallelizeTokens(AttncPass):
    name = "parallelize-tokens"
    summary = "per-token work -> tile.parallel over token rows in chunks (networkx dependence check)"
    tolerance = 0.0
    rows: int = 16
    weight_rows: int = 0  # chunk rows of a loop that multiplies token rows by a weight (0: rows)
    weight_vec_tile: int = 0  # vector tile budget (elements) in such a loop (0: the target's)
    row_tile: int = 0  # a chunk above this many rows is a multiple of it (0: any divisor of T)

    def apply(self, ctx, op):
        if self.rows <= 0:
            raise PassError(f"rows must be positive, got {self.rows}")
        if self.weight_rows < 0:
            raise PassError(f"weight-rows must be positive or 0 (rows), got {self.weight_rows}")
        if self.weight_vec_tile and not 16 <= self.weight_vec_tile <= 1 << 20:
            raise PassError(f"weight-vec-tile must be 0 or in [16, 2^20], got {self.weight_vec_tile}")
        if self.row_tile < 0:
            raise PassError(f"row-tile must be positive or 0 (any divisor), got {self.row_tile}")
        for fn in [f for f in op.ops if isinstance(f, func.FuncOp)]:
            if "token_dims" in fn.attributes:
                _parallelize(fn, self.rows, self.weight_rows, self.weight_vec_tile, self.row_tile)
