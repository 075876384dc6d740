"""Packed token-major batches (issue 8 §2): `--set layout=packed --set tokens=T` gives every stage and layer kind
per-token arrays [T, ...], position_ids [T] and cu_seqlens [B+1] in place of [B, S, ...] and start_pos. A packed
call must give bit-identical outputs, caches and states to separate dense calls per row (batch 1, seq = the row's
token count, start_pos = its first position), rows of 0 tokens included; the host checks the row contract."""
from __future__ import annotations

import functools

import pytest
import torch

from attnc.ir.dsl import build_stage, stage_params
from attnc.ir.interpreter import run_module
from attnc.kernels_src import STAGES, resolve_config
from attnc.kernels_src.inputs import IndexInputError, make_inputs
from attnc.passes import DEFAULT_PIPELINE
from attnc.passes.verify import normalised_error, run_pipeline

ALL_STAGES = ["qkv_proj_rope", "sparse_attn_core", "hca_attn_core", "sparse_attn", "compressor",
              "index_compressor", "indexer", "decode_swa", "decode_hca", "decode_csa"]
MIXED = [1, 3, 0, 2]  # a decode row, an MTP verify of 3, an idle row, 2 tokens


def cu_of(lengths) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def packed_cfg(lengths, **extra) -> dict:
    overrides = [f"batch={len(lengths)}", "layout=packed", f"tokens={max(1, sum(lengths))}"]
    return resolve_config("tiny", overrides + [f"{k}={v}" for k, v in extra.items()])


@functools.lru_cache(maxsize=None)
def _module(name: str, key: tuple, level: str = "tensor"):
    cfg = resolve_config("tiny", list(key))
    module = build_stage(STAGES[name], cfg)
    if level == "tile":
        run_pipeline(module, DEFAULT_PIPELINE)
    return module


def run(name: str, cfg: dict, inputs: dict, level: str = "tensor") -> dict:
    key = tuple(f"{k}={cfg[k]}" for k in ("batch", "seq", "layout", "tokens", "max_pos") if k in cfg)
    module = _module(name, key, level)
    names = list(stage_params(STAGES[name], cfg))
    return dict(zip(STAGES[name].outputs, run_module(module, [inputs[n] for n in names])))


def per_row_reference(name: str, cfg: dict, packed_in: dict, level: str = "tensor") -> dict:
    """The packed outputs assembled from one dense call per non-empty row; rows of 0 tokens keep their state."""
    st = STAGES[name]
    dense_params = st.params
    per_row_state = {n for n in st.outputs if n in dense_params}
    cu, pos = packed_in["cu_seqlens"].tolist(), packed_in["position_ids"]
    out = {n: packed_in[n].clone() for n in per_row_state}
    token_outs: dict[str, list] = {}
    for b in range(len(cu) - 1):
        lo, hi = cu[b], cu[b + 1]
        if hi == lo:
            continue
        dcfg = resolve_config("tiny", [f"batch=1", f"seq={hi - lo}", f"max_pos={cfg['max_pos']}"])
        dense_in = {}
        for n, p in dense_params.items():
            if n == "start_pos":
                dense_in[n] = pos[lo:lo + 1].clone()
            elif p.dims[:2] == ("batch", "seq"):
                dense_in[n] = packed_in[n][lo:hi].unsqueeze(0)
            elif p.dims[:1] == ("batch",):
                dense_in[n] = packed_in[n][b:b + 1]
            else:
                dense_in[n] = packed_in[n]
        res = run(name, dcfg, dense_in, level)
        for n, v in res.items():
            if n in per_row_state:
                out[n][b] = v[0]
            else:
                token_outs.setdefault(n, []).append(v[0])
    for n, parts in token_outs.items():
        out[n] = torch.cat(parts, 0)
    return out


def assert_same(packed: dict, reference: dict, T: int):
    for n, ref in reference.items():
        got = packed[n][:T] if packed[n].shape[0] != ref.shape[0] else packed[n]
        assert got.shape == ref.shape, (n, got.shape, ref.shape)
        if n == "index_score":
            # the dense indexer sums its heads in an f32 product per batch row, the packed one in a row sum per
            # token: the same terms in another f32 order (the picks below stay equal)
            fill = ref == torch.finfo(torch.float32).min  # invisible entries (NOT_VISIBLE)
            assert torch.equal(fill, got == torch.finfo(torch.float32).min), n
            assert normalised_error(got[~fill], ref[~fill]) <= 1e-6, n
            continue
        assert torch.equal(got, ref), f"{n}: max |diff| {(got.float() - ref.float()).abs().max().item()}"


def check_packed(name: str, lengths, seed: int = 0, starts=None, level: str = "tensor"):
    cfg = packed_cfg(lengths, max_pos=256 if name in ("decode_hca", "hca_attn_core") else 64)
    given = {"cu_seqlens": cu_of(lengths)}
    if starts is not None:
        given["start_pos"] = torch.tensor(starts, dtype=torch.int32)
    inputs = make_inputs(STAGES[name], cfg, seed, given)
    packed = run(name, cfg, inputs, level)
    assert_same(packed, per_row_reference(name, cfg, inputs, level), sum(lengths))
    return inputs, packed


@pytest.mark.parametrize("name", ALL_STAGES)
def test_packed_equals_per_row_calls(name):
    check_packed(name, MIXED, seed=3)


@pytest.mark.parametrize("name", ["decode_swa", "decode_hca", "decode_csa"])
def test_packed_layers_at_block_edges_and_ring_wrap(name):
    # rows whose tokens complete compressed blocks mid-step, wrap the window ring and start at position 0
    check_packed(name, [3, 1, 0, 2], seed=5, starts=[2, 0, 7, 126] if name == "decode_hca" else [2, 0, 7, 14])


def test_packed_randomized_mix():
    gen = torch.Generator().manual_seed(11)
    for trial in range(4):
        name = ["decode_csa", "decode_swa", "compressor", "indexer"][trial]
        lengths = torch.randint(0, 4, (int(torch.randint(1, 5, (1,), generator=gen)),), generator=gen).tolist()
        if sum(lengths) == 0:
            lengths[0] = 1
        check_packed(name, lengths, seed=100 + trial)


@pytest.mark.parametrize("name", ["decode_csa", "decode_hca"])
def test_packed_tile_level_equals_per_row_tile_level(name):
    check_packed(name, MIXED, seed=2, level="tile")


def test_packed_steps_carry_state_like_dense_steps():
    """Two packed steps (rows of 1, 3, 0, 2 tokens, then 2, 1, 1, 0) equal dense per-row steps: the state one
    packed step returns is what the next takes."""
    cfg1 = packed_cfg([1, 3, 0, 2])
    first = make_inputs(STAGES["decode_csa"], cfg1, 4, {"cu_seqlens": cu_of([1, 3, 0, 2]),
                                                       "start_pos": torch.tensor([5, 0, 9, 11], dtype=torch.int32)})
    out1 = run("decode_csa", cfg1, first)
    cfg2 = packed_cfg([2, 1, 1, 0])
    second = make_inputs(STAGES["decode_csa"], cfg2, 5, {"cu_seqlens": cu_of([2, 1, 1, 0]),
                                                        "start_pos": torch.tensor([6, 3, 9, 13], dtype=torch.int32)})
    second.update({n: out1[n] for n in STAGES["decode_csa"].outputs if n in second and n != "cmp_idx"})
    for k in ("wq_a", "wq_b", "wkv", "wo_a", "wo_b", "wi_q", "wi_w", "wc_kv", "wc_gate", "wic_kv", "wic_gate"):
        second[k] = first[k]
    assert_same(run("decode_csa", cfg2, second), per_row_reference("decode_csa", cfg2, second), 4)


@pytest.mark.parametrize("cu,pos,message", [
    ([1, 1, 4, 4, 6], None, r"'cu_seqlens'\[0\]: value 1, expected 0"),
    ([0, 3, 2, 4, 6], None, r"'cu_seqlens'\[2\]: value 2 < cu_seqlens\[1\] = 3"),
    ([0, 1, 4, 4, 5], None, r"'cu_seqlens'\[4\]: value 5, expected the token count 6"),
    ([0, 1, 4, 4, 7], None, r"'cu_seqlens'\[4\]: value 7 outside \[0, 6\]"),
    ([0, 1, 4, 4, 6], [3, 7, 8, 10, 0, 1], r"'position_ids'\[3\]: value 10, expected 9"),
    ([0, 1, 4, 4, 6], [3, 7, 8, 9, 63, 64], r"'position_ids'\[5\]: value 64 outside \[0, 63\]"),
])
def test_packed_rows_are_checked_on_the_host(cu, pos, message):
    cfg = packed_cfg(MIXED)
    given = {"cu_seqlens": torch.tensor(cu, dtype=torch.int32)}
    if pos is not None:
        given["position_ids"] = torch.tensor(pos, dtype=torch.int32)
    with pytest.raises(IndexInputError, match=message):
        make_inputs(STAGES["decode_csa"], cfg, 0, given)


def test_packed_config_contract():
    cfg = packed_cfg(MIXED)
    params = stage_params(STAGES["decode_csa"], cfg)
    assert params["x"].resolve(cfg) == (6, cfg["dim"]) and "start_pos" not in params
    assert params["position_ids"].resolve(cfg) == (6,) and params["cu_seqlens"].resolve(cfg) == (5,)
    assert params["kv_ring"].resolve(cfg) == (4, cfg["window"], cfg["head_dim"])
    with pytest.raises(Exception, match="tokens is the token count of the packed layout"):
        resolve_config("tiny", ["tokens=3"])


# ------------------------------------------------------------------------------------------ the CLI


PACKED_CLI = ["--config", "tiny", "--set", "layout=packed", "--set", "batch=4", "--set", "tokens=6"]


def cli(capsys, *argv):
    from attnc.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code, err, pattern):
    lines = [line for line in err.splitlines() if line.startswith("attnc: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert __import__("re").search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("extra,pattern", [
    (["--seqlens", "1,3,0"], r"--seqlens: 3 token counts for batch=4 rows"),
    (["--seqlens", "1,3,0,1"], r"'cu_seqlens'\[4\]: value 5, expected the token count 6"),
    (["--start-pos", "62"], r"'position_ids'\[2\]: value 64 outside \[0, 63\]"),
    (["--start-pos", "1,2"], r"--start-pos: 2 positions for batch=4 rows"),
    (["--seqlens", "1,x"], r"invalid list '1,x'"),
])
def test_cli_refuses_bad_packed_rows_with_one_line(capsys, tmp_path, extra, pattern):
    code, _, err = cli(capsys, "run", "decode_swa", *PACKED_CLI, *extra, "--out", str(tmp_path / "o.npz"))
    one_error(code, err, pattern)
    assert not (tmp_path / "o.npz").exists()


def test_cli_refuses_a_bad_cu_seqlens_file(capsys, tmp_path):
    import numpy as np

    np.savez(tmp_path / "in.npz", cu_seqlens=np.array([0, 4, 1, 4, 6], dtype=np.int32))
    code, _, err = cli(capsys, "run", "decode_swa", *PACKED_CLI, "--inputs", str(tmp_path / "in.npz"))
    one_error(code, err, r"in\.npz: .*'cu_seqlens'\[2\]: value 1 < cu_seqlens\[1\] = 4")
    code, _, err = cli(capsys, "run", "decode_swa", "--config", "tiny", "--seqlens", "1,1")
    one_error(code, err, r"--seqlens: decode_swa is not built in the packed layout")


def test_cli_packed_steps_equal_steps_chained_through_state(capsys, tmp_path):
    """`--steps 2` (each row's positions advance by its token count) equals a step, then a step given the first
    one's in/out arrays with --state and the advanced --start-pos: what a serving loop passes on."""
    import numpy as np

    d = str(tmp_path)
    base = ["decode_csa", *PACKED_CLI]
    assert cli(capsys, "inputs", *base, "--seqlens", "3,2,1,0", "--start-pos", "0,4,9,2", "-o", f"{d}/s1.npz")[0] == 0
    assert cli(capsys, "run", *base, "--inputs", f"{d}/s1.npz", "--steps", "2", "--out", f"{d}/two.npz")[0] == 0
    assert cli(capsys, "run", *base, "--inputs", f"{d}/s1.npz", "--out", f"{d}/o1.npz")[0] == 0
    with np.load(f"{d}/s1.npz") as s1:
        step2 = dict(s1)
    step2["x"] = np.asarray(__import__("attnc.io").io.seeded_tensor_for_type(
        build_stage(STAGES["decode_csa"], packed_cfg([3, 2, 1, 0])).body.block.first_op.args[0].type,
        torch.Generator().manual_seed(1)).float())
    np.savez(f"{d}/s2.npz", **step2)
    assert cli(capsys, "run", *base, "--inputs", f"{d}/s2.npz", "--state", f"{d}/o1.npz", "--start-pos", "3,6,10,2",
               "--out", f"{d}/o2.npz")[0] == 0
    with np.load(f"{d}/two.npz") as a, np.load(f"{d}/o2.npz") as b:
        assert set(a.files) == set(b.files)
        for n in a.files:
            assert np.array_equal(a[n], b[n]), n


def test_packed_ir_is_deterministic_and_token_parallel():
    from attnc.ir import print_ir

    cfg = packed_cfg(MIXED)
    texts = []
    for _ in range(2):
        module = build_stage(STAGES["decode_csa"], cfg)
        run_pipeline(module, DEFAULT_PIPELINE)
        texts.append(print_ir(module))
    assert texts[0] == texts[1]
    assert "tile.parallel" in texts[0] and "attn.cache_attention" not in texts[0]


@pytest.mark.parametrize("kind", ["swa", "csa"])
def test_packed_paged_layer_equals_packed_dense_layer(kind):
    """layout=packed composes with the paged layer kinds: decode_*_paged with shuffled block tables, rows of
    1, 3, 0, 2 tokens, equals the packed dense-cache layer on the same logical rows, outputs and caches."""
    from tests.test_paged import POOLS, from_pool, to_pool

    cfg = packed_cfg(MIXED)
    dense, paged = STAGES[f"decode_{kind}"], STAGES[f"decode_{kind}_paged"]
    pcfg = paged.configure(cfg)
    d_in = make_inputs(dense, cfg, 21, {"cu_seqlens": cu_of(MIXED)})
    p_in = {**{k: v for k, v in d_in.items() if k not in POOLS},
            **{k: v for k, v in make_inputs(paged, cfg, 22, {"cu_seqlens": cu_of(MIXED)}).items()
               if k.endswith("_block_table")}}
    size = pcfg["block_size"]
    for name, (table, _) in POOLS.items():
        if name in stage_params(paged, cfg):
            p_in[name] = to_pool(d_in[name], p_in[table], size, pcfg["ring_pool" if table == "ring_block_table"
                                                                     else "cmp_pool"])
    d_out = run(f"decode_{kind}", cfg, d_in)
    p_out = dict(zip(paged.outputs, run_module(build_stage(paged, cfg), [p_in[n] for n in stage_params(paged, cfg)])))
    for name, want in d_out.items():
        got = p_out[name]
        if name in POOLS:
            table, length = POOLS[name]
            got = from_pool(got, p_in[table], size, pcfg[length])
        assert torch.equal(got, want), name
