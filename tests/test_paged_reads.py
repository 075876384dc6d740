"""Paged caches read in place (issue 8 §3): cache_attention with block tables equals the dense op on the gathered
logical table bit for bit — at the tensor level (the interpreter's definition), through gather-keys and through
schedule-attention — with shuffled tables, pools larger than the tables map and NaN in every pool row no table maps;
the scheduled paged layers read pool blocks through scalar reads of the block tables, never a whole-table gather."""
from __future__ import annotations

import pytest
import torch

from attnc.ir.dsl import In, StageDef, build_stage, cache_attention
from attnc.ir.interpreter import run_module
from attnc.kernels_src import STAGES, resolve_config
from attnc.kernels_src.inputs import make_inputs
from attnc.passes import DEFAULT_PIPELINE, PYPTO_PIPELINE
from attnc.passes.verify import run_pipeline

B, S, H, D, W, N, K = 2, 2, 4, 32, 8, 6, 4
SCALE = D ** -0.5
LAYOUTS = {"window": 0, "every-entry": 128, "listed": 4}  # ratio; listed: the index lists entries per token


def _stage(ratio: int, listed: bool, size: int | None) -> StageDef:
    """An attention-only stage over dense tables, or (size) paged ones: pools of `size`-row blocks + block tables."""
    params = dict(q=In(B, S, H, D), sink=In(H, dtype="f32"), start_pos=In(B, dtype="i32"), step=In(B, S, D))
    blocks = lambda n: -(-n // size) if size else 0  # noqa: E731
    params["ring"] = In(3 * B * blocks(W), size, D) if size else In(B, W, D)
    if size:
        params["ring_table"] = In(B, blocks(W), dtype="i32")
    if ratio:
        params["cache"] = In(3 * B * blocks(N), size, D) if size else In(B, N, D)
        if size:
            params["cache_table"] = In(B, blocks(N), dtype="i32")
        if listed:
            params["index"] = In(B, S, K, dtype="i32")

    def fn(cfg, **a):
        extra = dict(cache=a["cache"], index=a.get("index"), ratio=ratio) if ratio else {}
        if size:
            extra.update(ring_table=a["ring_table"], window=W)
            if ratio:
                extra.update(cache_table=a["cache_table"], entries=N)
        return {"o": cache_attention(a["q"], a["sink"], a["start_pos"], a["ring"], a["step"], SCALE, "bf16", **extra)}

    return StageDef(f"attn_{'paged' if size else 'dense'}", fn, params, ("o",))


def _dense_inputs(ratio: int, listed: bool, start_pos, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(shape, generator=g).bfloat16()  # noqa: E731
    inputs = dict(q=rnd(B, S, H, D), sink=torch.randn(H, generator=g), start_pos=torch.tensor(start_pos, dtype=torch.int32),
                  step=rnd(B, S, D), ring=rnd(B, W, D))
    if ratio:
        inputs["cache"] = rnd(B, N, D)
        if listed:  # distinct ids in any order, -1 anywhere, some not visible yet
            inputs["index"] = torch.stack([torch.cat([torch.randperm(N, generator=g)[:K - 1], torch.tensor([-1])])
                                           [torch.randperm(K, generator=g)] for _ in range(B * S)]).reshape(B, S, K)
            inputs["index"] = inputs["index"].to(torch.int32)
    return inputs


def _paged(dense: dict, size: int, seed: int) -> dict:
    """The same tables in pools three times as large as the tables map, at shuffled blocks; every other row NaN."""
    g = torch.Generator().manual_seed(seed)
    out = {k: v for k, v in dense.items() if k not in ("ring", "cache")}
    for name, table_name in (("ring", "ring_table"), ("cache", "cache_table")):
        if name not in dense:
            continue
        table = dense[name]
        blocks = -(-table.shape[1] // size)
        pool_blocks = 3 * B * blocks
        ids = torch.randperm(pool_blocks, generator=g)[:B * blocks].reshape(B, blocks).to(torch.int32)
        pool = torch.full((pool_blocks, size, D), float("nan"), dtype=table.dtype)
        for b in range(B):
            for slot in range(table.shape[1]):
                pool[int(ids[b, slot // size]), slot % size] = table[b, slot]
        out[name], out[table_name] = pool, ids
    return out


def _run(stage: StageDef, inputs: dict, pipeline: str | None):
    module = build_stage(stage, resolve_config("tiny"))
    if pipeline:
        report = run_pipeline(module, pipeline, verify_inputs=[inputs[n] for n in stage.params], output_names=("o",))
        assert not report.failed
    return module, run_module(module, [inputs[n] for n in stage.params])[0]


@pytest.mark.parametrize("size", [4, 3])  # 3: W and N are not multiples of the block size (a ragged last block)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_paged_cache_attention_equals_dense_bit_for_bit(layout, size):
    ratio, listed = LAYOUTS[layout], layout == "listed"
    dense_in = _dense_inputs(ratio, listed, [1, 21], 3)  # row 0: little written (the rest of its tables unused)
    paged_in = _paged(dense_in, size, 4)
    dense, paged = _stage(ratio, listed, None), _stage(ratio, listed, size)
    for pipeline in (None, DEFAULT_PIPELINE, PYPTO_PIPELINE):  # the definition, gather-keys, schedule-attention
        _, want = _run(dense, dense_in, pipeline)
        module, got = _run(paged, paged_in, pipeline)
        assert torch.isfinite(got.float()).all()
        assert torch.equal(got, want), pipeline
    # the scheduled paged op reads the pools through scalar reads of the block tables, gathers no whole table
    args = dict(zip(paged.params, module.body.block.first_op.body.block.args))
    reads = [op.source for op in module.walk() if op.name == "tile.read"]
    assert reads.count(args["ring_table"]) == -(-W // size)
    if layout == "every-entry":
        assert reads.count(args["cache_table"]) == -(-N // size)
    gathers = [op for op in module.walk() if op.name == "tile.gather_rows"]
    assert all(op.results[0].type.get_shape()[0] <= K for op in gathers if op.table.type.get_shape()[-1:] == (D,))


def test_block_table_out_of_range_is_an_interpreter_error():
    from attnc.ir.interpreter import InterpretError

    dense_in = _dense_inputs(0, False, [1, 21], 3)
    paged_in = _paged(dense_in, 4, 4)
    paged_in["ring_table"][1, 0] = paged_in["ring"].shape[0]
    with pytest.raises(InterpretError, match=r"block table entry out of range \[0, 12\)"):
        _run(_stage(0, False, 4), paged_in, None)


@pytest.mark.parametrize("kind", ["swa", "hca", "csa"])
def test_scheduled_paged_layer_reads_pool_blocks_in_place(kind):
    """decode_*_paged through the pypto pipeline (--verify-each clean): the attention reads each ring/cache block
    through a scalar read of its block table (W / block_size of them per batch row), the listed picks are gathered
    by physical row (K rows per token), and no op gathers a row's whole logical table."""
    cfg = resolve_config("tiny", {"max_pos": 256})
    stage = STAGES[f"decode_{kind}_paged"]
    scfg = stage.configure(cfg)
    module = build_stage(stage, cfg)
    inputs = make_inputs(stage, cfg, 5)
    report = run_pipeline(module, PYPTO_PIPELINE, verify_inputs=[inputs[n] for n in stage.params],
                          output_names=stage.outputs)
    assert not report.failed
    args = dict(zip(stage.params, module.body.block.first_op.body.block.args))
    loop = next(op for op in module.walk() if op.name == "tile.parallel" and "schedule" in op.attributes)
    reads = [op.source for op in loop.walk() if op.name == "tile.read"]
    blocks = -(-scfg["window"] // scfg["block_size"])
    assert reads.count(args["ring_block_table"]) == blocks  # per token in CSA's token schedule, merged by cse
    if kind == "hca":
        assert reads.count(args["cmp_block_table"]) == -(-scfg["n_cmp"] // scfg["block_size"])
    tables = {(scfg["batch"], n, d) for n in (scfg["window"], scfg["n_cmp"]) for d in (scfg["head_dim"], scfg["index_dim"])}
    whole = [op for op in module.walk() if op.name == "tile.gather_rows" and op.results[0].type.get_shape() in tables]
    assert not whole  # the indexer gathers each token's idx_cmp rows straight from the pool, as the dense layer
    picks = [op for op in loop.walk() if op.name == "tile.gather_rows" and op.table.type.get_shape()[-1] == scfg["head_dim"]]
    assert all(op.results[0].type.get_shape()[0] == scfg["cmp_topk"] for op in picks) and len(picks) == (scfg["seq"] if kind == "csa" else 0)
