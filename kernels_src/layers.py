"""Layer kinds decode_swa, decode_hca, decode_csa: one decode step of a whole attention layer.

qkv_proj_rope -> (compressor; CSA: index compressor and indexer) -> sparse attention over the window and the
visible compressed entries -> output projection -> window ring write. Caches and states are in/out arrays of the
stage (same names in and out), so a caller runs step after step from any start position; the ring is written
after attention and compressed entries are stored as they complete, token by token.

Visible compressed entries: SWA none; HCA every complete entry (no top-k cap); CSA the indexer's picks.
Every rotation of a layer uses the layer's RoPE profile, chosen by its compression ratio (rope tables of
`attnc run` are built for it).
"""
from attnc.ir.dsl import In, from_tokens, stage

from .compressor import INDEX_PARAMS, MAIN_PARAMS, index_compressor, main_compressor
from .configs import with_compress_ratio
from .indexer import INDEXER_PARAMS, index_select
from .qkv_proj_rope import project
from .paged import paged_rows
from .rings import ring_store
from .sparse_attn import attention_core, output_projection

_SHARED = ("xn", "start_pos", "rope_cos", "rope_sin")
_QKV_PARAMS = {
    "x": In("batch", "seq", "dim"),
    "attn_norm_w": In("dim", dtype="f32"),
    "wq_a": In("dim", "q_lora_rank"),
    "q_norm_w": In("q_lora_rank", dtype="f32"),
    "wq_b": In("q_lora_rank", "q_dim", quantizable=True),
    "wkv": In("dim", "head_dim"),
    "kv_norm_w": In("head_dim", dtype="f32"),
}
_ATTN_PARAMS = {
    "kv_ring": In("batch", "window", "head_dim"),
    "attn_sink": In("n_heads", dtype="f32"),
    "wo_a": In("o_groups", "group_in", "o_lora_rank"),
    "wo_b": In("o_cat", "dim"),
    "start_pos": In("batch", dtype="i32"),
    "rope_cos": In("max_pos", "rope_half", dtype="f32"),
    "rope_sin": In("max_pos", "rope_half", dtype="f32"),
}


def _without_shared(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in _SHARED}


LAYER_KINDS = {"swa": 0, "hca": 128, "csa": 4}


def _layer_params(kind: str) -> dict:
    params = dict(_QKV_PARAMS)
    if kind != "swa":
        params.update(_without_shared(MAIN_PARAMS))
    if kind == "csa":
        params.update(_without_shared(INDEX_PARAMS))
        params.update({k: INDEXER_PARAMS[k] for k in ("wi_q", "wi_w")})
    params.update(_ATTN_PARAMS)
    return params


# the paged form: window ring and compressed caches as block pools [num_blocks, block_size, d] with block tables
_PAGED = {
    "kv_ring": In("ring_pool", "block_size", "head_dim"),
    "kv_cmp": In("cmp_pool", "block_size", "head_dim"),
    "idx_cmp": In("cmp_pool", "block_size", "index_dim"),
}
_BLOCK_TABLES = {"ring_block_table": In("batch", "ring_blocks", dtype="i32"),
                 "cmp_block_table": In("batch", "cmp_blocks", dtype="i32")}


def _paged_params(kind: str) -> dict:
    params = {k: _PAGED.get(k, v) for k, v in _layer_params(kind).items()}
    params["ring_block_table"] = _BLOCK_TABLES["ring_block_table"]
    if kind != "swa":
        params["cmp_block_table"] = _BLOCK_TABLES["cmp_block_table"]
    return params


def _layer_outputs(kind: str) -> tuple[str, ...]:
    outs = ("out", "kv_ring")
    if kind != "swa":
        outs += ("kv_state", "score_state", "kv_cmp")
    if kind == "csa":
        outs += ("ikv_state", "iscore_state", "idx_cmp", "cmp_idx")
    return outs


def decode_layer(cfg, kind: str, a: dict, paged: bool = False) -> dict:
    """One layer step. `paged`: kv_ring, kv_cmp and idx_cmp are block pools read (in place) and written through
    ring_block_table / cmp_block_table (paged.py); the computation is the dense one on the same logical rows."""
    q, kv, qr, xn = project(cfg, a["x"], a["attn_norm_w"], a["wq_a"], a["q_norm_w"], a["wq_b"], a["wkv"],
                            a["kv_norm_w"], a["start_pos"], a["rope_cos"], a["rope_sin"], a.get("wq_b_scale"))
    kv_step = from_tokens(kv)
    ring_rows = paged_rows(cfg, a["ring_block_table"]) if paged else None
    cmp_rows = paged_rows(cfg, a["cmp_block_table"]) if paged and kind != "swa" else None

    outs, cmp_idx = {}, None
    if kind != "swa":
        outs["kv_state"], outs["score_state"], outs["kv_cmp"] = main_compressor(cfg, a, xn, cmp_rows)
    if kind == "csa":
        outs["ikv_state"], outs["iscore_state"], outs["idx_cmp"] = index_compressor(cfg, a, xn, cmp_rows)
        _, picks = index_select(cfg, xn, qr, a["wi_q"], a["wi_w"], outs["idx_cmp"], a["start_pos"], a["rope_cos"],
                                a["rope_sin"], cmp_rows, wi_q_scale=a.get("wi_q_scale"))
        cmp_idx = outs["cmp_idx"] = from_tokens(picks)
    # paged: the pools and their block tables, read in place (no copy of a logical table)
    o = attention_core(cfg, from_tokens(q), a["kv_ring"], kv_step, outs.get("kv_cmp"), cmp_idx, a["start_pos"],
                       a["attn_sink"], ring_table=a.get("ring_block_table") if paged else None,
                       cmp_table=a.get("cmp_block_table") if paged else None)
    outs["out"] = output_projection(cfg, o, a["start_pos"], a["rope_cos"], a["rope_sin"], a["wo_a"], a["wo_b"])
    outs["kv_ring"] = ring_store(cfg, a["kv_ring"], kv_step, a["start_pos"], ring_rows, cfg["window"])
    return outs


def _register(kind: str, ratio: int, paged: bool):
    def body(cfg, **a):
        return decode_layer(cfg, kind, a, paged)

    body.__doc__ = {"swa": "Decode step of a sliding-window layer (theta 10000, no YaRN)",
                    "hca": "Decode step of an HCA layer (m = 128, every complete entry visible)",
                    "csa": "Decode step of a CSA layer (m = 4 overlapping, indexer top-k)"}[kind] + \
        (", paged caches (block pools + block tables, block_size)." if paged else ".")
    stage(f"decode_{kind}{'_paged' if paged else ''}", outputs=_layer_outputs(kind),
          params=_paged_params(kind) if paged else _layer_params(kind),
          configure=lambda cfg: with_compress_ratio(cfg, ratio))(body)


for _paged in (False, True):
    for _kind, _ratio in LAYER_KINDS.items():
        _register(_kind, _ratio, _paged)
