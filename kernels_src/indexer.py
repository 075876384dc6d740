"""Stage indexer: the lightning indexer of a CSA layer — scores every compressed entry visible to a token and
picks the top index_topk of them.

q^I_{t,h} = RoPE_t((qr_t @ W_iq)_h) at the token's OWN position (no norm; pypto-lib#462 is unrepresentable: rope
takes per-token positions only), rotated by the same Hadamard as the stored keys so that the dot products equal
the unrotated ones. Head weights w_{t,h} = (xn_t @ W_w)_h / sqrt(index_dim * index_heads), raw (may be
negative). Score I[t,w] = sum_h w_{t,h} * ReLU(q^I_{t,h} . K^I_w) (ReLU per head, before weighting), over the
entries w < min(n_cmp, floor((t+1)/4)) visible to the token itself. Top-k: descending score, ties broken by the
lower entry id (deterministic), -1 where fewer than k entries are visible; invisible entries are never picked.
"""
import math

from attnc.ir.dsl import (
    In, PackedRows, cast, concat, quantize_rows, from_tokens, iota, linear, matmul, minimum, reduce, relu, reshape, rope, select, slice_, stage, to_tokens, token_positions,
    topk,
)

from .compressor import hadamard_signs
from .configs import with_compress_ratio
from .rings import row_entries

NOT_VISIBLE = -3.4028234663852886e38  # index_score of an entry the token may not pick (lowest f32)

INDEXER_PARAMS = {
    "xn": In("batch", "seq", "dim"),
    "qr": In("batch", "seq", "q_lora_rank"),
    "wi_q": In("q_lora_rank", "index_qdim", quantizable=True),
    "wi_w": In("dim", "index_heads"),
    "idx_cmp": In("batch", "n_cmp", "index_dim"),
    "start_pos": In("batch", dtype="i32"),
    "rope_cos": In("max_pos", "rope_half", dtype="f32"),
    "rope_sin": In("max_pos", "rope_half", dtype="f32"),
}


def index_select(cfg, xn, qr, wi_q, wi_w, idx_cmp, start_pos, rope_cos, rope_sin, rows_of=None, wi_q_scale=None):
    """Token rows xn [T, dim], qr [T, q_lora] -> (scores [T, NC] f32, picks [T, K] i32). `rows_of`: idx_cmp is a
    paged pool read through it (paged.py). wi_q may be i8 with its per-channel scales (quant=w8a8)."""
    B, S, T = cfg["batch"], cfg["seq"], cfg["tokens"]
    IH, ID, NC, K = cfg["index_heads"], cfg["index_dim"], cfg["n_cmp"], cfg["cmp_topk"]
    pos = to_tokens(token_positions(start_pos, S))
    q = rope(reshape(linear(qr, wi_q, wi_q_scale, "wi_q"), (T, IH, ID)), rope_cos, rope_sin, pos, out="bf16")
    q = cast(matmul(q, hadamard_signs(ID)) * (1.0 / math.sqrt(ID)), "bf16")
    weights = matmul(xn, wi_w) * (1.0 / math.sqrt(ID * IH))                          # [T, IH]
    if wi_q.dtype == "i8":
        # W8A8 (lightning_indexer_prolog_quant_v4): q re-quantised per (token, head) over its ID values (absmax/127,
        # rint, saturated) with an f16 dequantisation scale; the int8 codes meet the bf16 keys exactly as bf16,
        # and the scale (> 0, so it commutes with the ReLU) joins the head weight
        q, q_scale = quantize_rows(q)                                                # [T, IH, ID] i8, [T, IH, 1]
        q = cast(q, "bf16")
        weights = weights * cast(cast(reshape(q_scale, (T, IH)), "f16"), "f32")
    if rows_of is None and not isinstance(start_pos, PackedRows):
        # dense: the S tokens of a batch row share its entries: one [NC, S*IH] product per row with the keys read
        # in place as its rows (no per-token gather); then per token one vector pass over its IH columns: ReLU,
        # head weight, sum over the last axis (a [B, NC, 1] column, laid out as the [B, 1, NC] score row): the
        # f32 dots are written once and read once
        dots = matmul(idx_cmp, reshape(from_tokens(q), (B, S * IH, ID)), transpose_b=True)  # [B, NC, S*IH]
        w = reshape(from_tokens(weights), (B, S, IH))
        score = to_tokens(concat([reshape(reduce(
            relu(slice_(dots, (0, 0, s * IH), (B, NC, IH))) * slice_(w, (0, s, 0), (B, 1, IH)), "sum", -1),
            (B, 1, NC)) for s in range(S)], axis=1))                                           # [T, NC]
    else:
        keys = row_entries(cfg, idx_cmp, start_pos, rows_of, NC)                     # [T, NC, ID]
        dots = relu(matmul(keys, q, transpose_b=True))                               # [T, NC, IH]
        score = reshape(reduce(dots * reshape(weights, (T, 1, IH)), "sum", -1), (T, NC))
    visible = iota((T, NC), 1) < minimum((reshape(pos, (T, 1)) + 1) // 4, NC)  # per token (pypto-lib#715)
    return select(visible, score, NOT_VISIBLE), topk(score, visible, K)


@stage("indexer", outputs=("index_score", "cmp_idx"), params=INDEXER_PARAMS,
       configure=lambda cfg: with_compress_ratio(cfg, 4))
def _indexer_stage(cfg, **a):
    """Lightning indexer: per-token scores of the visible compressed entries and their top-k ids."""
    B, S, T = cfg["batch"], cfg["seq"], cfg["tokens"]
    score, picks = index_select(cfg, to_tokens(a["xn"]), to_tokens(a["qr"]),
                                a["wi_q"], a["wi_w"], a["idx_cmp"], a["start_pos"], a["rope_cos"], a["rope_sin"],
                                wi_q_scale=a.get("wi_q_scale"))
    return {"index_score": from_tokens(score), "cmp_idx": from_tokens(picks)}
