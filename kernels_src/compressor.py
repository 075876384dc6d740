"""Stages compressor and index_compressor: softmax-gated pooling of m token rows into one compressed entry.

Per token p: a_p = xn_p @ W_kv and z_p = xn_p @ W_gate + APE[p mod m] (f32). Entry w pools, channel by
channel, the slots of block w (m = 128: its m rows; m = 4, overlapping: block w-1's A-half [:d] and block w's
B-half [d:], entry 0 only its own 4) with a softmax over the slot scores; then RMSNorm and RoPE at the block's
first position w*m; the indexer's variant stores the key Hadamard-rotated (batch-major steps: all stated by
attn.compress_pool, so a schedule runs them on the completing rows alone).

State: kv_state / score_state [B, R, c*d] f32 is a position ring (R = 2m with overlap, else m; slot p mod R holds
a_p / z_p). Every token of a step computes its candidate entry from the rows of positions t-R+1 .. t (ring for
earlier steps, the step's own rows for this one); the token that completes block w ((t+1) mod m == 0) stores it
at cache slot w, so a block may complete in the middle of a step and later tokens of the step see it.
"""
import math

from attnc.ir.dsl import (
    In, PackedRows, block_start_positions, cast, compress_pool, concat, exp, from_tokens, gather_rows, iota, matmul, maximum, reduce, reshape,
    rmsnorm, rope, select, slice_, stage, to_tokens, token_positions, transpose,
)

from .configs import with_compress_ratio
from .rings import ring_store, ring_window, store_completed

_ABSENT = -1.0e30  # score of a slot before position 0: exp() makes its weight exactly 0


def hadamard_signs(n: int):
    """[n, n] bf16 Sylvester Hadamard signs (-1)^popcount(i & j) (exact in bf16; scaled by n^-1/2 after the
    matmul, which keeps the rotation orthonormal without a rounded 2^-3.5 weight)."""
    i, j = iota((n, n), 0), iota((n, n), 1)
    parity = (i % 2) * (j % 2)  # popcount(i & j) = sum over bits of bit(i) * bit(j)
    for bit in range(1, int(math.log2(n))):
        parity = parity + ((i // (1 << bit)) % 2) * ((j // (1 << bit)) % 2)
    return cast(cast(1 - (parity % 2) * 2, "f32"), "bf16")


def _over_slots(xs, combine):
    """Combine [T, n, d] tensors over their slots (axis 1, n a power of two) into [T, 1, d]: the tensors in turn,
    then halves of the slot axis pairwise. Elementwise on views of the window (channels stay the contiguous axis):
    no transpose, no reduction across tiles, and one fixed order of the f32 sums."""
    acc = xs[0]
    for x in xs[1:]:
        acc = combine(acc, x)
    while acc.shape[1] > 1:
        T, n, d = acc.shape
        acc = combine(slice_(acc, (0, 0, 0), (T, n // 2, d)), slice_(acc, (0, n // 2, 0), (T, n // 2, d)))
    return acc


def _pool_slots(rows, valid, parts, n: int, dim: int, width: int):
    """Softmax-gated pooling over the slots of `parts` ((first row, first channel) of n window rows each), on
    [T, n, d] views of the window `rows` [T, R, a|z] with slots on axis 1 (channels stay contiguous): [T, 1, d].
    Absent slots (before position 0) score _ABSENT, so their weight is exactly 0."""
    T = rows.shape[0]
    values, scores = [], []
    for first, col in parts:
        ok = reshape(slice_(valid, (0, first), (T, n)), (T, n, 1))
        values.append(slice_(rows, (0, first, col), (T, n, dim)))
        scores.append(select(ok, slice_(rows, (0, first, width + col), (T, n, dim)), _ABSENT))
    top = _over_slots([_over_slots([s], maximum) for s in scores], maximum)
    weights = [exp(s - top) for s in scores]
    return (_over_slots([w * v for w, v in zip(weights, values)], lambda x, y: x + y)
            / _over_slots(weights, lambda x, y: x + y))


def _packed_pool(cfg, a, z, kv_state, score_state, start_pos, ratio: int, dim: int):
    """The packed layout's pooled candidate of every token [T, 1, dim] (a block's entry at its completing token):
    its window of positions t-R+1 .. t gathered from [state | step rows] and pooled over its slots."""
    T = cfg["tokens"]
    ring, width = kv_state.shape[1], kv_state.shape[2]
    step = from_tokens(concat([a, z], axis=1))
    state = concat([kv_state, score_state], axis=2)
    rows, valid = ring_window(cfg, state, step, start_pos, ring)  # [T, R, a|z]: positions t-R+1 .. t, oldest first
    if ratio == 4:  # block w-1's A-half [:d] in the first m rows, block w's B-half [d:] in the last m rows
        return _pool_slots(rows, valid, [(0, 0), (ratio, dim)], ratio, dim, width)
    values = transpose(slice_(rows, (0, 0, 0), (T, ring, dim)), (0, 2, 1))
    scores = transpose(slice_(rows, (0, 0, width), (T, ring, dim)), (0, 2, 1))
    scores = select(reshape(valid, (T, 1, ring)), scores, _ABSENT)  # slots before position 0 are absent
    weights = exp(scores - reduce(scores, "max", -1))
    return reduce(weights * values, "sum", -1) / reduce(weights, "sum", -1)


def compress(cfg, xn, w_kv, w_gate, ape, norm_w, kv_state, score_state, cache, start_pos, rope_cos, rope_sin,
             ratio: int, dim: int, rotate: bool, rows_of=None):
    """One step of a compressor: (kv_state', score_state', cache'). xn [T, model dim] bf16 (attn_norm output).
    `rows_of`: the cache's row ids of slots (a paged cache's block table, paged.py); default dense [B, N, d]."""
    S, T, eps = cfg["seq"], cfg["tokens"], cfg["norm_eps"]
    pos = token_positions(start_pos, S)
    # the two projections read the same rows and run at once: each gets half of the cube cores (tile-matmul)
    a = matmul(xn, w_kv, side_by_side=2)
    z = matmul(xn, w_gate, side_by_side=2) + gather_rows(ape, to_tokens(pos % ratio))
    if isinstance(start_pos, PackedRows):
        pooled = _packed_pool(cfg, a, z, kv_state, score_state, start_pos, ratio, dim)
        normed = rmsnorm(reshape(pooled, (T, dim)), norm_w, eps, out="f32")
        first = to_tokens(block_start_positions(pos, ratio))
        entry = rope(normed, rope_cos, rope_sin, first, out="bf16")
        if rotate:
            entry = cast(matmul(entry, hadamard_signs(dim)) * (1.0 / math.sqrt(dim)), "bf16")
        entry = from_tokens(entry)
    else:  # the block each completing token pools, from the state rings in place, and its entry (the same
        # RMSNorm, RoPE and rotation, stated with the pooling so schedule-compressor runs them on pooled rows only)
        entry = compress_pool(from_tokens(a), from_tokens(z), kv_state, score_state, start_pos, ratio, dim,
                              entry_of=(norm_w, rope_cos, rope_sin) + ((hadamard_signs(dim),) if rotate else ()),
                              eps=eps, rotate_scale=1.0 / math.sqrt(dim) if rotate else None)
    new_cache = store_completed(cfg, cache, entry, start_pos, ratio, rows_of, cfg["n_cmp"])
    return (ring_store(cfg, kv_state, from_tokens(a), start_pos), ring_store(cfg, score_state, from_tokens(z), start_pos),
            new_cache)


def _compressor_params(prefix: str, state: str, dim_key: str, width_key: str, rows, ratio, cache: str) -> dict:
    return {
        "xn": In("batch", "seq", "dim"),
        f"w{prefix}_kv": In("dim", width_key), f"w{prefix}_gate": In("dim", width_key),
        f"{prefix}_ape": In(ratio, width_key, dtype="f32"), f"{prefix}_norm_w": In(dim_key, dtype="f32"),
        f"{state}kv_state": In("batch", rows, width_key, dtype="f32"),
        f"{state}score_state": In("batch", rows, width_key, dtype="f32"),
        cache: In("batch", "n_cmp", dim_key),
        "start_pos": In("batch", dtype="i32"),
        "rope_cos": In("max_pos", "rope_half", dtype="f32"),
        "rope_sin": In("max_pos", "rope_half", dtype="f32"),
    }


MAIN_PARAMS = _compressor_params("c", "", "head_dim", "cmp_width", "cmp_rows", "compress_ratio", "kv_cmp")
INDEX_PARAMS = _compressor_params("ic", "i", "index_dim", "index_width", 8, 4, "idx_cmp")


def main_compressor(cfg, a: dict, xn, rows_of=None):
    """The layer's compressor (d = head_dim, m = the layer's ratio) on named arguments `a`."""
    return compress(cfg, xn, a["wc_kv"], a["wc_gate"], a["c_ape"], a["c_norm_w"], a["kv_state"], a["score_state"],
                    a["kv_cmp"], a["start_pos"], a["rope_cos"], a["rope_sin"], cfg["compress_ratio"],
                    cfg["head_dim"], rotate=False, rows_of=rows_of)


def index_compressor(cfg, a: dict, xn, rows_of=None):
    """The indexer's compressor (d = index_dim, m = 4 with overlap, Hadamard-rotated keys)."""
    return compress(cfg, xn, a["wic_kv"], a["wic_gate"], a["ic_ape"], a["ic_norm_w"], a["ikv_state"],
                    a["iscore_state"], a["idx_cmp"], a["start_pos"], a["rope_cos"], a["rope_sin"], 4,
                    cfg["index_dim"], rotate=True, rows_of=rows_of)


def _needs_ratio(cfg):
    return None if cfg["compress_ratio"] in (4, 128) else "compress_ratio must be 4 or 128"


def _tokens(cfg, xn):
    return to_tokens(xn)


@stage("compressor", outputs=("kv_state", "score_state", "kv_cmp"), needs=_needs_ratio, params=MAIN_PARAMS,
       configure=lambda cfg: with_compress_ratio(cfg, cfg["compress_ratio"]))
def _compressor_stage(cfg, **a):
    """Main compressor step (m = 4 overlapping or 128): state ring update and completed entries to kv_cmp."""
    kv_state, score_state, kv_cmp = main_compressor(cfg, a, _tokens(cfg, a["xn"]))
    return {"kv_state": kv_state, "score_state": score_state, "kv_cmp": kv_cmp}


@stage("index_compressor", outputs=("ikv_state", "iscore_state", "idx_cmp"), params=INDEX_PARAMS,
       configure=lambda cfg: with_compress_ratio(cfg, 4))
def _index_compressor_stage(cfg, **a):
    """Indexer compressor step (d = index_dim, m = 4, Hadamard-rotated keys to idx_cmp)."""
    kv_state, score_state, idx_cmp = index_compressor(cfg, a, _tokens(cfg, a["xn"]))
    return {"ikv_state": kv_state, "iscore_state": score_state, "idx_cmp": idx_cmp}
