"""PTO-dialect emitter for ptoas 0.1.1: the body of every token loop (`tile.parallel`, one token per kernel
instance, `rows=1`) becomes one `.pto` kernel; everything before the loop is the host-side part (computed by
the interpreter or the pypto program and passed in as GM arrays).

Contract of a kernel (`KernelPlan`): parameters are GM pointers, one per value the loop body uses from
outside (prepared inputs), one per loop output (the carried tensor, written at the token's rows) and one GM
workspace per value that must pass through GM (matmul operands computed on the vector unit, matmul results —
0.1.1 has no acc->ub move). Token row = `get_block_idx()`. The leading token axis (size 1) is dropped: every
tile is a 2-D matrix; a rank-1 row is [1, n].

Synchronisation is explicit (0.1.1's `--enable-insert-sync` misses most vector ops): the emitter tracks, per
buffer, which pipe last wrote and read it and what each pipe is already ordered after (vector clocks), and
puts `set_flag[P, Q]`/`wait_flag[P, Q]` before an access of Q that another pipe P touched unordered,
`barrier <PIPE_V>` between dependent vector ops and `barrier <PIPE_ALL>` around loop bodies (iterations reuse
buffers). An op that cannot be emitted is refused with its DSL location and the 0.1.1 defect.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from xdsl.dialects import arith, scf
from xdsl.dialects.builtin import IndexType, IntegerAttr, TensorType
from xdsl.ir import Operation, SSAValue

from attnc.errors import AttncError
from attnc.ir.common import op_location
from attnc.ir import entry_function
from attnc.ir.types import dtype_of, shape_of
from attnc.passes._build import defined_inside

PTOAS = "ptoas 0.1.1"
PTO_DTYPES = ("f16", "f32")
MOVE_ONLY_DTYPES = ("i32",)  # loaded, stored and re-viewed (no arithmetic: no i32 tdiv, FLOOR dropped)
_MOVES = ("view", "reshape", "assemble", "yield", "broadcast")

# attnc tile op -> why ptoas 0.1.1 cannot take it (facts: shared notes ptoas-0.1.1-op-probes.md)
DEFECTS = {
    "gather_rows": "no gather by a runtime index ('pto.tmgather' op expects mem, idx and dst to be shaped types; "
                   "tgetval aborts PlanMemory); pto-legalize hoists only gathers whose table and indices come "
                   "from before the loop",
    "read": "tgetval aborts ptoas (PlanMemory Fail : Unrecognized type of Operation touches local buffer!)",
    "cmp": "tcmp is miscompiled (the C++ drops operands and predicate); pto-legalize rewrites float compares only",
    "select": "tsel needs a TCMP bit mask (miscompiled) and i8 masks get int32_t* pointers",
    "and": "i1 tiles are rejected (failed to legalize 'memref.reinterpret_cast')",
    "or": "i1 tiles are rejected (failed to legalize 'memref.reinterpret_cast')",
    "maxs": "tmaxs aborts ptoas (Assertion ... dyn_cast<FloatAttr>)",
    "iota": "tci lowers only one-row ramps (pto-isa: Rows == 1) and attnc computes no i32 values in kernels; "
            "pto-legalize makes loop-invariant ramps a prepared host input",
    "topk": "tsort32 writes its index tile as int32_t where pto-isa needs uint32 (ptoas has no unsigned tile "
            "type) and aborts unless the index tile was written first; tmrgsort gives no indices",
    "floordiv": "'pto.tdiv' op only supports f16/f32 element type, and tcvt drops the FLOOR rounding mode "
                "(always CAST_RINT)",
    "rem": "trem semantics (trunc vs floor) unverified and no integer tdiv",
    "row_min": "trowmin aborts unless its tmp was written first (DenseMap assertion)",
    "scatter_rows": "no store at a runtime row index (the gather's defect, see gather_rows); cache and state "
                    "writes stay on the host side",
}


class PtoEmitError(AttncError):
    """One line: '<DSL location>: --emit pto: ...'."""


def _refuse(op: Operation, what: str) -> PtoEmitError:
    return PtoEmitError(f"{op_location(op)}: --emit pto: '{op.name}' {what}")


# ------------------------------------------------------------------------------------------------ values


@dataclass
class GMArg:
    name: str          # kernel parameter, e.g. %in0, %out0, %ws0
    role: str          # "in" | "out" | "ws"
    dtype: str
    rows: int          # the array as a 2-D row-major matrix
    cols: int
    value_index: int = -1   # index in KernelPlan.outside (in/out)


@dataclass
class GMRef:
    """A tile-shaped region of a GM array (not loaded)."""
    arg: GMArg
    rows: int          # the array viewed as rows x cols, row-major
    cols: int
    row_off: str       # index SSA names
    col_off: str
    shape: tuple[int, int]


@dataclass
class UBRef:
    tile: str
    shape: tuple[int, int]
    dtype: str


@dataclass
class KernelPlan:
    name: str
    text: str
    args: list[GMArg]
    outside: list[SSAValue]      # host-prepared values, in the order of the "in" args
    carried: list[SSAValue]      # the loop's init tensors, in the order of the "out" args
    blocks: int                  # kernel instances (tokens)
    loop: Operation              # the tile.parallel op
    workspace_elems: dict[str, int] = field(default_factory=dict)
    memory: object = None        # codegen.pto_plan.MemoryPlan of its tiles


PIPES = ("MTE2", "MTE1", "M", "FIX", "V", "MTE3")


class _SyncTracker:
    """Which pipe must wait for which before touching a buffer (vector clocks per pipe)."""

    def __init__(self):
        self.clock = {p: 0 for p in PIPES}
        self.know = {p: {q: 0 for q in PIPES} for p in PIPES}
        self.last_write: dict[str, tuple[str, int]] = {}
        self.reads: dict[str, dict[str, int]] = {}

    def full_barrier(self):
        for p in PIPES:
            for q in PIPES:
                self.know[p][q] = self.clock[q]

    def access(self, pipe: str, reads: list[str], writes: list[str]) -> list[str]:
        lines = []
        deps: dict[str, int] = {}
        for b in reads + writes:
            if b in self.last_write:
                q, i = self.last_write[b]
                deps[q] = max(deps.get(q, 0), i)
        for b in writes:
            for q, i in self.reads.get(b, {}).items():
                deps[q] = max(deps.get(q, 0), i)
        for q in PIPES:
            i = deps.get(q, 0)
            if i == 0 or self.know[pipe][q] >= i:
                continue
            if q == pipe:
                # in-order pipes need nothing; dependent vector ops need a PIPE_V barrier
                if pipe == "V":
                    lines.append("pto.barrier <PIPE_V>")
                self.know[pipe][pipe] = self.clock[pipe]
            else:
                lines.append(f"pto.set_flag[<PIPE_{q}>, <PIPE_{pipe}>, <EVENT_ID0>]")
                lines.append(f"pto.wait_flag[<PIPE_{q}>, <PIPE_{pipe}>, <EVENT_ID0>]")
                for r in PIPES:
                    self.know[pipe][r] = max(self.know[pipe][r], self.know[q][r])
                self.know[pipe][q] = self.clock[q]
        self.clock[pipe] += 1
        i = self.clock[pipe]
        if pipe != "V":
            self.know[pipe][pipe] = i
        for b in reads:
            self.reads.setdefault(b, {})[pipe] = i
        for b in writes:
            self.last_write[b] = (pipe, i)
            self.reads[b] = {}
        return lines




def _f32_literal(v: float) -> str:
    """An f32 constant as MLIR text: the f32 value (round to nearest), infinities as their bit patterns."""
    import numpy as np

    with np.errstate(over="ignore"):
        f = float(np.float32(v))
    if math.isinf(f):
        return "0x7F800000" if f > 0 else "0xFF800000"
    if math.isnan(f):
        return "0x7FC00000"
    text = repr(f)
    return text if ("e" in text or "." in text) else f"{f:.1f}"


# ------------------------------------------------------------------------------------------------ emitter


class _KernelEmitter:
    b_tile_bytes = 32768  # a matmul's right-operand tile in L0B (64 KiB on A2/A3)
    def __init__(self, loop: Operation, name: str, sync: bool = True):
        self.loop, self.name, self.sync = loop, name, sync
        self.body = loop.body.block
        self.blocks = shape_of(loop.outs[0].type)[0] if loop.outs else 0
        self.args: list[GMArg] = []
        self.outside: list[SSAValue] = []
        self.carried: list[SSAValue] = []
        self.allocs: list[str] = []
        self.consts: dict[tuple[str, str], str] = {}
        self.const_values: dict[str, tuple] = {}
        self.lines: list[str] = []
        self.indent = 1
        self.env: dict[SSAValue, object] = {}
        self.loaded: list[dict[SSAValue, UBRef]] = [{}]
        self.n = 0
        self.tracker = _SyncTracker()
        self.tile_loc: dict[str, str] = {}
        self.ws_count = 0
        # for the memory plan (codegen/pto/plan.py): every tile access (step, read?) and every loop's steps
        self.accesses: dict[str, list[tuple[int, bool]]] = {}
        self.loop_spans: list[tuple[int, int]] = []
        self.step = 0
        self.tile_info: dict[str, tuple[str, str, tuple[int, int], str]] = {}  # name -> loc, dtype, shape, DSL loc
        self.current: Operation | None = None

    # -- naming and text
    def fresh(self, prefix: str) -> str:
        self.n += 1
        return f"%{prefix}{self.n}"

    def emit(self, line: str):
        self.lines.append("  " * self.indent + line)

    def const(self, value, ty: str = "index") -> str:
        key = (ty, repr(value))
        if key not in self.consts:
            if ty == "index":
                name = f"%c{value}" if value >= 0 else f"%cm{-value}"
            else:
                name = f"%s{len([k for k in self.consts if k[0] != 'index'])}_{ty}"
            self.consts[key] = name
            self.const_values[name] = (value, ty)
        return self.consts[key]

    def const_lines(self) -> list[str]:
        out = []
        for name, (v, ty) in self.const_values.items():
            out.append(f"{name} = arith.constant {v if ty == 'index' else _f32_literal(v)} : {ty}")
        return out

    def sync_for(self, pipe: str, reads: list[str], writes: list[str]):
        # ptoas plans the addresses (and reuses memory between tiles whose lives do not overlap), so any two
        # tiles of one on-chip space may share bytes: order every access to a space, not only to a tile
        def spaces(names):
            return names + sorted({f"space:{self.tile_loc[n]}" for n in names if n in self.tile_loc})

        self.step += 1
        for names, is_read in ((reads, True), (writes, False)):
            for n in names:
                if n in self.tile_loc:
                    self.accesses.setdefault(n, []).append((self.step, is_read))
        lines = self.tracker.access(pipe, spaces(reads), spaces(writes))
        if self.sync:
            for ln in lines:
                self.emit(ln)

    # -- types
    @staticmethod
    def tile_type(loc: str, dtype: str, shape: tuple[int, int]) -> str:
        r, c = shape
        layout = {"ub": ("row_major", "none_box", 512), "mat": ("col_major", "row_major", 512),
                  "left": ("row_major", "row_major", 512), "right": ("row_major", "col_major", 512),
                  "acc": ("col_major", "row_major", 1024)}[loc]
        if loc == "ub" and c == 1 and r > 1:
            layout = ("col_major", "none_box", 512)
        return (f"<loc={loc}, dtype={dtype}, rows={r}, cols={c}, v_row={r}, v_col={c}, blayout={layout[0]}, "
                f"slayout={layout[1]}, fractal={layout[2]}, pad=0>")

    def alloc(self, loc: str, dtype: str, shape: tuple[int, int]) -> UBRef:
        name = self.fresh({"ub": "ub", "mat": "l1_", "left": "l0a_", "right": "l0b_", "acc": "l0c_"}[loc])
        self.emit(f"{name} = pto.alloc_tile : {self.tile_type(loc, dtype, shape)}")  # where its life begins
        self.tile_loc[name] = loc
        self.tile_info[name] = (loc, dtype, shape, op_location(self.current) if self.current is not None else "?")
        ref = UBRef(name, shape, dtype)
        ref.loc = loc  # type: ignore[attr-defined]
        return ref

    def buf(self, ref: UBRef) -> str:
        return f"{ref.tile} : !pto.tile_buf{self.tile_type(getattr(ref, 'loc', 'ub'), ref.dtype, ref.shape)}"

    # -- shapes
    def flat(self, op: Operation, v: SSAValue) -> tuple[int, int]:
        s = shape_of(v.type)
        if len(s) < 2 or s[0] != 1 or len(s) > 3:
            raise _refuse(op, f"has a tile {list(s)}: the PTO path needs one token row per kernel "
                              f"(parallelize-tokens{{rows=1}}) and rank <= 3")
        return (1, s[1]) if len(s) == 2 else (s[1], s[2])

    def gm_flat(self, op: Operation, v: SSAValue) -> tuple[int, int]:
        """The 2-D region of a value that stays in GM (a view or reshape of a GM array): a rank-2 [R, C] is R rows
        of the array (a weight's row block: with one token per kernel no token value has R > 1), else as flat."""
        s = shape_of(v.type)
        return (s[0], s[1]) if len(s) == 2 else self.flat(op, v)

    def check_dtype(self, op: Operation, v: SSAValue, moves: bool = False):
        if isinstance(v.type, TensorType):
            dt = dtype_of(v.type)
            if moves and dt in MOVE_ONLY_DTYPES:
                return
            if dt == "bf16":
                raise _refuse(op, f"is bf16: {PTOAS} rejects bf16 ('Failed to convert element type: bf16'); "
                                  f"compile with --pto-dtype f16")
            if dt == "i1":
                raise _refuse(op, f"has i1 tiles: {PTOAS} rejects them (failed to legalize "
                                  f"'memref.reinterpret_cast'); pto-legalize turns only float compares into masks")
            if dt not in PTO_DTYPES:
                raise _refuse(op, f"has {dt} tiles: {PTOAS} has no integer tdiv, drops tcvt's FLOOR mode and gives "
                                  f"i8 tiles int32_t* pointers; attnc keeps integer math on the host side")

    # -- index values
    def index(self, op: Operation, v: SSAValue) -> str:
        if v in self.env:
            return self.env[v]  # type: ignore[return-value]
        owner = v.owner
        if isinstance(owner, arith.ConstantOp) and isinstance(owner.value, IntegerAttr):
            return self.const(owner.value.value.data)
        raise _refuse(op, "uses an index computed outside the token loop (pass it as a prepared input)")

    def add_index(self, a: str, b: str) -> str:
        if b == "%c0":
            return a
        if a == "%c0":
            return b
        r = self.fresh("i")
        self.emit(f"{r} = arith.addi {a}, {b} : index")
        return r

    def mul_index(self, a: str, k: int) -> str:
        if k == 1 or a == "%c0":
            return a
        r = self.fresh("i")
        self.emit(f"{r} = arith.muli {a}, {self.const(k)} : index")
        return r

    # -- GM
    def outside_arg(self, v: SSAValue) -> GMArg:
        for a in self.args:
            if a.role == "in" and self.outside[a.value_index] is v:
                return a
        s = shape_of(v.type)
        rows = math.prod(s[:-1]) if len(s) > 1 else 1
        a = GMArg(f"%in{len(self.outside)}", "in", dtype_of(v.type), rows, s[-1], len(self.outside))
        self.outside.append(v)
        self.args.append(a)
        return a

    def gm_view(self, op: Operation, arg: GMArg, dims: tuple[int, ...], offsets: list[str],
                tile: tuple[int, ...]) -> GMRef:
        """The region `tile` at `offsets` of an array of shape `dims`, as a 2-D ref."""
        if any(t != 1 for t in tile[:-2]):
            raise _refuse(op, f"views a {list(tile)} tile: only the last two axes may exceed 1")
        row = "%c0"
        for i in range(len(dims) - 1):
            row = self.add_index(row, self.mul_index(offsets[i], math.prod(dims[i + 1:-1])))
        shape = (1, tile[-1]) if len(tile) == 1 else (tile[-2], tile[-1])
        return GMRef(arg, math.prod(dims[:-1]) if len(dims) > 1 else 1, dims[-1], row, offsets[-1], shape)

    def subview(self, ref: GMRef, transposed: bool = False) -> str:
        t = ref.arg.dtype
        tv, sv = self.fresh("tv"), self.fresh("sv")
        r, c = ref.shape
        if not transposed:
            self.emit(f"{tv} = pto.make_tensor_view {ref.arg.name}, shape = [{self.const(ref.rows)}, "
                      f"{self.const(ref.cols)}] strides = [{self.const(ref.cols)}, %c1] : !pto.tensor_view<2x{t}>")
            self.emit(f"{sv} = pto.subview {tv}, offsets = [{ref.row_off}, {ref.col_off}], sizes = "
                      f"[{self.const(r)}, {self.const(c)}] : !pto.tensor_view<2x{t}> -> !pto.tile_view<{r}x{c}x{t}>")
            return f"{sv} : !pto.tile_view<{r}x{c}x{t}>"
        self.const(1)
        self.emit(f"{tv} = pto.make_tensor_view {ref.arg.name}, shape = [{self.const(ref.cols)}, "
                  f"{self.const(ref.rows)}] strides = [%c1, {self.const(ref.cols)}] : !pto.tensor_view<2x{t}>")
        self.emit(f"{sv} = pto.subview {tv}, offsets = [{ref.col_off}, {ref.row_off}], sizes = "
                  f"[{self.const(c)}, {self.const(r)}] : !pto.tensor_view<2x{t}> -> !pto.tile_view<{c}x{r}x{t}>")
        return f"{sv} : !pto.tile_view<{c}x{r}x{t}>"

    def load(self, ref: GMRef, loc: str = "ub", transposed: bool = False) -> UBRef:
        # one load per GM region and space in a scope (two views of one region, or one operand of two matmuls)
        key = ("load", ref.arg.name, ref.rows, ref.cols, ref.row_off, ref.col_off, ref.shape, loc, transposed)
        for scope in reversed(self.loaded):
            if key in scope:
                return scope[key]
        shape = (ref.shape[1], ref.shape[0]) if transposed else ref.shape
        dst = self.alloc(loc, ref.arg.dtype, shape)
        self.const(1)
        view = self.subview(ref, transposed)
        self.sync_for("MTE2", [ref.arg.name], [dst.tile])
        self.emit(f"pto.tload ins({view}) outs({self.buf(dst)})")
        self.loaded[-1][key] = dst
        return dst

    def store(self, src: UBRef, ref: GMRef):
        for scope in self.loaded:  # loads of this array are stale
            for k in [k for k in scope if isinstance(k, tuple) and k[1] == ref.arg.name]:
                del scope[k]
        self.const(1)
        view = self.subview(ref)
        pipe = "FIX" if getattr(src, "loc", "ub") == "acc" else "MTE3"
        self.sync_for(pipe, [src.tile], [ref.arg.name])
        self.emit(f"pto.tstore ins({self.buf(src)}) outs({view})")

    def workspace(self, dtype: str, shape: tuple[int, int]) -> GMRef:
        r, c = shape
        arg = GMArg(f"%ws{self.ws_count}", "ws", dtype, self.blocks * r, c)
        self.ws_count += 1
        self.args.append(arg)
        return GMRef(arg, arg.rows, c, self.mul_index(self.row, r), "%c0", shape)

    # -- operands
    def placed(self, op: Operation, v: SSAValue):
        """Where v is (a UB tile or a GM region); a value from outside the loop is its whole GM array."""
        ref = self.env.get(v)
        if ref is None:
            if defined_inside(self.loop, v):
                raise _refuse(op, "uses a value the PTO emitter has not placed")
            s = shape_of(v.type)
            ref = self.gm_view(op, self.outside_arg(v), s, ["%c0"] * len(s), s)
            self.env[v] = ref
        return ref

    def ub(self, op: Operation, v: SSAValue) -> UBRef:
        ref = self.placed(op, v)
        if isinstance(ref, UBRef):
            return ref
        for scope in reversed(self.loaded):
            if v in scope:
                return scope[v]
        self.check_dtype(op, v, moves=op.name.split(".")[-1] in _MOVES)
        u = self.load(ref)
        self.loaded[-1][v] = u
        return u

    def gm(self, op: Operation, v: SSAValue) -> GMRef:
        ref = self.placed(op, v)
        if isinstance(ref, GMRef):
            return ref
        ws = self.workspace(ref.dtype, ref.shape)
        self.store(ref, ws)
        self.env[v] = ws
        self.loaded[-1][v] = ref
        return ws

    def vec(self, op: Operation, pto: str, srcs: list[UBRef], result: SSAValue, scalars: list[tuple[str, str]] = (),
            style: str = "list") -> UBRef:
        dst = self.alloc("ub", dtype_of(result.type), self.flat(op, result))
        self.vec_into(pto, srcs, dst, scalars, style)
        self.env[result] = dst
        return dst

    def vec_into(self, pto: str, srcs: list[UBRef], dst: UBRef, scalars=(), style: str = "list"):
        self.sync_for("V", [s.tile for s in srcs], [dst.tile])
        names = [s.tile for s in srcs] + [s for s, _ in scalars]
        types = [f"!pto.tile_buf{self.tile_type('ub', s.dtype, s.shape)}" for s in srcs] + [t for _, t in scalars]
        if style == "pair":  # tmax/tmin/tmul spelling: ins(%a : T, %b : T)
            ins = ", ".join(f"{n} : {t}" for n, t in zip(names, types))
        else:
            ins = f"{', '.join(names)} : {', '.join(types)}"
        self.emit(f"pto.{pto} ins({ins}) outs({self.buf(dst)})")

    # -- ops
    def run(self) -> KernelPlan:
        self.row = self.fresh("row")
        blk = self.fresh("blk")
        self.emit(f"{blk} = pto.get_block_idx")
        self.emit(f"{self.row} = arith.index_cast {blk} : i64 to index")
        self.env[self.body.args[0]] = self.row
        for a, init in zip(self.body.args[1:], self.loop.inits):
            s = shape_of(init.type)
            arg = GMArg(f"%out{len(self.carried)}", "out", dtype_of(init.type), math.prod(s[:-1]), s[-1],
                        len(self.carried))
            self.carried.append(init)
            self.args.append(arg)
            self.env[a] = ("out", arg, s)
        self.block(self.body)
        self.emit("pto.barrier <PIPE_ALL>")
        return self.finish()

    def block(self, block):
        for op in block.ops:
            self.op(op)

    def op(self, op: Operation):
        self.current = op
        name = op.name
        kind = name.split(".", 1)[1] if name.startswith("tile.") else None
        if isinstance(op, arith.ConstantOp):
            if isinstance(op.result.type, IndexType):
                self.env[op.result] = self.const(op.value.value.data)
            return
        if isinstance(op, (arith.AddiOp, arith.MuliOp)):
            a, b = self.index(op, op.lhs), self.index(op, op.rhs)
            r = self.fresh("i")
            self.emit(f"{r} = {op.name} {a}, {b} : index")
            self.env[op.result] = r
            return
        if isinstance(op, arith.SubiOp):
            raise _refuse(op, f"cannot be emitted: {PTOAS} lowers only arith.addi/muli/cmpi/index_cast "
                              "('failed to legalize operation arith.subi')")
        if isinstance(op, scf.ForOp):
            return self.for_loop(op)
        if kind is None:
            raise _refuse(op, f"cannot be emitted: {PTOAS} lowers only arith.constant/addi/muli/cmpi/index_cast "
                              "and scf.for/if without results")
        for v in (*op.operands, *op.results):
            if kind not in ("view", "assemble", "yield"):
                self.check_dtype(op, v, moves=kind in _MOVES)
        handler = getattr(self, f"op_{kind}", None)
        if handler is None:
            if kind in _UNARY:
                return self.vec(op, _UNARY[kind], [self.ub(op, op.input)], op.result)
            if kind in _BINARY:
                pto, style = _BINARY[kind]
                return self.vec(op, pto, [self.ub(op, op.lhs), self.ub(op, op.rhs)], op.result, style=style)
            if kind.startswith("row_expand_"):
                return self.row_expand(op, kind[len("row_expand_"):])
            if kind.startswith("col_expand_"):
                return self.col_expand(op, kind[len("col_expand_"):])
            why = DEFECTS.get(kind, "has no PTO lowering in attnc's emitter")
            raise _refuse(op, f"cannot be emitted: {PTOAS}: {why}")
        handler(op)

    def op_view(self, op):
        src = op.source
        if op.valid:
            raise _refuse(op, "has a runtime valid shape: not emitted yet (needs v_col=? tiles)")
        offs = [self.index(op, o) for o in op.offsets]
        ref = self.env.get(src)
        tile = shape_of(op.result.type)
        if isinstance(ref, tuple):  # rows this kernel wrote to its output, read back (after a row-chunk loop)
            _, arg, dims = ref
            self.env[op.result] = self.gm_view(op, arg, dims, offs, tile)
            return
        if ref is None and not defined_inside(self.loop, src):
            self.check_dtype(op, src, moves=True)
            self.env[op.result] = self.gm_view(op, self.outside_arg(src), shape_of(src.type), offs, tile)
            return
        if isinstance(ref, UBRef) and not (all(o == "%c0" for o in offs) and shape_of(src.type) == tile):
            ref = self.gm(op, src)  # a sub-tile of an on-chip value: through a GM workspace (no textract run)
        if isinstance(ref, GMRef):
            if any(o != "%c0" for o in offs[:-2]):
                raise _refuse(op, "offsets a unit axis of a tile")
            self.env[op.result] = GMRef(ref.arg, ref.rows, ref.cols, self.add_index(ref.row_off, offs[-2]),
                                        self.add_index(ref.col_off, offs[-1]), self.gm_flat(op, op.result))
            return
        if isinstance(ref, UBRef) and all(o == "%c0" for o in offs) and shape_of(src.type) == tile:
            self.env[op.result] = ref
            return
        raise _refuse(op, f"cannot be emitted: a sub-tile of an on-chip tile needs textract/subset "
                          f"(not run under {PTOAS}); only views of GM arrays are emitted")

    def op_reshape(self, op):
        src = self.placed(op, op.input)
        if isinstance(src, UBRef):
            src = self.gm(op, op.input)
        new = self.gm_flat(op, op.result)
        if new == src.shape:
            self.env[op.result] = src
            return
        if (new[0] == 1 or new[1] == 1) and (src.shape[0] == 1 or src.shape[1] == src.cols):
            # a contiguous region as a row or a column: linear offset row_off * cols + col_off of the array
            # viewed as [1, n] or [n, 1]
            lin = self.add_index(self.mul_index(src.row_off, src.cols), src.col_off)
            total = src.rows * src.cols
            self.env[op.result] = (GMRef(src.arg, total, 1, lin, "%c0", new) if new[1] == 1
                                   else GMRef(src.arg, 1, total, "%c0", lin, new))
            return
        if src.col_off != "%c0" or src.shape[1] != src.cols or src.cols % new[1]:
            raise _refuse(op, "reshapes a region that is not whole rows of its GM array")
        k = src.cols // new[1]
        self.env[op.result] = GMRef(src.arg, src.rows * k, new[1], self.mul_index(src.row_off, k), "%c0", new)

    def op_concat(self, op):
        """Through GM: each part is stored at its offset in a workspace that is then the result."""
        rank = len(shape_of(op.result.type))
        axis = op.axis.value.data
        if axis < rank - 2 or rank > 3:
            raise _refuse(op, f"concatenates along axis {axis} of a rank-{rank} tile")
        out = self.flat(op, op.result)
        ws = self.workspace(dtype_of(op.result.type), out)
        at = 0
        for part in op.inputs:
            shape = self.flat(op, part)
            along_cols = axis == rank - 1
            ref = GMRef(ws.arg, ws.rows, ws.cols, ws.row_off if along_cols else self.add_index(ws.row_off, self.const(at)),
                        self.const(at) if along_cols else "%c0", shape)
            self.store(self.ub(op, part), ref)
            at += shape[1] if along_cols else shape[0]
        self.env[op.result] = ws

    def op_transpose(self, op):
        """ttrans is miscompiled in 0.1.1 (the C++ never writes the destination): through GM, read back with a
        transposed (strides [1, n]) view."""
        from attnc.ir.common import ints_of

        perm = ints_of(op.perm)
        if len(perm) != 3 or tuple(perm) != (0, 2, 1):
            raise _refuse(op, f"cannot be emitted: {PTOAS}: ttrans is miscompiled and only the last two axes of "
                              f"one token's tile go through a transposed GM view (perm {list(perm)})")
        ref = self.gm(op, op.input)
        self.env[op.result] = self.load(ref, "ub", transposed=True)

    def op_full(self, op):
        v = op.value.value.data
        dst = self.alloc("ub", dtype_of(op.result.type), self.flat(op, op.result))
        self.vec_into("texpands", [], dst, [(self.const(float(v), "f32"), "f32")])
        self.env[op.result] = dst

    def op_broadcast(self, op):
        s_in, s_out = self.flat(op, op.input), self.flat(op, op.result)
        if s_in == s_out:
            self.env[op.result] = self.placed(op, op.input)
            return
        src = self.ub(op, op.input)
        if s_in == (s_out[0], 1):
            return self.vec(op, "trowexpand", [src], op.result)
        if s_in == (1, s_out[1]):
            return self.vec(op, "tcolexpand", [src], op.result)
        raise _refuse(op, f"broadcasts {list(s_in)} to {list(s_out)}: only row or column vectors expand")

    def op_cast(self, op):
        if op.rounding.data != "rint":
            raise _refuse(op, f"cannot be emitted: {PTOAS} drops tcvt rounding modes (always CAST_RINT), "
                              f"this cast rounds '{op.rounding.data}'")
        if dtype_of(op.input.type) == dtype_of(op.result.type):
            self.env[op.result] = self.ub(op, op.input)
            return
        self.vec(op, "tcvt", [self.ub(op, op.input)], op.result)

    def scalar_op(self, op, pto: str):
        src = self.ub(op, op.input)
        dt = dtype_of(op.input.type)
        sty = "f16" if (pto == "tadds" and dt == "f16") else "f32"
        self.vec(op, pto, [src], op.result, [(self.const(float(op.scalar.value.data), sty), sty)])

    def op_muls(self, op):
        self.scalar_op(op, "tmuls")

    def op_adds(self, op):
        self.scalar_op(op, "tadds")

    def op_neg(self, op):  # ptoas 0.1.1 has no tneg: x * -1 is exact
        self.vec(op, "tmuls", [self.ub(op, op.input)], op.result, [(self.const(-1.0, "f32"), "f32")])

    def op_row_sum(self, op):
        self.vec(op, "trowsum", [self.ub(op, op.input)], op.result)

    def op_row_max(self, op):
        self.vec(op, "trowmax", [self.ub(op, op.input)], op.result)

    def row_expand(self, op, k):
        if k in ("sub", "mul", "div"):
            return self.vec(op, f"trowexpand{k}", [self.ub(op, op.lhs), self.ub(op, op.rhs)], op.result)
        full = self.alloc("ub", dtype_of(op.result.type), self.flat(op, op.result))
        self.vec_into("trowexpand", [self.ub(op, op.rhs)], full)
        pto, style = _BINARY[k]
        return self.vec(op, pto, [self.ub(op, op.lhs), full], op.result, style=style)

    def col_expand(self, op, k):
        full = self.alloc("ub", dtype_of(op.result.type), self.flat(op, op.result))
        self.vec_into("tcolexpand", [self.ub(op, op.rhs)], full)
        pto, style = _BINARY[k]
        return self.vec(op, pto, [self.ub(op, op.lhs), full], op.result, style=style)

    def begin_loop(self, lb: str, ub: str) -> tuple[str, int]:
        """`scf.for` with a PIPE_ALL barrier before it and at the end of its body (iterations reuse buffers)."""
        iv = self.fresh("j")
        self.emit("pto.barrier <PIPE_ALL>")
        self.tracker.full_barrier()
        self.emit(f"scf.for {iv} = {lb} to {ub} step %c1 {{")
        self.const(1)
        self.indent += 1
        self.loaded.append({})
        return iv, self.step + 1

    def end_loop(self, first_step: int):
        self.loaded.pop()
        self.loop_spans.append((first_step, self.step))
        self.emit("pto.barrier <PIPE_ALL>")
        self.tracker.full_barrier()
        self.indent -= 1
        self.emit("}")

    def matmul_gm(self, op, a: GMRef, b: GMRef, trans: bool) -> GMRef:
        """a @ b (b given as [N, K] when trans) into an f32 GM workspace, in tiles that fit L0A/L0B/L0C:
        N in tiles of `nt` columns (an scf.for), K in chunks of `kt` (the first by tmatmul, the rest accumulated
        in L0C by tmatmul.acc in an scf.for). 0.1.1 has no acc -> ub move, so the result goes through GM."""
        m, k = a.shape
        n = b.shape[0] if trans else b.shape[1]
        cap = self.b_tile_bytes // 2  # f16 elements of one right-operand tile (half of L0B: room for the next)
        nt = n if n * min(k, 512) <= cap else min(n, 256, max(16, cap // 512))
        kt = k if k * nt <= cap else max(16, cap // nt)
        kt = min(kt, max(16, 32768 // m))  # left tile [m, kt] f16 within L0A; the memory plan checks all three
        if n % nt or k % kt:
            raise _refuse(op, f"is a [{m},{k}]x[{k},{n}] matmul that attnc does not tile for L0A/L0B/L0C "
                              f"(tiles of {kt} x {nt} do not divide it)")
        out = self.workspace("f32", (m, n))

        def chunk(ref: GMRef, r: str, c: str, shape) -> GMRef:
            return GMRef(ref.arg, ref.rows, ref.cols, self.add_index(ref.row_off, r), self.add_index(ref.col_off, c),
                         shape)

        def step(kv: str, nv: str, acc: UBRef | None) -> UBRef:
            ka = self.mul_index(kv, kt) if kv != "%c0" else "%c0"
            na = self.mul_index(nv, nt) if nv != "%c0" else "%c0"
            a1 = self.load(chunk(a, "%c0", ka, (m, kt)), "mat")
            b1 = (self.load(chunk(b, na, ka, (nt, kt)), "mat", transposed=True) if trans
                  else self.load(chunk(b, ka, na, (kt, nt)), "mat"))
            a0 = self.alloc("left", a1.dtype, a1.shape)
            b0 = self.alloc("right", b1.dtype, b1.shape)
            for src, dst in ((a1, a0), (b1, b0)):
                self.sync_for("MTE1", [src.tile], [dst.tile])
                self.emit(f"pto.tmov ins({self.buf(src)}) outs({self.buf(dst)})")
            lt = f"!pto.tile_buf{self.tile_type('left', a0.dtype, a0.shape)}"
            rt = f"!pto.tile_buf{self.tile_type('right', b0.dtype, b0.shape)}"
            if acc is None:
                acc = self.alloc("acc", "f32", (m, nt))
                self.sync_for("M", [a0.tile, b0.tile], [acc.tile])
                self.emit(f"pto.tmatmul ins({a0.tile}, {b0.tile} : {lt}, {rt}) outs({self.buf(acc)})")
            else:
                self.sync_for("M", [acc.tile, a0.tile, b0.tile], [acc.tile])
                at = f"!pto.tile_buf{self.tile_type('acc', 'f32', acc.shape)}"
                self.emit(f"pto.tmatmul.acc ins({acc.tile}, {a0.tile}, {b0.tile} : {at}, {lt}, {rt}) "
                          f"outs({self.buf(acc)})")
            return acc

        nv, n_first = self.begin_loop("%c0", self.const(n // nt)) if n > nt else ("%c0", None)
        acc = step("%c0", nv, None)
        if k > kt:
            kv, k_first = self.begin_loop("%c1", self.const(k // kt))
            step(kv, nv, acc)
            self.end_loop(k_first)
        self.store(acc, chunk(out, "%c0", self.mul_index(nv, nt) if nv != "%c0" else "%c0", (m, nt)))
        if n_first is not None:
            self.end_loop(n_first)
        return out

    def op_matmul(self, op):
        ws = self.matmul_gm(op, self.gm(op, op.lhs), self.gm(op, op.rhs), op.transpose_b.value.data)
        if dtype_of(op.result.type) == "f32":
            self.env[op.result] = ws
            return
        # a narrow result: the f32 sum rounded once more on the vector unit (as the interpreter does)
        self.vec(op, "tcvt", [self.load(ws)], op.result)

    def op_matmul_acc(self, op):
        """acc + a @ b: the product in L0C (through GM), added on the vector unit in f32."""
        if dtype_of(op.result.type) != "f32" or dtype_of(op.acc.type) != "f32":
            raise _refuse(op, "accumulates in a dtype other than f32")
        ws = self.matmul_gm(op, self.gm(op, op.lhs), self.gm(op, op.rhs), op.transpose_b.value.data)
        self.vec(op, "tadd", [self.ub(op, op.acc), self.load(ws)], op.result)

    def op_assemble(self, op):
        dest = self.env.get(op.dest)
        if not (isinstance(dest, tuple) and dest[0] == "out"):
            raise _refuse(op, "assembles into a tensor that is not the loop's output")
        if op.valid:
            raise _refuse(op, "has a runtime valid shape: not emitted yet")
        _, arg, dims = dest
        offs = [self.index(op, o) for o in op.offsets]
        ref = self.gm_view(op, arg, dims, offs, shape_of(op.tile.type))
        self.store(self.ub(op, op.tile), ref)
        self.env[op.result] = dest

    def op_yield(self, op):
        for v, a in zip(op.values, self.body.args[1:]):
            if self.env.get(v) != self.env.get(a):
                raise _refuse(op, "yields a tensor other than the assembled loop output")

    def for_loop(self, op: scf.ForOp):
        lb, ub, st = (self.index(op, v) for v in (op.lb, op.ub, op.step))
        carries = []
        for init, arg in zip(op.iter_args, op.body.block.args[1:]):
            if not isinstance(init.type, TensorType):
                raise _refuse(op, "carries a non-tensor value")
            if isinstance(self.env.get(init), tuple):  # a loop output (rows assembled in GM): no copy
                self.env[arg] = self.env[init]
                carries.append(self.env[init])
                continue
            src = self.ub(op, init)
            buf = self.alloc("ub", src.dtype, src.shape)
            self.vec_into("tmuls", [src], buf, [(self.const(1.0, "f32"), "f32")])  # copy (x*1 is exact)
            self.env[arg] = buf
            carries.append(buf)
        if st != "%c1":
            raise _refuse(op, "steps by more than 1")
        iv, first_step = self.begin_loop(lb, ub)
        self.env[op.body.block.args[0]] = iv
        for inner in op.body.block.ops:
            if isinstance(inner, scf.YieldOp):
                for v, buf in zip(inner.operands, carries):
                    if isinstance(buf, tuple):
                        if self.env.get(v) != buf:
                            raise _refuse(inner, "yields a tensor other than the assembled loop output")
                        continue
                    src = self.ub(inner, v)
                    if src.tile != buf.tile:
                        self.carry_update(src, buf)
            else:
                self.op(inner)
        self.end_loop(first_step)
        for r, buf in zip(op.results, carries):
            self.env[r] = buf

    def carry_update(self, src: UBRef, buf: UBRef):
        """The loop-carried buffer takes this iteration's value (x*1 is an exact copy)."""
        self.vec_into("tmuls", [src], buf, [(self.const(1.0, "f32"), "f32")])

    def finish(self) -> KernelPlan:
        params = ", ".join(f"{a.name}: !pto.ptr<{a.dtype}>" for a in self.args)
        head = [f"func.func @{self.name}({params}) {{"]
        body = ["  " + ln for ln in self.const_lines()] + ["  " + ln for ln in self.allocs] + self.lines
        text = "\n".join(["module {", *["  " + ln for ln in head], *["  " + ln for ln in body], "    return",
                          "  }", "}"]) + "\n"
        from .plan import plan_memory

        return KernelPlan(self.name, text, list(self.args), list(self.outside), list(self.carried), self.blocks,
                          self.loop, {a.name: a.rows * a.cols for a in self.args if a.role == "ws"},
                          plan_memory(self.accesses, self.loop_spans, self.tile_info))


_UNARY = {"exp": "texp", "sqrt": "tsqrt", "rsqrt": "trsqrt", "recip": "trecip", "relu": "trelu", "abs": "tabs"}
_BINARY = {"add": ("tadd", "list"), "sub": ("tsub", "list"), "div": ("tdiv", "list"), "mul": ("tmul", "pair"),
           "max": ("tmax", "pair"), "min": ("tmin", "pair")}


def token_loops(module) -> list[Operation]:
    fn = entry_function(module)
    return [op for op in fn.body.block.ops if op.name == "tile.parallel"]


KernelEmitter = _KernelEmitter


def emit_pto(module, stage: str, *, emitter: type = _KernelEmitter) -> list[KernelPlan]:
    """One KernelPlan per token loop of the (pto-pipeline) tile module; raises PtoEmitError on the first op
    that ptoas 0.1.1 cannot take."""
    import re

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", stage):  # it names the kernels and their files
        raise PtoEmitError(f"--emit pto: function name {stage[:40]!r} is not an identifier of at most 64 characters")
    loops = token_loops(module)
    if not loops:
        raise PtoEmitError(f"{stage}: --emit pto: no token loop (tile.parallel) to emit; run the pto pipeline")
    _refuse_int8(loops)
    _refuse_defects(loops)
    plans = [emitter(loop, f"{stage}_k{i}").run() for i, loop in enumerate(loops)]
    for plan in plans:  # nothing overflowing is written or handed to ptoas
        why = plan.memory.overflow_message()
        if why is not None:
            raise PtoEmitError(f"{plan.memory.overflow()[1].where}: --emit pto: {plan.name}: {why}; no row chunk "
                               f"of its token loop fits (pto-plan-memory)")
    return plans


def _refuse_int8(loops) -> None:
    """W8A8 (quantize-w8a8) needs i8 tiles: the first op with one is refused by name, before any other blocker."""
    for loop in loops:
        for op in loop.body.walk():
            if op.name.startswith("tile.") and any(isinstance(v.type, TensorType) and dtype_of(v.type) == "i8"
                                                   for v in (*op.operands, *op.results)):
                raise _refuse(op, f"has i8 tiles (W8A8): {PTOAS} emits i8 tiles as int32_t, so int8 codes and an "
                                  f"int8 matmul cannot be expressed; compile with quant=none for PTO")


def _refuse_defects(loops) -> None:
    """An op kind ptoas 0.1.1 cannot express (DEFECTS) is refused by name, the first in program order, with the
    others of the kernel listed: the stage's real blockers, not the first op with an integer tile."""
    bad = [op for loop in loops for op in loop.body.walk() if op.name.startswith("tile.") and op.name[5:] in DEFECTS]
    if bad:
        more = sorted({f"{op.name} ({op_location(op)})" for op in bad[1:] if op.name != bad[0].name})
        also = f"; also blocked: {', '.join(more)}" if more else ""
        raise _refuse(bad[0], f"cannot be emitted: {PTOAS}: {DEFECTS[bad[0].name[5:]]}{also}")


def pto_blockers(module) -> list[tuple[str, str, str]]:
    """Every op in the token loops that the emitter refuses by kind or dtype, as (location, op, reason) —
    a static scan, so that a stage's whole list of blockers can be stated (the emitter stops at the first)."""
    out = []
    for loop in token_loops(module):
        for op in loop.body.walk():
            if op is loop or not op.name.startswith("tile."):
                continue
            kind = op.name.split(".", 1)[1]
            dts = {dtype_of(v.type) for v in (*op.operands, *op.results) if isinstance(v.type, TensorType)}
            if kind in DEFECTS:
                out.append((op_location(op), op.name, DEFECTS[kind]))
            elif "bf16" in dts:
                out.append((op_location(op), op.name, "bf16 ('Failed to convert element type: bf16')"))
            elif dts & {"i1", "i8", "i32"} - ({"i32"} if kind in _MOVES else set()) and kind not in ("assemble", "yield"):
                out.append((op_location(op), op.name, f"{'/'.join(sorted(dts & {'i1', 'i8', 'i32'}))} tiles"))
    return out
