"""gather-keys: cache_attention -> every token's keys gathered from a per-batch-row pool + sparse_attention.

The generic schedule: each token gets its own copy of the rows it can see ([T, W + K, d], window oldest first,
then the compressed entries) and a validity mask, so token-parallel passes (tile-softmax, parallelize-tokens)
handle it like any per-token work. The keys and their order are those of the op's definition, so the rewrite
is exact. Consumers that flatten the result back to token rows read the token rows directly."""
from __future__ import annotations

from dataclasses import dataclass

from xdsl.pattern_rewriter import PatternRewriter, RewritePattern, op_type_rewrite_pattern

from attnc.ir import dsl
from attnc.ir.tensor_dialect import ATTN, CacheAttentionOp, cache_entries, cache_window
from attnc.ir.types import dtype_of, shape_of

from . import PatternPass, register
from ._build import T, before


def logical_tables(op: CacheAttentionOp):
    """The ring [B,W,d] and the cache [B,N,d] (or None) as the dense op reads them: a paged one gathered from its
    pool through the block table (this generic schedule copies every token's keys anyway)."""
    ring, cache = T(op.ring), T(op.compressed[0]) if op.compressed else None
    if op.ring_table is not None:
        ring = dsl.paged_table(ring, T(op.ring_table), cache_window(op))
    if op.cache_table is not None:
        cache = dsl.paged_table(cache, T(op.cache_table), cache_entries(op))
    return ring, cache


def window_and_compressed_ids(op: CacheAttentionOp):
    """Local ids [B,S,W+K] into the per-batch-row pool [ring | step | cache] and their visibility."""
    B, S, _, _ = shape_of(op.q.type)
    W = cache_window(op)
    ring, cache = logical_tables(op)
    start_pos = T(op.start_pos)
    t = dsl.reshape(dsl.token_positions(start_pos, S), (B, S, 1))
    sp = dsl.reshape(start_pos, (B, 1, 1))
    p = t - (W - 1) + dsl.iota((B, S, W), 2)  # window positions, oldest first
    local = dsl.select(p >= sp, p - sp + W, dsl.maximum(p, 0) % W)
    valid = p >= 0
    tables = [ring, T(op.step)]
    if op.compressed:
        n = cache.shape[1]
        ids = T(op.compressed[1]) if len(op.compressed) > 1 else dsl.iota((B, S, n), 2)
        complete = dsl.minimum((t + 1) // op.ratio.value.data, n)
        ok = (ids >= 0) & (ids < complete)
        local = dsl.concat([local, dsl.select(ok, ids, 0) + (W + S)], axis=2)
        valid = dsl.concat([valid, ok], axis=2)
        tables.append(cache)
    return tables, local, valid


class _GatherKeys(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: CacheAttentionOp, rewriter: PatternRewriter):
        B, S, H, d = shape_of(op.q.type)
        with before(op), dsl.token_dims((B, S)):
            tables, local, valid = window_and_compressed_ids(op)
            n = local.shape[2]
            kv = dsl.gather_pool(tables, local, (B * S, n))
            o = dsl.sparse_attention(dsl.to_tokens(T(op.q)), kv, dsl.to_tokens(valid), T(op.sink),
                                     op.scale.value.data, out=dtype_of(op.result.type))
            batch_major = dsl.from_tokens(o)
        for use in list(op.result.uses):  # a flatten back to token rows reads the rows directly
            user = use.operation
            if isinstance(user, (ATTN["to_tokens"], ATTN["reshape"])) and user.result.type == o.value.type:
                user.result.replace_all_uses_with(o.value)
                rewriter.erase(user)
        rewriter.replace(op, [], [batch_major.value])


@register
@dataclass(frozen=True)
class GatherKeys(PatternPass):
    name = "gather-keys"
    summary = "cache_attention -> per-token key gather from the [ring | step | cache] pool + sparse_attention"
    tolerance = 0.0

    def pattern(self):
        return _GatherKeys()
