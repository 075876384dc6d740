"""Emit a readable `@pypto.frontend.jit` program (CANN PyPTO 0.2.0) from tile-level IR.

SSA values become Python variables; `tile.parallel` and `scf.for` become `pypto.loop`s whose carried tensors
are updated in place (`x[:] = new`, `pypto.assemble`); index arithmetic becomes Python expressions on ints and
pypto symbolic scalars. Every statement is preceded by the tile shape it needs (vector ops:
`set_vec_tile_shapes` of the op's rank; matmuls: `set_cube_tile_shapes`) and followed by the DSL line it came
from. The module skeleton is a jinja2 template; the output is deterministic.

The emitter prints what the IR says: pypto-legalize rewrote what pypto 0.2.0 cannot run (scratch buffers for
tensors loops write in parts, bool fills, broadcast chains, ...), and the facts that need an analysis of uses
and producers (buffers, packed concats, in-place reshapes, prefix gathers, splats, scalar ids, output copies)
are attributes set by the `pypto-legalize` pass (codegen/pypto/legalize.py), and each tile op class has one
rule in RULES; `_Emitter.op` walks the IR and the table (tests/test_pypto_legalize.py lists the IR queries the
emitter makes)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import jinja2
from xdsl.dialects import arith, func, scf
from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.ir import Operation, SSAValue

from attnc.codegen.escape import code_text, identifier
from attnc.errors import AttncError
from attnc.ir.common import LOC_ATTR, ints_of, op_location
from attnc.ir import entry_function
from attnc.ir.tile_dialect import EXPAND_KINDS
from attnc.ir.types import dtype_of, shape_of

from .host import encoded, host_constants
from .legalize import flag, legalize_function, matmul_cube_tiles
from .options import PyptoOptions
from .tiles import BYTES as _BYTES, UB_BYTES, lanes, loop_vec_budget, vec_tile  # noqa: F401 (api.tune)
from .tiles import L0AB_BYTES, L0C_BYTES, L1_OPERAND_BYTES, cube_tile  # noqa: F401 (tests)

PYPTO_DTYPE = {"bf16": "pypto.DT_BF16", "f16": "pypto.DT_FP16", "f32": "pypto.DT_FP32", "i32": "pypto.DT_INT32",
               "i8": "pypto.DT_INT8", "i1": "pypto.DT_BOOL"}
CAST_MODE = {"rint": "pypto.CastMode.CAST_RINT", "round": "pypto.CastMode.CAST_ROUND",
             "trunc": "pypto.CastMode.CAST_TRUNC"}
BINARY = {"add": "pypto.add", "sub": "pypto.sub", "mul": "pypto.mul", "div": "pypto.div", "max": "pypto.maximum",
          "min": "pypto.minimum", "and": "pypto.logical_and"}
UNARY = {"neg": "pypto.neg", "exp": "pypto.exp", "sqrt": "pypto.sqrt", "rsqrt": "pypto.rsqrt",
         "recip": "pypto.reciprocal", "relu": "pypto.relu", "abs": "pypto.abs", "floor": "pypto.floor"}
CMP = {"lt": "pypto.lt", "le": "pypto.le", "gt": "pypto.gt", "ge": "pypto.ge", "eq": "pypto.eq", "ne": "pypto.ne"}
ROW_REDUCE = {"row_sum": "pypto.sum", "row_max": "pypto.amax", "row_min": "pypto.amin"}
CMPI = {0: "==", 1: "!=", 2: "<", 3: "<=", 4: ">", 5: ">="}  # arith.cmpi's signed predicates
SCALAR = {"adds": "pypto.add", "muls": "pypto.mul", "maxs": "pypto.maximum"}

GATHER_TILE_ELEMS = 8192  # index_select tiles with a multi-dim index at most this large (see gather_rows)
GATHER_UB_BYTES = 128 * 1024  # a row-list index_select's output tile (UB keeps room for its index tile)
_TEMPLATE = jinja2.Environment(loader=jinja2.PackageLoader("attnc.codegen.pypto", "templates"),
                               keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


class EmitError(AttncError):
    """The IR contains something pypto 0.2.0 cannot express; the message starts with the op location."""


@dataclass
class _Emitter:
    names: dict = field(default_factory=dict)  # SSAValue -> python expression (var name or int literal)
    consts: dict = field(default_factory=dict)  # SSAValue -> int for index constants
    lines: list = field(default_factory=list)
    counter: int = 0
    depth: int = 1
    loop_count: int = 0
    out_names: list = field(default_factory=list)  # kernel parameter names of the outputs
    out_rows: dict = field(default_factory=dict)  # output index -> the shape its loop writes it in (token rows)
    scratch: list = field(default_factory=list)  # (name, shape, dtype) of the scratch parameters (_declare)
    vec_budget: int = PyptoOptions.vec_tile_elems
    # what the emitter printed about a value, for the ops that read it (one table, see `note`)
    printed: dict = field(default_factory=dict)
    # the pieces of each packed concat: [[shape, offset, padded], ...] per concat (pypto-legalize `pieces`)
    assembled_pieces: list = field(default_factory=list)
    l1_reuse: dict = field(default_factory=dict)  # the program's cube_l1_reuse_setting (restored after a loop's own)
    nbuffer: dict = field(default_factory=dict)  # the program's cube_nbuffer_setting (restored likewise)
    host: list = field(default_factory=list)  # (name, shape, dtype) of the host-computed constant parameters

    def note(self, v: SSAValue, **facts):
        """Record what printing v's op stated about v: `rows` its vector tile's row cap (the op's `tile_rows`),
        `gather` the prefix gather printed where its view is."""
        self.printed.setdefault(v, {}).update(facts)

    def noted(self, v: SSAValue, fact: str):
        return self.printed.get(v, {}).get(fact)

    def vec_tile_of(self, shape, dtype: str, budget: int | None = None) -> str:
        return ", ".join(map(str, vec_tile(shape, dtype, budget or self.vec_budget)))

    def group_rows(self, op: Operation) -> int | None:
        """A `row_group` member's row count for its vector tiles (pypto-legalize `row_group_types`,
        `row_group_cap`): the fewest rows any of the group's result types takes under the budget in force."""
        types = op.attributes.get("row_group_types")
        if types is None:
            return None
        rows = [vec_tile(shape_of(t), dtype_of(t), self.vec_budget)[0] for t in types.data]
        cap = op.attributes.get("row_group_cap")
        return min(rows + ([cap.value.data] if cap is not None else [])) if rows else None

    def fresh(self, prefix="t") -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def emit(self, text: str):
        self.lines.append("    " * self.depth + text)

    def ref(self, v: SSAValue) -> str:
        if v in self.consts:
            return str(self.consts[v])
        if v not in self.names:
            raise EmitError(f"value {v} used before definition")
        return self.names[v]

    def set_tile(self, v: SSAValue, budget: int | None = None, rows: int | None = None):
        tile = vec_tile(shape_of(v.type), dtype_of(v.type), budget or self.vec_budget)
        rows = min(x for x in (self.noted(v, "rows"), rows, math.inf) if x is not None)
        rows = None if rows == math.inf else rows
        if rows is not None and len(tile) > 1:  # the pass's row cap: a chain of ops keeps one row group per tile
            tile[0] = min(tile[0], rows)
        cols = self.noted(v, "cols")
        if cols is not None and len(tile) > 1:
            tile[-1] = cols
        self.emit(f"pypto.set_vec_tile_shapes({', '.join(map(str, tile))})")

    def padded_budget(self, op: Operation, side: str) -> int | None:
        """The tile budget of an op whose `side` tile pypto 0.2.0 holds padded (pypto-legalize `padded_in` /
        `padded_out` = F): the budget divided by F; None without the fact."""
        factor = op.attributes.get(side)
        return max(1, self.vec_budget // factor.value.data) if factor is not None else None

    def bind(self, v: SSAValue, expr: str, loc: str | None = None, tile_of: SSAValue | None = None,
             budget: int | None = None, op: Operation | None = None):
        """v = expr under v's vector tile (or tile_of's): the one pypto-legalize stated on `op` (`vec_tile`, the
        per-op rule of codegen/pypto/tiles.py), else the default tile under the budget in force."""
        name = self.fresh()
        self.names[v] = name
        suffix = f"  # {loc}" if loc else ""
        stated = op.attributes.get("vec_tile") if op is not None else None
        if stated is not None:
            self.emit(f"pypto.set_vec_tile_shapes({', '.join(map(str, ints_of(stated)))})")
        elif isinstance(v.type, TensorType):
            self.set_tile(tile_of if tile_of is not None else v, budget)
        self.emit(f"{name} = {expr}{suffix}")

    def _materialize_unpadded(self, op, res):
        """A reshape whose readers read through its input's padded layout (pypto-legalize `padded_in` = F) is
        cloned dense under a tile budget divided by F when the padded reader tile would not fit UB."""
        factor = op.attributes.get("padded_in")
        if factor is None:
            return
        shape, dtype, factor = shape_of(res.type), dtype_of(res.type), factor.value.data
        if math.prod(vec_tile(shape, dtype, self.vec_budget)) * factor * _BYTES[dtype] <= UB_BYTES:
            return
        tile = vec_tile(shape, dtype, max(1, self.vec_budget // factor))
        self.emit(f"pypto.set_vec_tile_shapes({', '.join(map(str, tile))})")
        self.emit(f"{self.names[res]} = pypto.clone({self.names[res]})  # dense: its readers' tiles fit UB")

    # ------------------------------------------------------------------------------------------ ops
    def op(self, op: Operation):
        if flag(op, "scalar_ids"):  # computes scatter ids only, which are evaluated as scalars where used
            return
        if flag(op, "host_only"):  # feeds only host-computed constants
            return
        if "host_constant" in op.attributes:  # a kernel parameter, its value in the program (pypto-legalize, host.py)
            name = op.attributes["host_constant"].data
            self.names[op.results[0]] = name
            self.host.append((name, list(shape_of(op.results[0].type)), dtype_of(op.results[0].type)))
            return
        loc = code_text(op_location(op)) if LOC_ATTR in op.attributes else None  # the file's text: escaped
        name = op.name
        if isinstance(op, arith.ConstantOp):
            self.consts[op.result] = op.value.value.data
            return
        if name.startswith("arith."):
            return self._index(op)
        if isinstance(op, scf.ForOp):
            return self._loop(op, loc, [op.lb, op.ub, op.step], op.iter_args, op.body.block, op.results, "k")
        if name == "tile.parallel":
            return self._loop(op, loc, [op.lower, op.upper, None], op.inits, op.body.block, op.outs, "r",
                              step=op.rows.value.data)
        if isinstance(op, scf.IfOp):
            return self._if(op, loc)
        if isinstance(op, func.ReturnOp):
            return
        if not name.startswith("tile."):
            raise EmitError(f"{loc}: {name} has no pypto 0.2.0 lowering: only func/arith/scf/tile ops are emitted "
                            "(run lower-to-tiles first)")
        kind = name.split(".", 1)[1]
        rule = RULES.get(kind)
        if rule is None:
            raise EmitError(f"{loc}: tile.{kind} has no pypto 0.2.0 lowering: the emitter has no rule for it")
        cap = op.attributes.get("tile_rows")  # the row cap of its results' vector tiles (schedule-compressor)
        if cap is not None:
            for r in op.results:
                self.note(r, rows=cap.value.data)
        cols = op.attributes.get("tile_cols")  # a per-row statistic's tile width: its chain's (quantize-w8a8)
        if cols is not None:
            for r in op.results:
                self.note(r, cols=cols.value.data)
        group = self.group_rows(op)  # one row count along a chain (pypto-legalize row_group_types)
        if group is not None:
            for r in op.results:
                self.note(r, rows=min(self.noted(r, "rows") or math.inf, group))
        return rule(self, op, loc)

    def operands(self, op: Operation):
        """The op's operand expressions, its result, the result's pypto dtype and shape (None for a scalar)."""
        a = [self.ref(v) for v in op.operands]
        res = op.results[0] if op.results else None
        dt = PYPTO_DTYPE.get(dtype_of(res.type)) if res is not None and isinstance(res.type, TensorType) else None
        shape = list(shape_of(res.type)) if dt else None
        return a, res, dt, shape

    def _gather_prefix(self, gather, res, valid: str, loc):
        """The zero-padded view of a gather's first `valid` rows: gather only those ids (the rest of the index
        list may name rows nobody may read)."""
        ids = self.fresh("i")
        n = shape_of(gather.indices.type)[0]
        self.emit(f"pypto.set_vec_tile_shapes({self.vec_tile_of([n], 'i32')})")
        self.emit(f"{ids} = pypto.view({self.ref(gather.indices)}, [{n}], [0], valid_shape=[{valid}])")
        return self.bind(res, f"pypto.index_select({self.ref(gather.table)}, 0, {ids})", loc,
                         budget=self._gather_budget(res))

    def _gather_budget(self, res) -> int:
        """The vector tile of a gather's result (see gather_rows): a row list in tiles as large as UB holds, a
        multi-dim index in tiles of at most GATHER_TILE_ELEMS."""
        if len(shape_of(res.type)) > 2:
            return min(self.vec_budget, GATHER_TILE_ELEMS)
        return max(self.vec_budget, GATHER_UB_BYTES // _BYTES[dtype_of(res.type)])

    def _scatter_rows(self, op, a, loc):
        """One row write per id: a loop over the rows m, the id computed as a scalar (pypto reads scalars only from
        kernel parameters: pypto-legalize's `scalar_id` steps, evaluated per element), a runtime branch skipping
        ids < 0, and an assemble at the data-dependent row, into the table's own buffer (`in_place`: set by
        update-in-place, or by pypto-legalize on a scatter into a copy of the table)."""
        dest = a[0]
        rows_shape, table_shape = list(shape_of(op.rows.type)), list(shape_of(op.table.type))
        lead = table_shape[:len(table_shape) - len(rows_shape) + 1]  # the table dims a row id runs over
        self.loop_count += 1
        w = f"w{self.loop_count}"
        # the rows each iteration writes (pypto-legalize `rows_per_trip`, its option scatter-rows)
        per = op.attributes["rows_per_trip"].value.data if "rows_per_trip" in op.attributes else 1
        self.emit(f"for {w} in pypto.loop(0, {rows_shape[0]}, {per}, name=\"L{self.loop_count}\", idx_name=\"{w}\"):  # {loc}")
        self.depth += 1
        rows = [f"({w} + {k})" if per > 1 else w for k in range(per)]
        rids = []
        for m in rows:  # each row's id as a scalar variable (it is read more than once)
            rid = self._scalar_id(op, m)
            if not rid.isidentifier():
                rids.append(self.fresh("s"))
                self.emit(f"{rids[-1]} = {rid}")
            else:
                rids.append(rid)
        # pypto-legalize's `rows_together`: the condition under which a group of `together_rows` rows of the
        # iteration lands at consecutive ids of one table block (a ring's step rows), written as one assemble, one
        # task instead of n (flash B = 64 S = 2: compressor m = 4 535 -> 429 tasks, 158.4 -> 152.3 us; index
        # 137.0 -> 127.0); else (or without the fact) row by row
        n = op.attributes["together_rows"].value.data if "rows_together" in op.attributes else 1
        for g in range(0, per, n):
            if n > 1:
                together = self.fresh("s")
                cond = op.attributes["rows_together"].data.format(**{f"r{k}": r for k, r in enumerate(rids[g:g + n])})
                self.emit(f"{together} = {cond}")
                self.emit(f"if {together} > 0:")
                self.depth += 1
                self._write_rows(op, a, dest, rows[g], rids[g], n, lead, rows_shape)
                self.depth -= 1
                self.emit("else:")
                self.depth += 1
            for m, rid in zip(rows[g:g + n], rids[g:g + n]):
                self.emit(f"if {rid} >= 0:")
                self.depth += 1
                self._write_rows(op, a, dest, m, rid, 1, lead, rows_shape)
                self.depth -= 1
            if n > 1:
                self.depth -= 1
        self.depth -= 1
        self.names[op.result] = dest

    def _write_rows(self, op, a, dest, m: str, rid: str, n: int, lead, rows_shape):
        """Rows m .. m+n-1 of the scatter's source written at table row `rid` and the n rows after it (one block)."""
        zeros = ["0"] * (len(rows_shape) - 1)
        offsets, stride = [], 1
        for d in reversed(lead):  # the flat row id as offsets into the table's leading dims
            offsets.insert(0, f"({rid} // {stride}) % {d}" if stride > 1 else f"{rid} % {d}")
            stride *= d
        offsets[0] = f"{rid} // {stride // lead[0]}" if len(lead) > 1 else rid
        row, tile = self.fresh("v"), [1] * (len(lead) - 1) + [n] + rows_shape[1:]
        self.emit(f"pypto.set_vec_tile_shapes({self.vec_tile_of([n, *rows_shape[1:]], dtype_of(op.rows.type))})")
        self.emit(f"{row} = pypto.clone(pypto.view({a[1]}, {[n, *rows_shape[1:]]}, [{', '.join([m, *zeros])}]))")
        if len(lead) > 1:
            self.emit(f"pypto.set_vec_tile_shapes({self.vec_tile_of(tile, dtype_of(op.rows.type))})")
            self.emit(f"{row} = pypto.reshape({row}, {tile})")
        self.emit(f"pypto.assemble({row}, [{', '.join(offsets + zeros)}], {dest})")

    def _scalar_id(self, op, m: str) -> str:
        """The id of row `m` of a scatter_rows: pypto-legalize's `scalar_id` steps, each bound to a scalar
        variable ({m} the row, {sN} step N's variable), the last the id itself."""
        *steps, last = (s.data for s in op.attributes["scalar_id"].data)
        env = {"m": m}
        for i, step in enumerate(steps):
            env[f"s{i}"] = self.fresh("s")
            self.emit(f"{env[f's{i}']} = {step.format(**env)}")
        return last.format(**env)

    @staticmethod
    def _expand(src: str, src_shape: list, shape: list) -> str:
        """src expanded to shape, over one axis at most (pypto-legalize splits broadcasts over several)."""
        return f"pypto.expand_clone({src}, {shape})" if list(src_shape) != list(shape) else f"pypto.clone({src})"

    def _declare(self, v: SSAValue) -> str:
        """A scratch parameter of v's type, no value written, bound to v (a tile.full `buffer = "scratch"` of
        pypto-legalize). (Its name is a temporary's, which no kernel parameter may take.)"""
        name = self.fresh("ws")
        self.names[v] = name
        self.scratch.append((name, list(shape_of(v.type)), dtype_of(v.type)))
        return name

    def _scalar(self, res, expr):
        name = self.fresh("s")
        self.names[res] = name
        self.emit(f"{name} = {expr}")

    def _index(self, op):
        ops = {arith.AddiOp: "+", arith.SubiOp: "-", arith.MuliOp: "*"}
        x, y = op.operands
        if isinstance(op, arith.CmpiOp):  # a branch condition, printed where it is read
            self.names[op.result] = f"{self.ref(x)} {CMPI[op.predicate.value.data]} {self.ref(y)}"
            return
        if x in self.consts and y in self.consts:
            a, b = self.consts[x], self.consts[y]
            folded = {arith.AddiOp: a + b, arith.SubiOp: a - b, arith.MuliOp: a * b, arith.MinSIOp: min(a, b),
                      arith.MaxSIOp: max(a, b), arith.CeilDivSIOp: -(-a // b)}.get(type(op))
            if folded is None:
                raise EmitError(f"{op_location(op)}: {op.name} has no pypto 0.2.0 lowering: no constant folding rule")
            self.consts[op.result] = folded
            return
        a, b = self.ref(x), self.ref(y)
        if type(op) in ops:
            return self._scalar(op.result, f"({a} {ops[type(op)]} {b})")
        if isinstance(op, arith.MinSIOp):
            return self._scalar(op.result, f"pypto.min({a}, {b})")
        if isinstance(op, arith.MaxSIOp):
            return self._scalar(op.result, f"pypto.max({a}, {b})")
        if isinstance(op, arith.CeilDivSIOp):
            return self._scalar(op.result, f"pypto.ceildiv({a}, {b})")
        raise EmitError(f"{op_location(op)}: {op.name} has no pypto 0.2.0 lowering: only addi/subi/muli/minsi/maxsi/"
                        "ceildivsi are emitted on symbolic scalars")

    def _if(self, op, loc):
        """A runtime branch on a symbolic scalar; its results are tensors each branch updates in place (both
        yield the same buffer), e.g. a zero-padded piece's zeros (pypto-legalize)."""
        self.emit(f"if {self.ref(op.cond)}:" + (f"  # {loc}" if loc else ""))
        for region in (op.true_region, op.false_region):
            block = region.block if region.blocks else None
            body = [o for o in block.ops if o is not block.last_op] if block is not None else []
            if region is op.false_region:
                if not body:
                    break
                self.emit("else:")
            self.depth += 1
            for inner in body:
                self.op(inner)
            self.depth -= 1
        ends = [r.block.last_op.operands for r in (op.true_region, op.false_region) if r.blocks]
        for i, r in enumerate(op.results):
            names = {self.ref(y[i]) for y in ends}
            if len(names) != 1:
                raise EmitError(f"{loc}: scf.if has no pypto 0.2.0 lowering: result {i} is not one buffer updated "
                                "in place by both branches")
            self.names[r] = names.pop()

    def _loop(self, op, loc, bounds, inits, block, results, prefix, step=None):
        lo, hi = self.ref(bounds[0]), self.ref(bounds[1])
        step = step if step is not None else self.ref(bounds[2])
        carried = [self.ref(v) for v in inits]  # updated in place (pypto-legalize gave each a buffer to write)
        self.loop_count += 1
        idx = f"{prefix}{self.loop_count}"
        self.emit(f"for {idx} in pypto.loop({lo}, {hi}, {step}, name=\"L{self.loop_count}\", "
                  f"idx_name=\"{idx}\"):  # {loc}")
        self.depth += 1
        outer_budget = self.vec_budget
        self.vec_budget = loop_vec_budget(op, outer_budget)
        self.names[block.args[0]] = idx
        if "one_trip" in op.attributes:  # pypto-legalize: one iteration, its index is this constant
            self.consts[block.args[0]] = op.attributes["one_trip"].value.data
        for arg, name in zip(block.args[1:], carried):
            self.names[arg] = name
        # the body's cube_l1_reuse_setting and cube_nbuffer_setting (pypto-legalize `body_l1_reuse`,
        # `body_nbuffer`), the program's restored at the loop's end
        settings = [(name, op.attributes[fact].value.data, program) for fact, name, program in (
            ("body_l1_reuse", "cube_l1_reuse_setting", self.l1_reuse),
            ("body_nbuffer", "cube_nbuffer_setting", self.nbuffer)) if fact in op.attributes]
        if settings:
            self.emit(f"pypto.set_pass_options({', '.join(f'{name}={{-1: {n}}}' for name, n, _ in settings)})")
        # one merge scope for the body (`merge_scope`, stated by the pass that made the loop): pypto 0.2.0 merges
        # its ops into one subgraph per iteration instead of a task per tile shape
        scope = op.attributes["merge_scope"].value.data if "merge_scope" in op.attributes else None
        if scope is not None:
            self.emit(f"pypto.set_pass_options(sg_set_scope={scope})")
        for inner in block.ops:
            if inner is block.last_op and inner.name in ("scf.yield", "tile.yield"):
                for name, v in zip(carried, inner.operands):
                    if self.ref(v) != name:
                        self.set_tile(v)
                        self.emit(f"{name}[:] = {self.ref(v)}")
                continue
            self.op(inner)
        if scope is not None:
            self.emit("pypto.set_pass_options(sg_set_scope=-1)")
        self.vec_budget = outer_budget
        self.depth -= 1
        if settings:
            self.emit(f"pypto.set_pass_options({', '.join(f'{name}={program!r}' for name, _, program in settings)})")
        for r, name in zip(results, carried):
            self.names[r] = name


# ---------------------------------------------------------------------------------------------- rules
# One rule per tile op class: RULES[kind](emitter, op, operand refs, result, pypto dtype, result shape, location),
# as xDSL's printers and MLIR's conversion patterns are registered; _Emitter.op walks the IR and looks them up.
RULES: dict = {}


def _rule(*kinds):
    def register(fn):
        for kind in kinds:
            RULES[kind] = fn
        return fn
    return register


def _simple(kinds, expr, tile_of_input: bool = False):
    """A rule binding the result to one pypto call: expr(kind, operand refs, op) -> its text."""
    def rule(self: _Emitter, op: Operation, loc: str | None):
        a, res, _, _ = self.operands(op)
        return self.bind(res, expr(op.name.split(".", 1)[1], a, op), loc,
                         tile_of=op.input if tile_of_input else None, op=op)  # a reduction: tiled over its input
    _rule(*kinds)(rule)


_simple(BINARY, lambda kind, a, op: f"{BINARY[kind]}({a[0]}, {a[1]})")
_simple(["or"], lambda kind, a, op: f"pypto.logical_not(pypto.logical_and(pypto.logical_not({a[0]}), "
                                    f"pypto.logical_not({a[1]})))")
_simple(UNARY, lambda kind, a, op: f"{UNARY[kind]}({a[0]})")
_simple(["cmp"], lambda kind, a, op: f"{CMP[op.predicate.data]}({a[0]}, {a[1]})")
_simple(["select"], lambda kind, a, op: f"pypto.where({a[0]}, {a[1]}, {a[2]})")
_simple(ROW_REDUCE, lambda kind, a, op: f"{ROW_REDUCE[kind]}({a[0]}, -1, True)", tile_of_input=True)
_simple([f"{d}_expand_{k}" for d in ("row", "col") for k in EXPAND_KINDS],
        lambda kind, a, op: f"{BINARY[kind.split('_', 2)[2]]}({a[0]}, {a[1]})")
_simple(SCALAR, lambda kind, a, op: f"{SCALAR[kind]}({a[0]}, {py_float(op.scalar.value.data)})")


@_rule("cast")
def _print_cast(self: _Emitter, op: Operation, loc: str | None):
    a, res, dt, shape = self.operands(op)
    sat = ", satmode=pypto.SaturationMode.ON" if op.saturate is not None and op.saturate.value.data else ""
    return self.bind(res, f"pypto.cast({a[0]}, {dt}, mode={CAST_MODE[op.rounding.data]}{sat})", loc, op=op)


@_rule("matmul", "matmul_acc")
def _print_matmul(self: _Emitter, op: Operation, loc: str | None):
    kind = op.name.split(".", 1)[1]
    a, res, dt, shape = self.operands(op)
    lhs, rhs = (op.lhs, op.rhs)
    sa, sb = shape_of(lhs.type), shape_of(rhs.type)
    trans = bool(op.transpose_b.value.data)
    m0, k0, k1, n0 = matmul_cube_tiles(op)  # pypto-legalize's `m_tile` / `n_tile`; its reader tiles fit these
    self.emit(f"pypto.set_cube_tile_shapes([{m0}, {m0}], [{k0}, {k1}], [{n0}, {n0}])")
    out_dt = "pypto.DT_FP32" if kind == "matmul_acc" else dt
    lhs_ref = self.ref(lhs)
    if len(sa) > 2 and len(sb) == 2:  # pypto wants equal ranks: fold the batch dims into rows
        flat = self.fresh("a")
        self.set_tile(lhs)
        self.emit(f"{flat} = pypto.reshape({lhs_ref}, [{math.prod(sa[:-1])}, {sa[-1]}])")
        n = sb[-2] if trans else sb[-1]
        mm2 = self.fresh("mm")
        self.emit(f"{mm2} = pypto.matmul({flat}, {self.ref(rhs)}, {out_dt}, b_trans={trans})")
        self.emit(f"pypto.set_vec_tile_shapes({self.vec_tile_of([math.prod(sa[:-1]), n], 'f32')})")
        self.emit(f"{mm2} = pypto.reshape({mm2}, {[*sa[:-1], n]})")
        mm = mm2
    else:
        mm = f"pypto.matmul({lhs_ref}, {self.ref(rhs)}, {out_dt}, b_trans={trans})"
    if kind == "matmul_acc":
        tmp = self.fresh("mm")
        self.emit(f"{tmp} = {mm}  # {loc}")
        return self.bind(res, f"pypto.add({a[0]}, {tmp})", loc, op=op)  # its `vec_tile`: pypto-legalize's
    return self.bind(res, mm, loc)


@_rule("broadcast")
def _print_broadcast(self: _Emitter, op: Operation, loc: str | None):
    a, res, dt, shape = self.operands(op)
    return self.bind(res, self._expand(a[0], shape_of(op.input.type), shape), loc, op=op)


@_rule("reshape")
def _print_reshape(self: _Emitter, op: Operation, loc: str | None):  # pypto tiles a reshape by its input
    a, res, dt, shape = self.operands(op)
    # a kernel parameter's buffer (an input, or a table updated in place) is reshaped in place: a view, no
    # copy -- a copy is one task per tile, and a data-dependent gather from it then waits on every one of
    # them (pypto 0.2.0 links each gather task to each copy task: 2048 x 2048 links for the indexer's
    # idx_cmp at B=64, more than the runtime's stitch pool holds, F74001 "Slab alloc null, type=9")
    inplace = ", inplace=True" if flag(op, "inplace") else ""
    self.bind(res, f"pypto.reshape({a[0]}, {shape}{inplace})", loc, tile_of=op.input,
              budget=self.padded_budget(op, "padded_out"))
    if flag(op, "clone"):  # a one-row batched matmul lhs: its own buffer (pypto-legalize; FB4001 otherwise)
        self.set_tile(res)
        self.emit(f"{self.names[res]} = pypto.clone({self.names[res]})")
        return
    return self._materialize_unpadded(op, res)


@_rule("fill_padding")
def _print_fill_padding(self: _Emitter, op: Operation, loc: str | None):  # all of the tile valid
    a, res, dt, shape = self.operands(op)
    return self.bind(res, f"pypto.reshape({a[0]}, {shape}, valid_shape={shape})", loc)


@_rule("transpose")
def _print_transpose(self: _Emitter, op: Operation, loc: str | None):
    a, res, dt, shape = self.operands(op)
    perm = ints_of(op.perm)
    moved = [i for i, p in enumerate(perm) if p != i]
    if len(moved) != 2:
        raise EmitError(f"{loc}: tile.transpose has no pypto 0.2.0 lowering: perm {list(perm)} is not a "
                        "single swap (pypto.transpose swaps two dims)")
    return self.bind(res, f"pypto.transpose({a[0]}, {moved[0]}, {moved[1]})", loc,
                     budget=self.padded_budget(op, "padded_in"))


@_rule("concat")
def _print_concat(self: _Emitter, op: Operation, loc: str | None):
    a, res, dt, shape = self.operands(op)
    return self.bind(res, f"pypto.concat([{', '.join(a)}], {op.axis.value.data})", loc)


@_rule("gather_rows")
def _print_gather_rows(self: _Emitter, op: Operation, loc: str | None):
    a, res, dt, shape = self.operands(op)
    if flag(op, "prefix"):  # emitted where its zero-padded view is, with the valid ids only
        self.note(res, gather=op)
        return
    # a row list gathers in tiles as large as UB holds (a gather task costs the scheduler more than its
    # copy: CSA core 349.8 -> 308.5 us with 128 of 512 picked rows per tile, 256 rows overflow UB); with
    # a multi-dim index, tiles above GATHER_TILE_ELEMS fail pypto 0.2.0's verifier (FB200F: the m=128
    # compressor's [1, 64, 256] tile of a [2, 128, 256] gather at tiny)
    return self.bind(res, f"pypto.index_select({a[0]}, 0, {a[1]})", loc, budget=self._gather_budget(res))


@_rule("topk_pairs")
def _print_topk_pairs(self: _Emitter, op: Operation, loc: str | None):  # pypto.topk: values and ids, descending
    vals, ids = self.fresh("v"), self.fresh("i")
    self.names[op.values], self.names[op.ids] = vals, ids
    sort_rows = op.attributes.get("sort_rows")  # pypto-legalize: the rows of its tile
    self.set_tile(op.scores, rows=sort_rows.value.data if sort_rows is not None else None)
    self.emit(f"{vals}, {ids} = pypto.topk({self.ref(op.scores)}, {op.k.value.data}, -1, True)"
              + (f"  # {loc}" if loc else ""))


@_rule("iota")
def _print_iota(self: _Emitter, op: Operation, loc: str | None):
    a, res, dt, shape = self.operands(op)
    axis = op.axis.value.data
    view_shape = [d if i == axis else 1 for i, d in enumerate(shape)]
    ramp = self.fresh("i")  # each statement runs under a tile of its own rank
    self.emit(f"pypto.set_vec_tile_shapes({self.vec_tile_of([shape[axis]], 'i32')})")
    self.emit(f"{ramp} = pypto.cast(pypto.arange({shape[axis]}), pypto.DT_INT32)")
    self.emit(f"{ramp} = pypto.reshape({ramp}, {view_shape})")
    return self.bind(res, self._expand(ramp, view_shape, shape), loc)


@_rule("full")
def _print_full(self: _Emitter, op: Operation, loc: str | None):
    a, res, dt, shape = self.operands(op)
    buffer = op.attributes.get("buffer")
    if buffer is not None and buffer.data == "output":  # the parallel writes every element: carry the param
        i = op.attributes["output"].value.data
        self.names[res] = self.out_names[i]
        self.out_rows[i] = list(shape)  # declared so (the stage's [batch, seq, ...] is the same bytes)
        return
    if buffer is not None and buffer.data == "scratch":  # the parallel writes every element: value dead
        return self._declare(res)
    if buffer is not None and buffer.data == "local":  # a packed concat's pieces are assembled into it
        name = self.fresh("k")
        self.names[res] = name
        self.set_tile(res)
        self.emit(f"{name} = pypto.tensor({shape}, {dt}, \"{name}\")  # {loc}")
        self.assembled_pieces.append([[[rows.value.data, *shape[1:]], [row.value.data, *(0 for _ in shape[1:])],
                                       bool(padded.value.data)] for rows, row, padded in
                                      (p.data for p in op.attributes["pieces"].data)])
        return
    value = op.value.value.data
    if flag(op, "splat"):  # pypto.where takes the number itself: no tensor filled per use
        self.names[res] = py_float(value)
        return
    value = repr(int(value)) if dtype_of(res.type) in ("i32", "i8") else py_float(value)
    return self.bind(res, f"pypto.full({shape}, {value}, {dt})", loc)


@_rule("fill")
def _print_fill(self: _Emitter, op: Operation, loc: str | None):  # its valid shape is runtime
    a, res, dt, shape = self.operands(op)
    value = repr(int(op.value.value.data)) if dtype_of(res.type) in ("i32", "i8") else py_float(op.value.value.data)
    return self.bind(res, f"pypto.full({shape}, {value}, {dt}, valid_shape=[{', '.join(a)}])", loc)


@_rule("scatter_rows")
def _print_scatter_rows(self: _Emitter, op: Operation, loc: str | None):
    # its ids are evaluated as scalars, not read as a tensor
    return self._scatter_rows(op, [self.ref(op.table), self.ref(op.rows)], loc)


@_rule("view")
def _print_view(self: _Emitter, op: Operation, loc: str | None):
    if flag(op, "prefix"):  # the gather of the valid ids only (pypto-legalize), here
        return self._gather_prefix(self.noted(op.source, "gather"), op.result, self.ref(op.valid[0]), loc)
    a, res, dt, shape = self.operands(op)
    n = len(op.offsets)
    whole = (not len(op.valid) and all(v in self.consts and self.consts[v] == 0 for v in op.offsets)
             and shape_of(op.source.type) == tuple(shape))
    if whole:  # a view of all of a tensor is the tensor
        self.names[res] = a[0]
        return
    offs, valid = a[1:1 + n], a[1 + n:]
    extra = f", valid_shape=[{', '.join(valid)}]" if valid else ""
    self.bind(res, f"pypto.view({a[0]}, {shape}, [{', '.join(offs)}]{extra})", loc, op=op)
    if flag(op, "clone"):
        # pypto 0.2.0 mis-sizes the raw tensor of a rank-3 view read straight by a batched matmul
        # ("Shape size mismatch" at codegen) and fails to simulate some other readers of it; a clone gives
        # the tile its own buffer (a reshape makes one anyway)
        self.emit(f"{self.names[res]} = pypto.clone({self.names[res]})")
    return


@_rule("assemble")
def _print_assemble(self: _Emitter, op: Operation, loc: str | None):
    a, res, dt, shape = self.operands(op)
    n = len(op.offsets)
    offs, valid = a[2:2 + n], a[2 + n:]
    stated = op.attributes.get("vec_tile")  # pypto-legalize's: the tiles its piece was made in
    if stated is not None:
        self.emit(f"pypto.set_vec_tile_shapes({', '.join(map(str, ints_of(stated)))})")
    else:
        self.set_tile(op.tile)
    tile = a[0]
    if flag(op, "clone"):  # all of a kernel parameter's buffer, assembled as a packed concat's piece
        tile = f"pypto.clone({tile})"
    if valid and not flag(op, "valid_tile"):  # write only the valid part: pypto does not carry valid shapes through every op
        tile = self.fresh("v")
        zeros = ", ".join("0" for _ in range(n))
        self.emit(f"{tile} = pypto.view({a[0]}, {list(shape_of(op.tile.type))}, [{zeros}], "
                  f"valid_shape=[{', '.join(valid)}])")
    self.emit(f"pypto.assemble({tile}, [{', '.join(offs)}], {a[1]})" + (f"  # {loc}" if loc else ""))
    self.names[res] = a[1]  # in place: the destination is dead after this op


@_rule("read")
def _print_read(self: _Emitter, op: Operation, loc: str | None):
    a, res, dt, shape = self.operands(op)  # of a kernel parameter (pypto-legalize refuses any other)
    return self._scalar(res, f"{a[0]}[{', '.join(a[1:])}]")


def legalized(module: ModuleOp) -> Operation:
    """The entry function with pypto-legalize's facts: set by the pypto pipeline's last pass, else here (a module
    compiled by another pipeline)."""
    fn = entry_function(module)
    if "pypto_legalized" not in fn.attributes:
        legalize_function(fn)
    return fn


def in_place_outputs(fn: Operation) -> set[str]:
    """Results the IR states are their parameter updated in place (pypto-legalize's `in_out`, from the in_place
    scatters update-in-place marks); the kernel has one in/out parameter for each."""
    return {a.data for a in fn.attributes["in_out"].data} if "in_out" in fn.attributes else set()


def program_output_names(arg_names: list[str], out_names: list[str], in_place: set[str] = frozenset()) -> list[str]:
    """Kernel parameter names of the outputs: an array updated in place is its input parameter; any other in/out
    array (a cache or state named like its input) gets an `_out` parameter of its own."""
    taken = set(arg_names)
    names = []
    for name in out_names:
        if name in in_place:
            names.append(name)
            continue
        new = name
        while new in taken:
            new += "_out"
        taken.add(new)
        names.append(new)
    return names


def py_float(value: float) -> str:
    """A Python literal for a float, including the non-finite ones."""
    return repr(value) if math.isfinite(value) else f"float('{value}')"


def emit_pypto(module: ModuleOp, options: PyptoOptions | None = None) -> str:
    options = options or PyptoOptions()
    fn = legalized(module)
    arg_names = [identifier(a.data, "arg_names entry") for a in fn.attributes["arg_names"].data]
    out_names = program_output_names(arg_names, [identifier(a.data, "result_names entry")
                                                 for a in fn.attributes["result_names"].data], in_place_outputs(fn))
    em = _Emitter(vec_budget=options.vec_tile_elems, out_names=out_names, l1_reuse=options.cube_l1_reuse_setting,
                  nbuffer=options.cube_nbuffer_setting)
    block = fn.body.block
    for arg, name in zip(block.args, arg_names):
        em.names[arg] = name
    ret = block.last_op
    for op in block.ops:
        em.op(op)
    params, dtypes, shapes = [], {}, {}
    result_shapes = {}  # outputs declared as the token rows their loop writes: the stage's shape, for the harness
    for j, (name, t) in enumerate([*zip(arg_names, fn.function_type.inputs.data),
                                   *zip(out_names, fn.function_type.outputs.data)]):
        if name in dtypes:  # an in/out parameter updated in place is declared once
            continue
        shape = list(shape_of(t))
        rows = em.out_rows.get(j - len(arg_names))
        if rows is not None and rows != shape:
            result_shapes[name], shape = shape, rows
        params.append(f"{name}: pypto.Tensor({shape}, {PYPTO_DTYPE[dtype_of(t)]})")
        dtypes[name], shapes[name] = dtype_of(t), shape
    for name, v, copied, budget in zip(out_names, ret.operands, fn.attributes["copy_out"].data,
                                       fn.attributes["copy_out_tile_elems"].data):
        if not copied.value.data:  # written in place by its loop (pypto-legalize `copy_out`)
            continue
        em.set_tile(v, budget.value.data or None)  # rows a loop assembled: with that loop's tile budget
        # pypto 0.2.0 may leave the output untouched for `out[:] = t` (seen for loop-carried and assembled
        # tensors, arguments and index_select results): always store a clone
        em.emit(f"{name}[:] = pypto.clone({em.ref(v)})")
    for name, shape, dtype in em.scratch:  # after the outputs: scratch parameters (pypto-legalize `buffer = "scratch"`)
        params.append(f"{name}: pypto.Tensor({shape}, {PYPTO_DTYPE[dtype]})")
        dtypes[name], shapes[name] = dtype, shape
    for name, shape, dtype in em.host:  # last: constants computed from no input, their values in the program (host.py)
        params.append(f"{name}: pypto.Tensor({shape}, {PYPTO_DTYPE[dtype]})")
        dtypes[name], shapes[name] = dtype, shape
    values = host_constants(module) if em.host else {}
    return _TEMPLATE.get_template("pypto_kernel.py.j2").render(
        stage=code_text(fn.sym_name.data), arg_names=list(dtypes), output_names=out_names, dtypes=dtypes,
        shapes=shapes, result_shapes=result_shapes, scratch_names=[n for n, _, _ in em.scratch],
        host_names=[n for n, _, _ in em.host], host_values=encoded({n: values[n] for n, _, _ in em.host}),
        params=params, body=em.lines,
        assembled_pieces=repr([g for g in em.assembled_pieces if any(padded for _, _, padded in g)]),
        combine_axis=options.combine_axis,
        pass_options=repr(options.pass_options()), runtime_options=repr(options.runtime_options()))
