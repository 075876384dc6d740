"""The golden: torch implementations of every op of `attn`, `tile`, and the func/arith/scf ops we use.

Dtypes are exact: bf16 values are torch.bfloat16 (round-to-nearest-even on every op that produces them),
casts honour their rounding mode, and float matmuls sum exact products in f64, rounded once to f32 and then to
the result dtype (an f32 BLAS sum depends on the row count, which would make row-chunked code differ).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from xdsl.dialects import arith, func, scf
from xdsl.dialects.builtin import ModuleOp
from xdsl.interpreter import Interpreter, InterpreterFunctions, impl, impl_terminator, register_impls, ReturnedValues
from xdsl.interpreters.arith import ArithFunctions
from xdsl.interpreters.func import FuncFunctions
from xdsl.interpreters.scf import ScfFunctions
from xdsl.ir import BlockArgument, Operation, OpResult

from . import entry_function  # noqa: F401  (re-exported: its callers that interpret import it from here)
from . import tensor_dialect as tdl
from . import tile_dialect as tl
from .common import BINARY, UNARY, ints_of, op_location
from .topk import TopkCall, topk_indices
from .types import dtype_of, shape_of, torch_dtype

from attnc.errors import AttncError


class InterpretError(AttncError):
    """An op could not be executed (out-of-range index, bad input); message starts with the op location."""


# --------------------------------------------------------------------------------------------------
# numerics shared by several ops


def cast_tensor(x: torch.Tensor, dtype: str, rounding: str = "rint") -> torch.Tensor:
    """Convert with an explicit rounding mode: rint = nearest-even, round = nearest, ties away from zero,
    trunc = toward zero."""
    target = torch_dtype(dtype)
    if x.dtype == target:
        return x
    if target == torch.bool:
        return x != 0
    if not target.is_floating_point:
        xf = x.double()
        if rounding == "rint":
            r = torch.round(xf)
        elif rounding == "round":
            r = torch.sign(xf) * torch.floor(xf.abs() + 0.5)
        else:
            r = torch.trunc(xf)
        info = torch.iinfo(target)
        return r.clamp(info.min, info.max).to(target)
    if not x.dtype.is_floating_point:
        return x.double().to(target)  # exact for the integer ranges we use; RNE otherwise
    nearest = x.to(target)  # torch rounds to nearest-even
    if rounding == "rint" or torch.finfo(target).bits >= torch.finfo(x.dtype).bits:
        return nearest
    xd = x.double()
    err = xd - nearest.double()
    away = torch.where(err >= 0, torch.full_like(nearest, math.inf), torch.full_like(nearest, -math.inf))
    other = torch.nextafter(nearest, away)
    if rounding == "trunc":
        # nearest overshot in magnitude: step one ulp back toward zero
        over = nearest.double().abs() > xd.abs()
        toward_zero = torch.nextafter(nearest, torch.zeros_like(nearest))
        return torch.where(over, toward_zero, nearest)
    tie = (other.double() - xd).abs() == err.abs()
    pick_other = tie & (other.double().abs() > nearest.double().abs())
    return torch.where(pick_other & (err != 0), other, nearest)


class _WeightCache:
    """f64 copies of (slices of) the function's input tensors, which are never written: a weight chunk used
    by every token chunk is converted once per run instead of once per use. A cast of an input in the
    function's entry block (pto-dtype's bf16 -> f16 on entry) is never written either and counts as one."""

    def __init__(self, inputs: Sequence[torch.Tensor]):
        self.storages = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
        self.f64: dict = {}
        self.derived: list[torch.Tensor] = []  # kept alive: a freed storage's address could be reused

    def derive(self, src: torch.Tensor, result: torch.Tensor) -> None:
        if src.untyped_storage().data_ptr() in self.storages:
            self.derived.append(result)
            self.storages.add(result.untyped_storage().data_ptr())

    def as_f64(self, t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in self.storages:
            return t.double()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if key not in self.f64:
            self.f64[key] = t.double()
        return self.f64[key]


_NO_CACHE = _WeightCache(())


def matmul_f32(a: torch.Tensor, b: torch.Tensor, transpose_b: bool, cache: _WeightCache = _NO_CACHE) -> torch.Tensor:
    """Products of bf16/f16/f32 operands summed exactly enough (f64) and rounded once to f32; integers exactly."""
    if a.dtype.is_floating_point:
        # exact products summed in f64, rounded once to f32: unlike an f32 BLAS sum, whose order depends on
        # the row count (MKL), a row's result does not depend on how many rows are computed with it, so
        # splitting the token rows into chunks (parallelize-tokens) is bit-exact
        bf = cache.as_f64(b)
        return torch.matmul(a.double(), bf.transpose(-1, -2) if transpose_b else bf).float()
    if transpose_b:
        b = b.transpose(-1, -2)
    return torch.matmul(a.long(), b.long())


def _cache(it) -> _WeightCache:
    return getattr(it, "attnc_weights", _NO_CACHE)


def _binary(kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if kind == "add":
        return a + b
    if kind == "sub":
        return a - b
    if kind == "mul":
        return a * b
    if kind == "div":
        if not a.dtype.is_floating_point:
            return torch.div(a, b, rounding_mode="trunc")
        return a / b
    if kind == "max":
        return torch.maximum(a, b)
    if kind == "min":
        return torch.minimum(a, b)
    if kind == "rem":
        return torch.remainder(a, b)
    if kind == "floordiv":
        return torch.div(a, b, rounding_mode="floor")
    if kind == "and":
        return a & b
    if kind == "or":
        return a | b
    raise AssertionError(kind)


_UNARY_FN = {
    "neg": torch.neg,
    "exp": torch.exp,
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "recip": torch.reciprocal,
    "relu": torch.relu,
    "abs": torch.abs,
}
_CMP_FN = {"lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge, "eq": torch.eq, "ne": torch.ne}


def _reduce(kind: str, x: torch.Tensor, axis: int) -> torch.Tensor:
    if kind == "sum":
        acc = x.float() if x.dtype.is_floating_point else x.long()
        return acc.sum(axis, keepdim=True).to(x.dtype)
    if kind == "max":
        return x.amax(axis, keepdim=True)
    return x.amin(axis, keepdim=True)


def _pad_value(dtype: torch.dtype, pad: str):
    if pad != "min":
        return 0
    return torch.finfo(dtype).min if dtype.is_floating_point else torch.iinfo(dtype).min


def rope_rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool) -> torch.Tensor:
    """Interleaved-pair rotation of the trailing 2*cos.shape[-1] lanes of x (f32 math)."""
    half = cos.shape[-1]
    n = x.shape[-1]
    head, tail = x[..., : n - 2 * half], x[..., n - 2 * half:]
    a, b = tail[..., 0::2], tail[..., 1::2]
    if inverse:
        ra, rb = a * cos + b * sin, b * cos - a * sin
    else:
        ra, rb = a * cos - b * sin, a * sin + b * cos
    return torch.cat([head, torch.stack([ra, rb], -1).flatten(-2)], -1)


def sparse_attention(q, kv, valid, sink, scale: float) -> torch.Tensor:
    """Softmax over the valid keys with a per-head sink logit in the denominator only (f32)."""
    kvf = torch.where(valid[..., None], kv.float(), 0.0)  # invalid rows may hold garbage
    logits = torch.matmul(q.float(), kvf.transpose(-1, -2)) * scale  # [T,H,N]
    logits = logits.masked_fill(~valid[:, None, :], -math.inf)
    m = torch.maximum(logits.amax(-1, keepdim=True), sink.float()[None, :, None])
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(logits - m)
    denom = p.sum(-1, keepdim=True) + torch.exp(sink.float()[None, :, None] - m)
    out = torch.matmul(p, kvf)
    return torch.where(denom > 0, out / torch.where(denom > 0, denom, 1.0), 0.0)


def cache_attention_keys(start_pos, ring, step, compressed, ratio: int):
    """Keys of every token t = start_pos[b] + s of a decode step and their visibility: [T, W + K, d], [T, W + K].

    The window positions t-W+1 .. t (oldest first): position p >= start_pos is this step's row p - start_pos,
    an earlier one ring slot p mod W; p < 0 is invisible. Then the compressed entries (every entry of the cache,
    or the ids listed per token, in any order): entry w is visible iff 0 <= w < min(N, floor((t+1)/ratio)),
    wherever the list holds it."""
    B, S, d = step.shape
    W = ring.shape[1]
    sp = start_pos.long().reshape(B, 1, 1)
    t = sp + torch.arange(S).reshape(1, S, 1)
    p = t - (W - 1) + torch.arange(W).reshape(1, 1, W)  # [B,S,W]
    from_step = p >= sp
    b_ix = torch.arange(B).reshape(B, 1, 1).expand(B, S, W)
    rows = torch.where(from_step[..., None], step[b_ix, (p - sp).clamp(0, S - 1)],
                       ring[b_ix, p.remainder(W)])
    keys, valid = [rows], [p >= 0]
    if compressed:
        cache = compressed[0]
        n = cache.shape[1]
        ids = (compressed[1].long() if len(compressed) > 1
               else torch.arange(n).reshape(1, 1, n).expand(B, S, n))
        complete = torch.clamp((t + 1) // ratio, max=n)
        ok = (ids >= 0) & (ids < complete)
        b_ix = torch.arange(B).reshape(B, 1, 1).expand_as(ids)
        keys.append(cache[b_ix, torch.where(ok, ids, 0)])
        valid.append(ok)
    kv = torch.cat(keys, 2)
    return kv.reshape(B * S, kv.shape[2], d), torch.cat(valid, 2).reshape(B * S, -1)


def compress_pool(values, scores, kv_state, score_state, start_pos, ratio: int, dim: int):
    """attn.compress_pool: the pooled entry [B, S, dim] of each token completing a block, 0 for the others.

    Token t = start_pos[b] + s completes block w when (t+1) mod ratio == 0 and pools the positions t-R+1 .. t
    (R = the ring's rows: 2*ratio with overlap, whose older half contributes channels [:dim] and newer half
    channels [dim:]; else ratio, channels [:dim]); position p >= start_pos is the step's row p - start_pos, an
    earlier one ring slot p mod R, p < 0 is absent. Per channel: softmax of the scores over the present slots,
    the values weighted by it, summed (f32)."""
    B, S, width = values.shape
    R = kv_state.shape[1]
    out = torch.zeros(B, S, dim, dtype=torch.float32)
    sp = start_pos.long()
    t = sp.reshape(B, 1) + torch.arange(S).reshape(1, S)
    bi, si = torch.nonzero((t + 1) % ratio == 0, as_tuple=True)  # the completing tokens only
    if not len(bi):
        return out
    tok_sp = sp[bi].reshape(-1, 1)
    p = t[bi, si].reshape(-1, 1) - (R - 1) + torch.arange(R).reshape(1, R)  # [n, R] oldest first
    b_ix = bi.reshape(-1, 1).expand_as(p)
    from_step = (p >= tok_sp)[..., None]
    step_row, ring_slot = (p - tok_sp).clamp(0, S - 1), p.remainder(R)
    v = torch.where(from_step, values[b_ix, step_row], kv_state[b_ix, ring_slot])
    z = torch.where(from_step, scores[b_ix, step_row], score_state[b_ix, ring_slot])
    if width == 2 * dim:  # overlap: block w-1's rows give channels [:dim], block w's rows channels [dim:]
        h = R // 2
        v = torch.cat([v[:, :h, :dim], v[:, h:, dim:]], 1)
        z = torch.cat([z[:, :h, :dim], z[:, h:, dim:]], 1)
    present = (p >= 0)[..., None]
    z = torch.where(present, z, float("-inf"))
    e = torch.exp(z - z.max(1, keepdim=True).values)
    out[bi, si] = (e * torch.where(present, v, 0.0)).sum(1) / e.sum(1)
    return out


def rms_normalize(x, eps: float):
    """x (f32) over the root mean square of its last axis, eps inside the root; RMSNorm before its weight."""
    return x * torch.reciprocal(torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def compress_entry(pooled, start_pos, norm_w, cos_t, sin_t, rotate, ratio: int, eps: float, rotate_scale):
    """attn.compress_pool's entry of the pooled rows [B, S, dim] (bf16): RMSNorm (f32), RoPE at each token's block
    start (t // ratio) * ratio rounded to bf16, then with `rotate` the row times it times rotate_scale (bf16)."""
    B, S, _ = pooled.shape
    y = rms_normalize(pooled, eps) * norm_w.float()
    first = (start_pos.long().reshape(B, 1) + torch.arange(S).reshape(1, S)) // ratio * ratio
    entry = cast_tensor(rope_rotate(y, cos_t.float()[first], sin_t.float()[first], False), "bf16")
    if rotate is None:
        return entry
    return cast_tensor(matmul_f32(entry, rotate, False) * torch.tensor(rotate_scale, dtype=torch.float32), "bf16")


def _compress_pool(it, op, a):
    pooled = compress_pool(*a[:5], op.ratio.value.data, op.dim.value.data)
    if len(a) == 5:
        return (pooled,)
    rotate = a[8] if len(a) > 8 else None
    scale = op.rotate_scale.value.data if rotate is not None else None
    return (compress_entry(pooled, a[4], *a[5:8], rotate, op.ratio.value.data, op.eps.value.data, scale),)


def paged_logical_table(pool, block_table, length: int):
    """The logical table [B, length, d] of a paged pool [blocks, size, d]: slot j of row b is pool row
    block_table[b, j // size] * size + j % size of the flattened pool."""
    blocks, size, d = pool.shape
    j = torch.arange(length)
    block = block_table.long()[:, j // size]  # [B, length]
    if block.numel() and (int(block.min()) < 0 or int(block.max()) >= blocks):
        raise InterpretError(f"block table entry out of range [0, {blocks}): min {int(block.min())}, "
                             f"max {int(block.max())}")
    return pool.reshape(blocks * size, d)[block * size + j % size]


def _cache_attention(it, op, a):
    n_comp = len(op.compressed)
    q, sink, start_pos, ring, step = a[:5]
    compressed = list(a[5:5 + n_comp])
    tables = iter(a[5 + n_comp:])
    if op.ring_table is not None:  # paged: the dense op on the logical tables
        ring = paged_logical_table(ring, next(tables), op.ring_slots.value.data)
    if op.cache_table is not None:
        compressed[0] = paged_logical_table(compressed[0], next(tables), op.cache_entries.value.data)
    B, S, H, d = q.shape
    kv, valid = cache_attention_keys(start_pos, ring, step, compressed, op.ratio.value.data)
    out = sparse_attention(q.reshape(B * S, H, d), kv, valid, sink, op.scale.value.data)
    return (cast_tensor(out, _out_dtype(op)).reshape(B, S, H, d),)


# --------------------------------------------------------------------------------------------------
# op implementations: (interpreter, op, args) -> tuple of results


def _out_dtype(op: Operation, i: int = 0) -> str:
    return dtype_of(op.results[i].type)


def _shared_impls(dl, prefix: str) -> dict:
    table = {}
    for kind in BINARY:
        table[dl[kind]] = lambda it, op, a, kind=kind: (_binary(kind, a[0], a[1]),)
    for kind in UNARY:
        table[dl[kind]] = lambda it, op, a, kind=kind: (_UNARY_FN[kind](a[0]),)
    table[dl["cmp"]] = lambda it, op, a: (_CMP_FN[op.predicate.data](a[0], a[1]),)
    table[dl["select"]] = lambda it, op, a: (torch.where(a[0], a[1], a[2]),)
    table[dl["cast"]] = _cast
    table[dl["matmul"]] = lambda it, op, a: (
        cast_tensor(matmul_f32(a[0], a[1], op.transpose_b.value.data, _cache(it)), _out_dtype(op)),)
    table[dl["broadcast"]] = lambda it, op, a: (a[0].expand(shape_of(op.result.type)).contiguous(),)
    table[dl["reshape"]] = lambda it, op, a: (a[0].reshape(shape_of(op.result.type)),)
    table[dl["transpose"]] = lambda it, op, a: (a[0].permute(ints_of(op.perm)).contiguous(),)
    table[dl["concat"]] = lambda it, op, a: (torch.cat(list(a), op.axis.value.data),)
    table[dl["gather_rows"]] = _gather_rows
    table[dl["scatter_rows"]] = _scatter_rows
    table[dl["topk"]] = _topk
    table[dl["iota"]] = _iota
    table[dl["full"]] = lambda it, op, a: (
        torch.full(shape_of(op.result.type), op.value.value.data, dtype=torch_dtype(_out_dtype(op))),)
    return table


def _cast(it, op, a):
    out = cast_tensor(a[0], _out_dtype(op), op.rounding.data)
    if isinstance(op.parent_op(), func.FuncOp):  # once per run, not per token: no in-place op writes a cast
        _cache(it).derive(a[0], out)
    return (out,)


def _gather_rows(it, op, a):
    table, idx = a
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= table.shape[0]):
        raise InterpretError(f"row index out of range [0, {table.shape[0]}): min {int(idx.min())}, max {int(idx.max())}")
    return (table[idx.long()],)


def scatter_rows(table: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """A new table: row ids[m] holds rows[m] where ids[m] >= 0, every other row keeps its value. An id beyond the
    table or two equal ids >= 0 are an error (the writer guarantees distinct ids, so the order of writes never
    matters)."""
    keep = ids >= 0
    picked = ids[keep].long()
    flat = table.reshape(-1, *rows.shape[1:]) if rows.dim() > 1 else table.reshape(-1)
    if picked.numel():
        if int(picked.max()) >= flat.shape[0]:
            raise InterpretError(f"row id {int(picked.max())} out of range [0, {flat.shape[0]})")
        if torch.unique(picked).numel() != picked.numel():
            uniq, counts = torch.unique(picked, return_counts=True)
            raise InterpretError(f"row id {int(uniq[counts > 1][0])} written twice (ids must be distinct)")
    out = flat.clone()
    out[picked] = rows[keep]
    return out.reshape(table.shape)


def _scatter_rows(it, op, a):
    return (scatter_rows(*a),)


def _topk(it, op, a):
    scores, valid = a
    k = op.k.value.data
    if getattr(it, "attnc_topk", None) is None:
        return (topk_indices(scores, valid, k),)
    return (_resolved_picks(it, op, scores, valid, k),)


def _resolved_picks(it, op, scores, valid, k):
    """The picks of a top-k resolver (run_module's `topk`) for one execution of op."""
    lead = tuple(scores.shape[:-1])
    rows = torch.arange(math.prod(lead), dtype=torch.int64).reshape(lead)
    live = torch.ones(lead, dtype=torch.bool)
    loops = getattr(it, "attnc_token_loops", ())
    if loops and lead:  # inside a token loop the leading axis holds token rows [iv, iv + R)
        iv, upper = loops[-1]
        rows = rows + iv * (rows.numel() // lead[0])  # the flattened index the rows have in the whole tensor
        live = (torch.arange(lead[0]) + iv < upper).reshape(lead[0], *([1] * (len(lead) - 1))).expand(lead)
    picks = it.attnc_topk(TopkCall(scores, valid, k, rows, live, op))
    want_shape = (*lead, k)
    if not isinstance(picks, torch.Tensor) or tuple(picks.shape) != want_shape or picks.dtype != torch.int32:
        raise InterpretError(f"top-k resolver returned {getattr(picks, 'shape', type(picks).__name__)}, "
                             f"expected int32 {list(want_shape)}")
    return picks


def _topk_pairs(it, op, a):
    """The k largest scores (stable: ties to the lower id) and their ids. Under a top-k resolver the entries
    above the lowest f32 (the sentinel pypto-legalize gives invalid ones) are the valid ones, and a resolver's
    pick -1 is a value at the sentinel."""
    (scores,) = a
    k = op.k.value.data
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    values, ids = torch.gather(scores, -1, order), order.to(torch.int32)
    if getattr(it, "attnc_topk", None) is None:
        return values, ids
    lowest = torch.finfo(torch.float32).min
    picks = _resolved_picks(it, op, scores, scores > lowest, k)
    picked = picks >= 0
    ids = torch.where(picked, picks, ids)
    values = torch.where(picked, torch.gather(scores, -1, ids.long()), torch.full_like(values, lowest))
    return values, ids


def _iota(it, op, a):
    shape = shape_of(op.result.type)
    axis = op.axis.value.data
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return (torch.arange(shape[axis], dtype=torch.int32).reshape(view).expand(shape).contiguous(),)


def _rmsnorm(it, op, a):
    y = rms_normalize(a[0].float(), op.eps.value.data)
    if len(a) > 1:
        y = y * a[1].float()
    return (cast_tensor(y, _out_dtype(op)),)


def _rope(it, op, a):
    x, cos_t, sin_t, pos = a
    if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= cos_t.shape[0]):
        raise InterpretError(f"position out of range [0, {cos_t.shape[0]}): min {int(pos.min())}, max {int(pos.max())}")
    extra = x.dim() - pos.dim() - 1  # dims between the token dims and the vector (e.g. heads)
    cos = cos_t.float()[pos.long()].reshape(*pos.shape, *([1] * extra), cos_t.shape[1])
    sin = sin_t.float()[pos.long()].reshape(*pos.shape, *([1] * extra), sin_t.shape[1])
    return (cast_tensor(rope_rotate(x.float(), cos, sin, op.inverse.value.data), _out_dtype(op)),)


def _tensor_impls() -> dict:
    d = tdl.ATTN
    table = _shared_impls(d, "attn")
    table[d["reduce"]] = lambda it, op, a: (_reduce(op.kind.data, a[0], op.axis.value.data),)
    table[d["slice"]] = lambda it, op, a: (
        a[0][tuple(slice(o, o + s) for o, s in zip(ints_of(op.offsets), ints_of(op.sizes)))].contiguous(),)
    table[d["rmsnorm"]] = _rmsnorm
    table[d["scaled_matmul"]] = lambda it, op, a: (cast_tensor(
        matmul_f32(a[0], a[1].to(a[0].dtype), False, _cache(it)) * a[2].float(), _out_dtype(op)),)
    for kind in ("to_tokens", "from_tokens"):  # reshapes in value
        table[d[kind]] = lambda it, op, a: (a[0].reshape(shape_of(op.result.type)),)
    table[d["rope"]] = _rope
    table[d["sparse_attention"]] = lambda it, op, a: (
        cast_tensor(sparse_attention(*a, op.scale.value.data), _out_dtype(op)),)
    table[d["cache_attention"]] = _cache_attention
    table[d["compress_pool"]] = _compress_pool
    return table


def _view(it, op, a):
    src = a[0]
    n = len(op.offsets)
    offs, valid = a[1:1 + n], a[1 + n:]
    shape = shape_of(op.result.type)
    valid = valid or [min(s, d - o) for s, d, o in zip(shape, src.shape, offs)]
    valid = [max(0, min(int(v), s)) for v, s in zip(valid, shape)]
    for o, v, d in zip(offs, valid, src.shape):
        if v and (o < 0 or o + v > d):
            raise InterpretError(f"view [{o}, {o + v}) out of bounds of a dim of size {d}")
    if tuple(valid) == tuple(shape):  # no padding: a slice (values are immutable, aliasing is safe)
        return (src[tuple(slice(o, o + v) for o, v in zip(offs, valid))],)
    out = torch.full(shape, _pad_value(src.dtype, op.pad.data), dtype=src.dtype)
    out[tuple(slice(0, v) for v in valid)] = src[tuple(slice(o, o + v) for o, v in zip(offs, valid))]
    return (out,)


def _owned(value) -> bool:
    """A tensor the interpreter may update in place: produced by an op of this run and used only here."""
    if not value.has_one_use():
        return False
    if isinstance(value, OpResult):
        return isinstance(value.op, tl.AssembleOp | tl.TILE["full"] | tl.ParallelOp)
    if not isinstance(value, BlockArgument):
        return False
    loop = value.owner.parent_op()
    if isinstance(loop, tl.ParallelOp):
        return True
    if isinstance(loop, scf.ForOp) and value.index > 0:
        # an scf.for carry (pto-plan-memory's chunk loops assemble into the token's outputs): the first trip
        # gets the init value, the later ones what the body yields, so both must be owned
        init = loop.operands[2 + value.index]
        yielded = loop.body.block.last_op.operands[value.index - 1]
        fresh = yielded is value or (isinstance(yielded, OpResult) and yielded.has_one_use()
                                     and isinstance(yielded.op, tl.AssembleOp | tl.TILE["full"]))
        return fresh and _owned(init)
    return False


def _assemble(it, op, a):
    tile, dest = a[0], a[1]
    n = len(op.offsets)
    offs, valid = a[2:2 + n], a[2 + n:]
    valid = valid or list(tile.shape)
    valid = [max(0, min(int(v), s, d - o)) for v, s, d, o in zip(valid, tile.shape, dest.shape, offs)]
    out = dest if _owned(op.dest) else dest.clone()
    out[tuple(slice(o, o + v) for o, v in zip(offs, valid))] = tile[tuple(slice(0, v) for v in valid)]
    return (out,)


def _parallel(it, op, a):
    lower, upper, *carried = a
    carried = [c.clone() for c in carried]  # iterations write disjoint rows of private copies
    loops = getattr(it, "attnc_token_loops", None)
    for row in range(lower, upper, op.rows.value.data):
        if loops is not None:  # a top-k resolver is told which token rows an iteration's tiles hold
            loops.append((row, upper))
        try:
            carried = list(it.run_ssacfg_region(op.body, (row, *carried), "tile.parallel"))
        finally:
            if loops is not None:
                loops.pop()
    return tuple(carried)


def _tile_impls() -> dict:
    d = tl.TILE
    table = _shared_impls(d, "tile")
    table[d["view"]] = _view
    table[d["assemble"]] = _assemble
    table[d["topk_pairs"]] = _topk_pairs
    table[d["fill_padding"]] = lambda it, op, a: (a[0],)  # a view's padding already holds its pad value
    table[d["fill"]] = lambda it, op, a: (
        torch.full(shape_of(op.result.type), op.value.value.data, dtype=torch_dtype(_out_dtype(op))),)
    table[d["read"]] = lambda it, op, a: (int(a[0][tuple(a[1:])]),)
    table[d["matmul_acc"]] = lambda it, op, a: (
        cast_tensor(a[0].float() + matmul_f32(a[1], a[2], op.transpose_b.value.data, _cache(it)), _out_dtype(op))
        if a[0].dtype.is_floating_point else a[0] + matmul_f32(a[1], a[2], op.transpose_b.value.data).to(a[0].dtype),)
    for kind in tl.ROW_REDUCTIONS:
        table[d[kind]] = lambda it, op, a, kind=kind: (_reduce(kind.split("_")[1], a[0], -1),)
    for kind in tl.EXPAND_KINDS:
        bk = kind
        table[d[f"row_expand_{kind}"]] = lambda it, op, a, bk=bk: (_binary(bk, a[0], a[1]),)
        table[d[f"col_expand_{kind}"]] = lambda it, op, a, bk=bk: (_binary(bk, a[0], a[1]),)
    table[d["floor"]] = lambda it, op, a: (torch.floor(a[0]),)
    table[d["adds"]] = lambda it, op, a: ((a[0] + op.scalar.value.data).to(a[0].dtype),)
    table[d["muls"]] = lambda it, op, a: ((a[0] * op.scalar.value.data).to(a[0].dtype),)
    table[d["maxs"]] = lambda it, op, a: (a[0].clamp(min=op.scalar.value.data),)
    table[d["parallel"]] = _parallel
    return table


def _index_impls() -> dict:
    return {
        arith.MinSIOp: lambda it, op, a: (min(a[0], a[1]),),
        arith.MaxSIOp: lambda it, op, a: (max(a[0], a[1]),),
        arith.CeilDivSIOp: lambda it, op, a: (-(-a[0] // a[1]),),
    }


def _located(fn):
    def run(self, interpreter, op, args):
        try:
            return fn(interpreter, op, args)
        except InterpretError as e:
            if str(e).startswith(op_location(op)):
                raise
            raise InterpretError(f"{op_location(op)}: '{op.name}': {e}") from None
        except Exception as e:  # torch errors (bad shapes, indices) become one located line
            raise InterpretError(f"{op_location(op)}: '{op.name}': {str(e).splitlines()[0]}") from None

    return run


def _functions_class():
    body = {}
    for i, (op_type, fn) in enumerate({**_tensor_impls(), **_tile_impls(), **_index_impls()}.items()):
        body[f"run_{i}"] = impl(op_type)(_located(fn))

    def run_yield(self, interpreter, op, args):
        return ReturnedValues(args), ()

    body["run_yield"] = impl_terminator(tl.YieldOp)(run_yield)
    return register_impls(type("AttncFunctions", (InterpreterFunctions,), body))


AttncFunctions = _functions_class()


def make_interpreter(module: ModuleOp) -> Interpreter:
    it = Interpreter(module)
    for fns in (FuncFunctions(), ArithFunctions(), ScfFunctions(), AttncFunctions()):
        it.register_implementations(fns)
    return it


def run_module(module: ModuleOp, inputs: Sequence[torch.Tensor], topk=None) -> tuple[torch.Tensor, ...]:
    """Call the module's single function with positional torch tensors (the caller's tensors are not modified).

    `topk`: an optional resolver, called for every execution of a `topk` op with a `TopkCall` (scores, valid, k,
    the global token rows of the leading positions, which rows are live, the op); it returns the int32 picks
    [..., k] the op yields (`call.default()` is the interpreter's own). Without it the op is `topk_indices`."""
    fn = entry_function(module)
    it = make_interpreter(module)
    it.attnc_weights = _WeightCache(inputs)
    if topk is not None:
        it.attnc_topk = topk
        it.attnc_token_loops = []
    return tuple(it.call_op(fn.sym_name.data, tuple(inputs)))
