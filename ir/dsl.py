"""The stage DSL: a decorated Python function over typed tensor parameters builds tensor-level (`attn`) IR.

    @stage("my_stage", outputs=("y",))
    def my_stage(cfg, x: In("tokens", "dim"), w: In("dim", "dim")):
        return {"y": matmul(x, w, out="bf16")}

Shape symbols are config keys (or derived sizes) resolved at build time; every op records the DSL source line
that created it (attribute `loc`, "kernels_src/file.py:LINE") for diagnostics.
"""
from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from xdsl.builder import Builder
from xdsl.dialects import func
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, StringAttr, TensorType, i64
from xdsl.ir import Block, Region, SSAValue
from xdsl.rewriter import InsertPoint

from .common import LOC_ATTR, bool_attr, float_attr, int_array, str_attr
from .tensor_dialect import ATTN
from .types import DTYPES, dtype_of, shape_of, tensor_type

from attnc.errors import AttncError

_HERE = os.path.dirname(os.path.abspath(__file__))
_PKG_ROOT = os.path.dirname(_HERE)


class DSLError(AttncError):
    """A stage uses the DSL wrongly (shape/dtype mismatch ...); message starts with file:line."""


@dataclass(frozen=True)
class In:
    """A tensor parameter: shape symbols (config keys, derived sizes or ints) and a dtype."""

    dims: tuple
    dtype: str = "bf16"
    # a weight [K, N] that a quantised checkpoint (`quant=w8a8`) gives as i8 with f32 per-channel scales
    # `<name>_scale` [N] (stage_params)
    quantizable: bool = False

    def __init__(self, *dims, dtype: str = "bf16", quantizable: bool = False):
        object.__setattr__(self, "dims", tuple(dims))
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "quantizable", quantizable)

    def resolve(self, sizes: dict) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else int(sizes[d]) for d in self.dims)


@dataclass
class StageDef:
    name: str
    fn: Callable
    params: dict[str, In]
    outputs: tuple[str, ...]
    doc: str = ""
    needs: Callable[[dict], str | None] = field(default=lambda cfg: None)
    # the stage's own view of a config (e.g. a layer kind fixes its compression ratio); must be idempotent
    configure: Callable[[dict], dict] = field(default=lambda cfg: cfg)


def stage_config(stage_def: StageDef, cfg: dict) -> dict:
    return stage_def.configure(cfg)


STAGES: dict[str, StageDef] = {}


def stage(name: str, outputs: Sequence[str], needs: Callable[[dict], str | None] | None = None,
          configure: Callable[[dict], dict] | None = None, params: dict[str, In] | None = None):
    """Register a stage. `needs(cfg)` may return a reason why a config cannot build this stage; `configure(cfg)`
    gives the stage's view of a config. Parameters come from the function's `In(...)` annotations, or from
    `params` for a function that takes them as keyword arguments."""

    def deco(fn):
        if params is None:
            sig = inspect.signature(fn)
            found = {p.name: p.annotation for p in list(sig.parameters.values())[1:]
                     if p.kind is not inspect.Parameter.VAR_KEYWORD}  # **scales: a quantised weight's scales
        else:
            found = dict(params)
        for pname, ann in found.items():
            if not isinstance(ann, In):
                raise TypeError(f"stage {name}: parameter {pname} needs an In(...) annotation")
        STAGES[name] = StageDef(name, fn, found, tuple(outputs), (fn.__doc__ or "").strip().splitlines()[0]
                                if fn.__doc__ else "", needs or (lambda cfg: None), configure or (lambda cfg: cfg))
        return fn

    return deco


# --------------------------------------------------------------------------------------------------
# building


class _Ctx:
    builder: Builder | None = None
    tokens: int | None = None
    token_dims: tuple[int, int] | None = None  # (batch, seq) of the stage being built; (1, T) when packed
    packed: bool = False  # the packed token-major layout: per-token data is [T, ...] outside token work too
    loc: str | None = None  # set while a pass rewrites an op: new ops inherit its DSL location


def _caller_location() -> str:
    if _Ctx.loc is not None:
        return _Ctx.loc
    frame = inspect.currentframe()
    while frame is not None and os.path.abspath(frame.f_code.co_filename) == os.path.abspath(__file__):
        frame = frame.f_back
    if frame is None:
        return "<unknown>"
    path = os.path.abspath(frame.f_code.co_filename)
    rel = os.path.relpath(path, _PKG_ROOT) if path.startswith(_PKG_ROOT) else os.path.basename(path)
    return f"{rel}:{frame.f_lineno}"


def _fail(msg: str):
    raise DSLError(f"{_caller_location()}: {msg}")


class Tensor:
    """A DSL value: an SSA value of ranked tensor type, with operators that build `attn` ops."""

    def __init__(self, value: SSAValue, token_positions_of: int | None = None):
        self.value = value
        # set only on tensors made by token_positions(): the number of tokens they give positions for
        self.token_positions_of = token_positions_of

    @property
    def shape(self) -> tuple[int, ...]:
        return shape_of(self.value.type)

    @property
    def dtype(self) -> str:
        return dtype_of(self.value.type)

    def __repr__(self):
        return f"Tensor({self.dtype}{list(self.shape)})"

    def _bin(self, other, kind, swap=False):
        a, b = broadcast_pair(self, other)
        return _binary(kind, b, a) if swap else _binary(kind, a, b)

    def __add__(self, o): return self._bin(o, "add")
    def __radd__(self, o): return self._bin(o, "add", True)
    def __sub__(self, o): return self._bin(o, "sub")
    def __rsub__(self, o): return self._bin(o, "sub", True)
    def __mul__(self, o): return self._bin(o, "mul")
    def __rmul__(self, o): return self._bin(o, "mul", True)
    def __truediv__(self, o): return self._bin(o, "div")
    def __rtruediv__(self, o): return self._bin(o, "div", True)
    def __mod__(self, o): return self._bin(o, "rem")
    def __floordiv__(self, o): return self._bin(o, "floordiv")
    def __and__(self, o): return self._bin(o, "and")
    def __or__(self, o): return self._bin(o, "or")
    def __neg__(self): return unary("neg", self)
    def __lt__(self, o): return compare(self, o, "lt")
    def __le__(self, o): return compare(self, o, "le")
    def __gt__(self, o): return compare(self, o, "gt")
    def __ge__(self, o): return compare(self, o, "ge")

    def eq(self, o): return compare(self, o, "eq")

    def cast(self, dtype: str, rounding: str = "rint") -> Tensor:
        return cast(self, dtype, rounding)

    def reshape(self, *shape) -> Tensor:
        return reshape(self, shape)


def emit_op(cls, operands: Sequence, result_types: Sequence, properties: dict | None = None,
            regions: Sequence[Region] = ()):
    """Insert one op of any dialect at the current insertion point, stamped with the current location."""
    b = _Ctx.builder
    if b is None:
        _fail("DSL ops can only be used while a stage is being built or an op rewritten")
    op = cls.build(operands=operands, result_types=list(result_types), properties=properties or {},
                   regions=list(regions))
    op.attributes[LOC_ATTR] = StringAttr(_caller_location())
    b.insert(op)
    return op


@contextlib.contextmanager
def emitting(insert_point: InsertPoint, loc: str | None):
    """Let passes build ops with the DSL vocabulary at `insert_point`, carrying the rewritten op's location."""
    prev = (_Ctx.builder, _Ctx.loc)
    _Ctx.builder, _Ctx.loc = Builder(insert_point), loc
    try:
        yield
    finally:
        _Ctx.builder, _Ctx.loc = prev


def _emit(op_name: str, operands: Sequence[Tensor | SSAValue], result_type, grouped: bool = False, **props) -> Tensor:
    """One attn op; `grouped`: operands already grouped per operand definition (a list for each variadic one)."""
    cls = ATTN[op_name]

    def value(o):
        return o.value if isinstance(o, Tensor) else o

    vals = ([[value(x) for x in o] if isinstance(o, (list, tuple)) else value(o) for o in operands] if grouped
            else _group_operands(cls, [value(o) for o in operands]))
    props = {k: v for k, v in props.items() if v is not None}  # an absent optional property
    op = emit_op(cls, vals, [result_type], props)
    try:
        op.verify()
    except Exception as e:  # a DSL misuse: report it at the DSL line
        msg = str(e).splitlines()[0]
        raise DSLError(msg if msg.startswith(op.attributes[LOC_ATTR].data) else f"{op.attributes[LOC_ATTR].data}: {msg}") from None
    return Tensor(op.results[0])


def _group_operands(cls, vals):
    # ops with one variadic operand (concat) take a list; optional operands (rmsnorm gamma) a list of 0/1
    from xdsl.irdl import VarOperandDef

    defs = cls.get_irdl_definition().operands
    if len(defs) == 1 and isinstance(defs[0][1], VarOperandDef):
        return [vals]
    grouped, i = [], 0
    for _, d in defs:
        if isinstance(d, VarOperandDef):
            grouped.append(vals[i:])
            i = len(vals)
        else:
            grouped.append(vals[i])
            i += 1
    return grouped


def _ty(shape, dtype) -> TensorType:
    if dtype not in DTYPES:
        _fail(f"unknown dtype '{dtype}'")
    return tensor_type(shape, dtype)


# -------------------------------------------------------------------------------------------------- ops


def full(shape, value: float, dtype: str = "f32") -> Tensor:
    return _emit("full", [], _ty(shape, dtype), value=float_attr(value))


def iota(shape, axis: int) -> Tensor:
    return _emit("iota", [], _ty(shape, "i32"), axis=_int(axis))


def _int(v):
    from xdsl.dialects.builtin import IntegerAttr, i64

    return IntegerAttr(int(v), i64)


def broadcast_to(x: Tensor, shape) -> Tensor:
    shape = tuple(shape)
    if x.shape == shape:
        return x
    if len(x.shape) < len(shape):
        x = reshape(x, (1,) * (len(shape) - len(x.shape)) + x.shape)
    return _emit("broadcast", [x], _ty(shape, x.dtype))


def broadcast_pair(a, b) -> tuple[Tensor, Tensor]:
    if not isinstance(a, Tensor):
        a = full(b.shape, a, b.dtype)
    if not isinstance(b, Tensor):
        b = full(a.shape, b, a.dtype)
    if a.dtype != b.dtype:
        _fail(f"dtype mismatch: {a} and {b} (cast explicitly)")
    ra, rb = len(a.shape), len(b.shape)
    sa = (1,) * (rb - ra) + a.shape
    sb = (1,) * (ra - rb) + b.shape
    out = []
    for x, y in zip(sa, sb):
        if x != y and 1 not in (x, y):
            _fail(f"shapes do not broadcast: {a} and {b}")
        out.append(max(x, y))
    return broadcast_to(a, out), broadcast_to(b, out)


def _binary(kind, a: Tensor, b: Tensor) -> Tensor:
    return _emit(kind, [a, b], _ty(a.shape, a.dtype))


def maximum(a, b) -> Tensor:
    return _binary("max", *broadcast_pair(a, b))


def minimum(a, b) -> Tensor:
    return _binary("min", *broadcast_pair(a, b))


def unary(kind: str, x: Tensor) -> Tensor:
    return _emit(kind, [x], _ty(x.shape, x.dtype))


def exp(x): return unary("exp", x)
def sqrt(x): return unary("sqrt", x)
def rsqrt(x): return unary("rsqrt", x)
def recip(x): return unary("recip", x)
def relu(x): return unary("relu", x)


def compare(a, b, predicate: str) -> Tensor:
    a, b = broadcast_pair(a, b)
    return _emit("cmp", [a, b], _ty(a.shape, "i1"), predicate=str_attr(predicate))


def _broadcast_shape(*shapes) -> tuple[int, ...]:
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    out = []
    for dims in zip(*padded):
        big = {d for d in dims if d != 1}
        if len(big) > 1:
            _fail(f"shapes do not broadcast: {[list(s) for s in shapes]}")
        out.append(big.pop() if big else 1)
    return tuple(out)


def select(cond: Tensor, on_true, on_false) -> Tensor:
    t, f = broadcast_pair(on_true, on_false)
    target = _broadcast_shape(cond.shape, t.shape)
    cond, t, f = broadcast_to(cond, target), broadcast_to(t, target), broadcast_to(f, target)
    return _emit("select", [cond, t, f], _ty(target, t.dtype))


def cast(x: Tensor, dtype: str, rounding: str = "rint", saturate: bool = False) -> Tensor:
    if x.dtype == dtype:
        return x
    props = {"saturate": bool_attr(True)} if saturate else {}
    return _emit("cast", [x], _ty(x.shape, dtype), rounding=str_attr(rounding), **props)


# floor of a row's absmax: an all-zero row gets a finite scale (127 * 2^100 < f32 max) and quantises to zeros
QUANT_ABSMAX_FLOOR = 2.0 ** -100


def quantize_rows(x: Tensor, rounding: str = "rint") -> tuple[Tensor, Tensor]:
    """Dynamic symmetric per-row int8 quantisation (as hicann/pypto's quantised prologs): in f32,
    s = 127 / max(absmax(row), 2^-100), q = saturate_i8(round(x * s)) by `rounding`; returns (q i8, 1/s f32
    [..., 1]), the row's dequantisation scale."""
    xf = cast(x, "f32")
    amax = maximum(reduce(unary("abs", xf), "max"), QUANT_ABSMAX_FLOOR)
    qs = 127.0 / amax
    return cast(xf * qs, "i8", rounding, saturate=True), 1.0 / qs


def linear(x: Tensor, w: Tensor, w_scale: Tensor | None, proj: str, out: str = "f32") -> Tensor:
    """x @ w: a plain matmul for a float weight, attn.scaled_matmul for an i8 weight with its per-channel scales
    (a quantised checkpoint, `--set quant=w8a8`); `proj` names the projection for quantize-w8a8{targets=...}."""
    if w.dtype != "i8":
        return matmul(x, w, out=out)
    if w_scale is None:
        _fail(f"{proj}: an i8 weight needs its per-channel scales")
    return _emit("scaled_matmul", [x, w, w_scale], _ty((*x.shape[:-1], w.shape[-1]), out), proj=str_attr(proj))


def dequantize(acc: Tensor, row_scale: Tensor, col_scale: Tensor, out: str = "f32") -> Tensor:
    """int32 products [.., M, N] back to floats in f32: (acc * row_scale [.., M, 1]) * col_scale [N]."""
    y = (cast(acc, "f32") * row_scale) * reshape(col_scale, (1,) * (len(acc.shape) - 1) + col_scale.shape)
    return cast(y, out)


def matmul(a: Tensor, b: Tensor, out: str = "f32", transpose_b: bool = False, side_by_side: int = 1) -> Tensor:
    """`side_by_side`: how many independent matmuls of this shape the kernel runs at once, this one included (the
    groups of a grouped projection): stated on the op for tile-matmul's cost rule, which gives each that share of
    the cube cores."""
    sb = b.shape
    n = sb[-2] if transpose_b else sb[-1]
    t = _emit("matmul", [a, b], _ty((*a.shape[:-1], n), out), transpose_b=bool_attr(transpose_b))
    if side_by_side > 1:
        t.value.owner.attributes["side_by_side"] = IntegerAttr(side_by_side, i64)
    return t


def reduce(x: Tensor, kind: str, axis: int = -1) -> Tensor:
    axis = axis % len(x.shape)
    shape = tuple(1 if i == axis else d for i, d in enumerate(x.shape))
    return _emit("reduce", [x], _ty(shape, x.dtype), kind=str_attr(kind), axis=_int(axis))


def reshape(x: Tensor, shape) -> Tensor:
    shape = tuple(int(s) for s in shape)
    if shape == x.shape:
        return x
    out = _emit("reshape", [x], _ty(shape, x.dtype))
    out.token_positions_of = x.token_positions_of  # a flatten of positions still gives positions
    return out


@contextlib.contextmanager
def token_dims(dims: tuple[int, int]):
    """Let a pass build token-row ops for a step of (batch, seq) tokens (a stage build sets them itself)."""
    prev = _Ctx.token_dims, _Ctx.packed
    _Ctx.token_dims, _Ctx.packed = tuple(dims), False
    try:
        yield
    finally:
        _Ctx.token_dims, _Ctx.packed = prev


def to_tokens(x: Tensor) -> Tensor:
    """[batch, seq, ...] per-token data -> its token rows [T, ...] (T = batch*seq, token b*seq+s): the IR's
    statement that axis 0 of the result is the token axis (attn.to_tokens; a reshape in value). Packed layout:
    per-token data is [T, ...], flattened as [1, T, ...] (token dims (1, T))."""
    dims = _Ctx.token_dims
    if _Ctx.packed and dims is not None:  # per-token data is [T, ...]: one sequence of T token rows
        if x.shape[:1] != (dims[1],):
            _fail(f"to_tokens needs per-token data [T = {dims[1]}, ...] in the packed layout, got {x}")
        tagged = x.token_positions_of
        x = reshape(x, (1, *x.shape))
        x.token_positions_of = tagged
    if dims is None or tuple(x.shape[:2]) != dims:
        _fail(f"to_tokens needs [batch, seq, ...] = {list(dims or ())} leading dims, got {x}")
    out = _emit("to_tokens", [x], _ty((dims[0] * dims[1], *x.shape[2:]), x.dtype))
    out.token_positions_of = x.token_positions_of  # token rows of positions still give positions
    return out


def from_tokens(x: Tensor) -> Tensor:
    """Token rows [T, ...] -> [batch, seq, ...] (attn.from_tokens): rows handed to batch-major work or returned.
    In the packed layout the result is [1, T, ...] reshaped back to [T, ...] (per-token data outside token work)."""
    dims = _Ctx.token_dims
    if dims is None or x.shape[:1] != (dims[0] * dims[1],):
        _fail(f"from_tokens needs token rows [{dims[0] * dims[1] if dims else 'T'}, ...], got {x}")
    out = _emit("from_tokens", [x], _ty((*dims, *x.shape[1:]), x.dtype))
    return reshape(out, x.shape) if _Ctx.packed else out  # packed: per-token data stays [T, ...]


def transpose(x: Tensor, perm) -> Tensor:
    return _emit("transpose", [x], _ty(tuple(x.shape[p] for p in perm), x.dtype), perm=int_array(perm))


def concat(xs: Sequence[Tensor], axis: int) -> Tensor:
    axis = axis % len(xs[0].shape)
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    return _emit("concat", list(xs), _ty(shape, xs[0].dtype), axis=_int(axis))


def slice_(x: Tensor, offsets, sizes) -> Tensor:
    return _emit("slice", [x], _ty(sizes, x.dtype), offsets=int_array(offsets), sizes=int_array(sizes))


def gather_rows(table: Tensor, indices: Tensor) -> Tensor:
    return _emit("gather_rows", [table, indices], _ty((*indices.shape, *table.shape[1:]), table.dtype))


def scatter_rows(table: Tensor, rows: Tensor, ids: Tensor) -> Tensor:
    """The table with rows[i] stored at row ids[i] of its flattened leading dims, value semantics (attn.scatter_rows).

    ids [*L] i32 index the rows of `rows` [*L, *E]; the table is [*P, *E], row id r = row r of its [prod(P), *E]
    flattening (b * R + slot of a [B, R, d] ring). An id < 0 stores nothing (a select makes -1 for a row that must
    not be written); ids >= 0 must be distinct (the caller guarantees it; the interpreter checks it)."""
    import math

    k = len(ids.shape)
    if ids.dtype != "i32" or tuple(rows.shape[:k]) != tuple(ids.shape):
        _fail(f"scatter_rows: ids {ids} must be i32 and index the leading dims of rows {rows}")
    row_shape = tuple(rows.shape[k:])
    m = math.prod(ids.shape)
    return _emit("scatter_rows", [table, reshape(rows, (m, *row_shape)), reshape(ids, (m,))],
                 _ty(table.shape, table.dtype))


def batch_rows(local: Tensor, width: int) -> Tensor:
    """Pool row ids of per-batch-row local ids `local` [B, ...] in a pool of `width` rows per batch row."""
    return local + iota((local.shape[0],) + (1,) * (len(local.shape) - 1), 0) * width


def gather_pool(tables: Sequence[Tensor], local: Tensor, index_shape) -> Tensor:
    """Rows `local` [B, ...] (ids into the per-batch-row concatenation of `tables` [B, n_i, ...]) gathered as
    [*index_shape, ...]: each batch row only ever reads its own rows. index_shape is local's own shape
    (batch-major rows) or (T, ...) for ids [B, S, ...] given per token, gathered as token rows (to_tokens)."""
    B = tables[0].shape[0]
    width = sum(t.shape[1] for t in tables)
    pool = concat(list(tables), axis=1) if len(tables) > 1 else tables[0]
    pool = reshape(pool, (B * width, *tables[0].shape[2:]))
    ids = batch_rows(local, width)
    return gather_rows(pool, ids if tuple(index_shape) == ids.shape else to_tokens(ids))


def rmsnorm(x: Tensor, gamma: Tensor | None, eps: float, out: str) -> Tensor:
    operands = [x] + ([gamma] if gamma is not None else [])
    return _emit("rmsnorm", operands, _ty(x.shape, out), eps=float_attr(eps))


def rope(x: Tensor, cos_table: Tensor, sin_table: Tensor, positions: Tensor, out: str,
         inverse: bool = False) -> Tensor:
    """Rotate interleaved pairs of the trailing lanes of every token of x at that token's own position.

    `positions` must come from token_positions() and cover exactly the token dims of x, so a token can
    never be rotated with another token's position (pypto-lib#462)."""
    import math

    n_tok = math.prod(x.shape[: len(positions.shape)])
    if positions.token_positions_of is None:
        _fail("rope positions must come from token_positions(start_pos, seq)")
    if positions.token_positions_of != _Ctx.tokens:
        _fail(f"rope positions give {positions.token_positions_of} token positions but the stage has "
              f"{_Ctx.tokens} tokens (batch*seq): every token must be rotated at its own position")
    if n_tok != positions.token_positions_of:
        _fail(f"rope positions give {positions.token_positions_of} token positions but {x} has {n_tok} tokens "
              f"in its leading dims {list(x.shape[: len(positions.shape)])}: positions must cover the token dims")
    return _emit("rope", [x, cos_table, sin_table, positions], _ty(x.shape, out), inverse=bool_attr(inverse))


def sparse_attention(q: Tensor, kv: Tensor, valid: Tensor, sink: Tensor, scale: float, out: str) -> Tensor:
    return _emit("sparse_attention", [q, kv, valid, sink], _ty(q.shape, out), scale=float_attr(scale))


def cache_attention(q: Tensor, sink: Tensor, start_pos: Tensor, ring: Tensor, step: Tensor, scale: float, out: str,
                    cache: Tensor | None = None, index: Tensor | None = None, ratio: int = 0,
                    ring_table: Tensor | None = None, window: int | None = None,
                    cache_table: Tensor | None = None, entries: int | None = None) -> Tensor:
    """Attention of the tokens of a decode step q [B,S,H,d] over the window (ring [B,W,d] + this step's rows
    step [B,S,d]) and, with a cache [B,N,d] of compressed entries of `ratio` positions each, its visible entries
    (all, or those listed per token by index [B,S,K]: ids in any order, -1 anywhere for none); sink in the
    denominator. Batch-major in and out, so schedules can read the tables in place.

    Paged: with `ring_table` [B, ceil(window / block_size)] i32 the ring is a pool [blocks, block_size, d] of
    `window` slots per row (likewise `cache_table` and `entries` for the cache), read through the table in place."""
    compressed = [c for c in (cache, index) if c is not None]
    return _emit("cache_attention", [q, sink, start_pos, ring, step, compressed,
                                     [ring_table] if ring_table is not None else [],
                                     [cache_table] if cache_table is not None else []],
                 _ty(q.shape, out), grouped=True, scale=float_attr(scale), ratio=_int(ratio),
                 ring_slots=None if ring_table is None else _int(window),
                 cache_entries=None if cache_table is None else _int(entries))


def compress_pool(values: Tensor, scores: Tensor, kv_state: Tensor, score_state: Tensor, start_pos: Tensor,
                  ratio: int, dim: int, entry_of: Sequence[Tensor] = (), eps: float | None = None,
                  rotate_scale: float | None = None) -> Tensor:
    """The compressor's pooled entry of each token of a step [B, S, dim] f32 (0 for a token that completes no
    block) from the step's values/scores [B, S, width] and the state rings [B, R, width] (see attn.compress_pool).
    `entry_of` (norm_w, rope_cos, rope_sin[, rotate]): the pooled row's cache entry instead (bf16; RMSNorm, RoPE
    at the block's first position, the optional rotation times rotate_scale)."""
    B, S, _ = values.shape
    return _emit("compress_pool", [values, scores, kv_state, score_state, start_pos, list(entry_of)],
                 _ty((B, S, dim), "bf16" if entry_of else "f32"), grouped=True, ratio=_int(ratio), dim=_int(dim),
                 eps=None if eps is None else float_attr(eps),
                 rotate_scale=None if rotate_scale is None else float_attr(rotate_scale))


def paged_rows_of(block_table: Tensor, block_size: int, slot: Tensor, row: Tensor | None = None) -> Tensor:
    """Flattened pool row ids of slots `slot` [B, ...] (i32) of a paged table: block_table[b, slot // block_size] *
    block_size + slot % block_size, b the leading index of `slot` (or `row`, each slot's batch row)."""
    B, blocks = block_table.shape
    flat = reshape(block_table, (B * blocks,))
    physical = gather_rows(flat, (iota(slot.shape, 0) if row is None else row) * blocks + slot // block_size)
    return physical * block_size + slot % block_size


def paged_table(pool: Tensor, block_table: Tensor, length: int) -> Tensor:
    """The logical table [B, length, d] of a paged pool [blocks, block_size, d], gathered through the block table
    (a copy of every row's table: for generic paths; schedule-attention reads the pool in place)."""
    blocks, size, d = pool.shape
    ids = paged_rows_of(block_table, size, iota((block_table.shape[0], length), 1))
    return gather_rows(reshape(pool, (blocks * size, d)), ids)


def topk(scores: Tensor, valid: Tensor, k: int) -> Tensor:
    return _emit("topk", [scores, valid], _ty((*scores.shape[:-1], k), "i32"), k=_int(k))


def token_positions(start_pos: Tensor, seq: int) -> Tensor:
    """[B, S] i32 absolute positions start_pos[b] + s — the only way the DSL derives a token's position.
    Packed layout (`start_pos` is the stage's PackedRows): the [T] positions of position_ids."""
    if isinstance(start_pos, PackedRows):
        return start_pos.positions
    (batch,) = start_pos.shape
    pos = broadcast_to(reshape(start_pos, (batch, 1)), (batch, seq)) + iota((batch, seq), 1)
    pos.token_positions_of = batch * seq
    return pos


def block_start_positions(positions: Tensor, block: int) -> Tensor:
    """floor(t / block) * block of every token position t: the first position of the block holding the token
    (the RoPE position of a compressed entry). Still one position per token, derived from its own."""
    if positions.token_positions_of is None:
        _fail("block_start_positions needs positions from token_positions(start_pos, seq)")
    out = (positions // block) * block
    out.token_positions_of = positions.token_positions_of
    return out


class PackedRows:
    """The packed token-major layout's step metadata, handed to a stage in place of `start_pos`:
    position_ids [T] i32 (each token's absolute position) and cu_seqlens [B+1] i32 (prefix sums of the rows'
    token counts: row b owns tokens cu_seqlens[b] .. cu_seqlens[b+1]-1, contiguous and in position order; a row
    may have 0 tokens). Its helpers give per-token and per-row facts as values ([T] or [B], not token rows:
    callers flatten per-token values with to_tokens, as they do dense [B, S] ones); each is built once."""

    def __init__(self, position_ids: Tensor, cu_seqlens: Tensor, rows: int):
        self.position_ids, self.cu_seqlens, self.rows = position_ids, cu_seqlens, rows
        self.tokens = position_ids.shape[0]
        self._made: dict = {}

    def _once(self, key, make):
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    @property
    def positions(self) -> Tensor:
        """[T] positions, usable wherever token_positions() is (rope, block_start_positions)."""
        def make():
            pos = reshape(self.position_ids, (self.tokens,))
            pos.token_positions_of = self.tokens
            return pos
        return self._once("positions", make)

    def token_index(self) -> Tensor:
        """[T] i32: 0 .. T-1."""
        return self._once("index", lambda: iota((self.tokens,), 0))

    def token_row(self) -> Tensor:
        """[T] i32: the row of each token, the last r with cu_seqlens[r] <= t (rows of 0 tokens end where they
        start, so they are skipped), found by a binary search over the B+1 prefix sums: log2(B) gathers, compares
        and selects per token — integer element-wise work only, so scatter ids built on it stay scalars in pypto."""
        def make():
            T, B = self.tokens, self.rows
            t = self.token_index()
            table = reshape(self.cu_seqlens, (B + 1, 1))
            row = full((T,), 0.0, "i32")
            step = 1 << max(B - 1, 0).bit_length()
            while step:
                cand = minimum(row + step, B)
                row = select(reshape(gather_rows(table, cand), (T,)) <= t, cand, row)
                step //= 2
            return row
        return self._once("row", make)

    def row_first_token(self) -> Tensor:
        """[T] i32: the index of the first token of each token's row."""
        return self._once("first_token", lambda: reshape(
            gather_rows(reshape(self.cu_seqlens, (self.rows + 1, 1)), self.token_row()), (self.tokens,)))

    def token_row_length(self) -> Tensor:
        """[T] i32: the token count (in this step) of each token's row."""
        return self._once("row_length", lambda: reshape(
            gather_rows(reshape(self.cu_seqlens, (self.rows + 1, 1)), self.token_row() + 1), (self.tokens,))
            - self.row_first_token())

    def row_first_position(self) -> Tensor:
        """[T] i32: the position of the first token (of this step) of each token's row."""
        return self._once("first_position", lambda: self.positions - (self.token_index() - self.row_first_token()))

    def row_starts(self) -> Tensor:
        """[B] i32: cu_seqlens[b], the first token of row b (T for an empty last row)."""
        return self._once("starts", lambda: slice_(self.cu_seqlens, (0,), (self.rows,)))

    def row_lengths(self) -> Tensor:
        """[B] i32: the token count of each row in this step (0 allowed)."""
        return self._once("lengths", lambda: slice_(self.cu_seqlens, (1,), (self.rows,)) - self.row_starts())

    def row_start_positions(self) -> Tensor:
        """[B] i32: the position of row b's first token in this step (meaningless for a row of 0 tokens)."""
        def make():
            first = minimum(self.row_starts(), self.tokens - 1)
            return reshape(gather_rows(reshape(self.position_ids, (self.tokens, 1)), first), (self.rows,))
        return self._once("start_positions", make)


def is_packed() -> bool:
    """Whether the stage being built uses the packed token-major layout."""
    return _Ctx.packed


def stage_params(stage_def: StageDef, cfg: dict) -> dict[str, In]:
    """The stage's parameters in the config's layout. Dense: as declared. Packed (`layout=packed`): per-token
    parameters [batch, seq, ...] become [tokens, ...], and start_pos [batch] becomes position_ids [tokens] and
    cu_seqlens [batch + 1] (i32)."""
    cfg = stage_config(stage_def, cfg)
    declared: dict[str, In] = {}
    for name, p in stage_def.params.items():
        if p.quantizable and cfg.get("quant") == "w8a8":  # int8 weight + f32 per-output-channel scales
            declared[name] = In(*p.dims, dtype="i8")
            declared[f"{name}_scale"] = In(p.dims[-1], dtype="f32")
        else:
            declared[name] = p
    if cfg.get("layout") != "packed":
        return declared
    out: dict[str, In] = {}
    for name, p in declared.items():
        if name == "start_pos":
            out["position_ids"] = In("tokens", dtype="i32")
            out["cu_seqlens"] = In("cu_len", dtype="i32")
        elif p.dims[:2] == ("batch", "seq"):
            out[name] = In("tokens", *p.dims[2:], dtype=p.dtype)
        else:
            out[name] = p
    return out


# -------------------------------------------------------------------------------------------------- build


def build_stage(stage_def: StageDef, cfg: dict) -> ModuleOp:
    """Resolve shapes from `cfg` and trace the stage function into a module with one func.func."""
    cfg = stage_config(stage_def, cfg)
    params = stage_params(stage_def, cfg)
    arg_types = [_ty(p.resolve(cfg), p.dtype) for p in params.values()]
    block = Block(arg_types=arg_types)
    builder = Builder(InsertPoint.at_end(block))
    args = {name: Tensor(a) for name, a in zip(params, block.args)}
    packed = cfg.get("layout") == "packed"
    _Ctx.tokens = cfg["tokens"] if packed else cfg["batch"] * cfg["seq"]
    _Ctx.token_dims = (1, _Ctx.tokens) if packed else (cfg["batch"], cfg["seq"])
    with _building(builder, packed):
        if packed and "position_ids" in args:
            args["start_pos"] = PackedRows(args.pop("position_ids"), args.pop("cu_seqlens"), cfg["batch"])
        outs = stage_def.fn(cfg, **args)
        missing = [o for o in stage_def.outputs if o not in outs]
        if missing:
            raise DSLError(f"stage {stage_def.name} did not produce {missing}")
        ret = func.ReturnOp(*[outs[o].value for o in stage_def.outputs])
        builder.insert(ret)
    fn = func.FuncOp(stage_def.name, (arg_types, [outs[o].value.type for o in stage_def.outputs]),
                     Region(block))
    fn.attributes["arg_names"] = _str_array(params)
    fn.attributes["result_names"] = _str_array(stage_def.outputs)
    # token dims [batch, seq] ([1, T] packed): the extent of the token rows made by attn.to_tokens
    fn.attributes["token_dims"] = int_array(list(_Ctx.token_dims))
    module = ModuleOp([fn])
    module.verify()
    return module


def _str_array(names):
    from xdsl.dialects.builtin import ArrayAttr

    return ArrayAttr([StringAttr(n) for n in names])


@contextlib.contextmanager
def _building(builder: Builder, packed: bool = False):
    prev = _Ctx.builder, _Ctx.packed
    _Ctx.builder, _Ctx.packed = builder, packed
    try:
        yield
    finally:
        _Ctx.builder, _Ctx.packed = prev
