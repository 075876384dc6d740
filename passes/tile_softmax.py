"""tile-softmax: attention softmax over all keys -> online softmax over KV tiles.

Per tile: scores in f32, running max/sum/accumulator merged in f32, exp weights rounded to bf16 before P·V and
summed as rounded (pypto-lib §8/§10). A padded or invisible key has weight exactly 0 and its row is zeroed
(garbage·0 could be NaN), so a tile without a visible key never seeds the merge (pypto-lib#448). The sink
enters the denominator only, after the loop. When the keys are gathered rows of a table, the gather moves into
the loop, so the [T, N, d] key tensor is never materialised.

The bf16 rounding of P is a change of numerics, hence a non-zero tolerance."""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.pattern_rewriter import PatternRewriter, RewritePattern, op_type_rewrite_pattern

from attnc.ir import dsl
from attnc.ir.tensor_dialect import ATTN, SparseAttentionOp
from attnc.ir.types import dtype_of

from . import PatternPass, register
from ._build import T, before, const, minsi, muli, peeled_loop, subi, view

F32_MIN = -(2.0 - 2.0**-23) * 2.0**127  # the lowest f32: "minus infinity" that keeps exp(x - m) finite


class _OnlineSoftmax(RewritePattern):
    def __init__(self, kv_tile: int):
        self.kv_tile = kv_tile

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: SparseAttentionOp, rewriter: PatternRewriter):
        q, kv, valid, sink = T(op.q), T(op.kv), T(op.valid), T(op.sink)
        tokens, heads, d = q.shape
        n_keys = kv.shape[1]
        kt = min(self.kv_tile, n_keys)
        n_tiles = -(-n_keys // kt)
        pad = n_tiles * kt - n_keys
        scale = op.scale.value.data
        gather = op.kv.owner if isinstance(op.kv.owner, ATTN["gather_rows"]) else None
        loc = op.attributes.get("loc")
        loc = loc.data if loc is not None else None

        if pad and gather is not None:
            # pad the key list to whole tiles with invalid keys (row 0, weight exactly 0): every tile is full,
            # so no tile needs a runtime valid shape
            with before(op):
                valid = dsl.concat([valid, dsl.full((tokens, pad), 0.0, "i1")], axis=1)
                gather_idx = dsl.concat([T(gather.indices), dsl.full((tokens, pad), 0.0, "i32")], axis=1)
            n_keys += pad
        else:
            gather_idx = T(gather.indices) if gather is not None else None

        def scores(off):
            """(key-valid mask [T,H,kt], masked scores, zeroed kv tile) of the tile starting at key `off`."""
            ragged = n_keys % kt != 0
            count = minsi(subi(n_keys, off), kt) if ragged else None  # keys in the ragged last tile
            valid_t = view(valid, (0, off), (tokens, kt), (tokens, count) if ragged else (), pad="zero")
            if gather is not None:
                rows = view(gather_idx, (0, off), (tokens, kt), (tokens, count) if ragged else (), pad="zero")
                kv_t = dsl.gather_rows(T(gather.table), rows)
            else:
                kv_t = view(kv, (0, off, 0), (tokens, kt, d), (tokens, count, d) if ragged else (), pad="zero")
            kv_t = dsl.select(dsl.reshape(valid_t, (tokens, kt, 1)), kv_t, 0.0)
            key_ok = dsl.broadcast_to(dsl.reshape(valid_t, (tokens, 1, kt)), (tokens, heads, kt))
            s = dsl.matmul(q, kv_t, out="f32", transpose_b=True) * scale
            return key_ok, dsl.select(key_ok, s, F32_MIN), kv_t

        def weights(key_ok, s, m, kv_t):
            p = dsl.select(key_ok, dsl.exp(s - m), 0.0)
            p_lo = dsl.cast(p, kv_t.dtype)  # exp weights rounded before P·V
            return dsl.reduce(dsl.cast(p_lo, "f32"), "sum", -1), dsl.matmul(p_lo, kv_t, out="f32")

        # the first tile seeds the running state (peeled: no -inf/zero initial tiles to merge)
        with before(op):
            key_ok, s, kv_t = scores(const(0))
            m_first = dsl.reduce(s, "max", -1)
            l_first, acc_first = weights(key_ok, s, m_first, kv_t)
            state = [m_first, l_first, acc_first]

        def step(j, m, l, acc):
            key_ok, s, kv_t = scores(muli(j, kt))
            m_new = dsl.maximum(m, dsl.reduce(s, "max", -1))
            l_tile, pv = weights(key_ok, s, m_new, kv_t)
            alpha = dsl.exp(m - m_new)
            return [m_new, l * alpha + l_tile, acc * alpha + pv]

        state = peeled_loop(op, n_tiles, state, step, loc)
        with before(op):
            m_fin, l_fin, acc_fin = state
            sink_b = dsl.broadcast_to(dsl.reshape(sink, (1, heads, 1)), (tokens, heads, 1))
            top = dsl.maximum(m_fin, sink_b)
            keep = dsl.exp(m_fin - top)
            denom = l_fin * keep + dsl.exp(sink_b - top)
            has_mass = denom > 0.0  # no visible key and no sink: output 0, never 0/0
            out = dsl.select(has_mass, (acc_fin * keep) / dsl.select(has_mass, denom, 1.0), 0.0)
            out = dsl.cast(out, dtype_of(op.result.type))
        rewriter.replace(op, [], [out.value])
        if gather is not None and not gather.results[0].uses:
            rewriter.erase(gather)


@register
@dataclass(frozen=True)
class TileSoftmax(PatternPass):
    name = "tile-softmax"
    summary = "attention softmax -> online softmax over KV tiles (f32 merge, bf16 P, sink in the denominator)"
    tolerance = 2e-2
    kv_tile: int = 32

    def pattern(self):
        return _OnlineSoftmax(self.kv_tile)
