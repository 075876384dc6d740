"""The indexer's dense scoring (kernels_src/indexer.py): the S tokens of a batch row share one product with the
row's entries read in place as the product's rows (no per-token gather), and ReLU, head weight and head sum run as
one vector pass per token over its [B, NC, IH] columns (a last-axis sum: no f32 product, no separate ReLU pass); the
paged layout still gathers through its block table. Values: SIM against the interpreter is
test_pypto_target / test_sim_matrix (indexer cells); this file checks the structure of the compiled module and the
emitter's cube tiles for f32 operands."""
from __future__ import annotations

import re

import pytest

from attnc.codegen.pypto.emit import L0AB_BYTES, L0C_BYTES, cube_tile
from attnc.ir.types import dtype_of, shape_of
from attnc.kernels_src import STAGES, build_stage, resolve_config
from attnc.passes import PYPTO_PIPELINE
from attnc.passes.verify import run_pipeline


def _tile_module(stage: str, cfg: dict):
    mod = build_stage(STAGES[stage], cfg)
    run_pipeline(mod, PYPTO_PIPELINE)
    return mod


def _reads(v, arg) -> bool:
    """v is arg or a reshape of it."""
    while v is not arg and getattr(v, "op", None) is not None and v.op.name == "tile.reshape":
        v = v.op.operands[0]
    return v is arg


def _matmuls(mod):
    return [(tuple(shape_of(o.lhs.type)), dtype_of(o.lhs.type), tuple(shape_of(o.rhs.type)), o.rhs, o)
            for o in mod.walk() if o.name == "tile.matmul"]


def test_dense_scores_read_each_rows_entries_once_in_place():
    cfg = resolve_config("tiny")
    B, S, IH, ID = cfg["batch"], cfg["seq"], cfg["index_heads"], cfg["index_dim"]
    mod = _tile_module("indexer", cfg)
    fn = next(o for o in mod.walk() if o.name == "func.func")
    idx_cmp = fn.body.block.args[list(STAGES["indexer"].params).index("idx_cmp")]
    # no gather reads idx_cmp (or a reshape of it): its rows feed the product directly
    assert not [o for o in mod.walk() if o.name == "tile.gather_rows" and _reads(o.operands[0], idx_cmp)]
    NC = shape_of(idx_cmp.type)[1]  # the entries (n_cmp as the stage configures it)
    scores = [m for m in _matmuls(mod) if _reads(m[4].lhs, idx_cmp)]
    assert len(scores) == 1 and scores[0][0] == (B, NC, ID) and scores[0][2] == (B, S * IH, ID)
    # no f32 product (the old block-diagonal head sum): the head sum is a last-axis sum per token over [B, NC, IH]
    assert not [m for m in _matmuls(mod) if m[1] == "f32" and m[2][-1] == NC]
    sums = [o for o in mod.walk() if o.name == "tile.row_sum" and tuple(shape_of(o.operands[0].type)) == (B, NC, IH)]
    assert len(sums) == S


def test_paged_scores_still_gather_through_the_block_table():
    mod = _tile_module("decode_csa_paged", resolve_config("tiny"))
    gathered = {tuple(shape_of(o.results[0].type))[-1] for o in mod.walk() if o.name == "tile.gather_rows"}
    assert resolve_config("tiny")["index_dim"] in gathered  # index keys [.., index_dim] rows


@pytest.mark.parametrize("m,k,n,in_bytes", [(16, 128, 2048, 4), (128, 64, 32, 4), (32, 1024, 8192, 2),
                                            (128, 128, 2048, 1), (2048, 128, 128, 2), (4096, 64, 96, 4)])
def test_cube_tiles_fit_l0_at_the_operands_width(m, k, n, in_bytes):
    (m0, _), (k0, k1), (n0, _) = [tuple(map(int, g.split(","))) for g in
                                  re.findall(r"\[(\d+, \d+)\]", cube_tile(m, k, n, in_bytes))]
    assert m0 * k0 * in_bytes <= L0AB_BYTES and k0 * n0 * in_bytes <= L0AB_BYTES and m0 * n0 * 4 <= L0C_BYTES
    assert k1 % k0 == 0


def test_cube_m_tile_256_only_where_it_costs_no_n_tile_or_k_step():
    """The Q·Kᵀ per batch row ([2048, 128] · [128, 128]ᵀ) takes 256-row M tiles (half the tasks and key copies);
    a wider N or a longer K keeps 128 rows (256 rows would halve the N tile or the K step)."""
    def m0(m, k, n, in_bytes=2):
        return int(re.match(r"pypto.set_cube_tile_shapes\(\[(\d+),", cube_tile(m, k, n, in_bytes)).group(1))
    assert m0(2048, 128, 128) == 256
    assert m0(2048, 128, 512) == 128 and m0(2048, 512, 128) == 128 and m0(128, 128, 128) == 128


def test_matmuls_state_their_cube_m_tile_and_the_emitter_prints_it():
    """pypto-legalize states each matmul's cube M tile (`m_tile`, tiles.cube_m_tile of its rows); the emitter prints
    that fact, not one it derives from shapes: a changed fact changes the printed tile, and a malformed one is
    refused by the op's verifier."""
    from attnc.codegen.pypto.emit import emit_pypto
    from attnc.codegen.pypto.tiles import cube_m_tile

    mod = _tile_module("indexer", resolve_config("tiny"))
    mms = [o for o in mod.walk() if o.name in ("tile.matmul", "tile.matmul_acc")]
    assert mms and all("m_tile" in o.attributes for o in mms)
    for o in mms:
        sa, sb = shape_of(o.lhs.type), shape_of(o.rhs.type)
        n = sb[-2] if o.transpose_b.value.data else sb[-1]
        n_max = o.attributes["n_tile"].value.data if "n_tile" in o.attributes else None
        in_bytes = {"i8": 1, "f32": 4}.get(dtype_of(o.lhs.type), 2)
        assert o.attributes["m_tile"].value.data == cube_m_tile(sa[-2], sa[-1], n, in_bytes, n_max)
    printed = lambda: re.findall(r"set_cube_tile_shapes\(\[(\d+), (\d+)\]", emit_pypto(mod))  # noqa: E731
    assert {m for m, _ in printed()} == {str(o.attributes["m_tile"].value.data) for o in mms}
    from xdsl.dialects.builtin import IntegerAttr, i64

    for o in mms:
        o.attributes["m_tile"] = IntegerAttr(32, i64)
    assert set(printed()) == {("32", "32")}
    mms[0].attributes["m_tile"] = IntegerAttr(24, i64)
    with pytest.raises(Exception, match="m_tile must be a positive multiple of 16"):
        mms[0].verify()


def test_topks_sort_one_row_per_tile():
    """pypto-legalize states `sort_rows = 1` on each top-k (pypto 0.2.0 sorts a tile's rows one after another and
    runs 4 tiles as one task: flash indexer 167.0 -> 162.4 µs); the emitter prints the top-k's tile with it and the
    select before it keeps the budget's tile."""
    from attnc.codegen.pypto.emit import emit_pypto

    mod = _tile_module("indexer", resolve_config("tiny"))
    topks = [o for o in mod.walk() if o.name == "tile.topk_pairs"]
    assert topks and all(o.attributes["sort_rows"].value.data == 1 for o in topks)
    text = emit_pypto(mod)
    tile_before = lambda line: re.findall(r"set_vec_tile_shapes\(([\d, ]+)\)", text[:text.index(line)])[-1]  # noqa: E731
    topk_line = re.search(r"\n[^\n]*= pypto\.topk\(", text).group(0)
    assert tile_before(topk_line).split(", ")[0] == "1"
    where_line = re.search(r"\n[^\n]*= pypto\.where\([^\n]*-3\.4028", text).group(0)
    assert tile_before(where_line).split(", ")[0] != "1"
