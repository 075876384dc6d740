"""Token rows are a fact of the IR (attn.to_tokens / attn.from_tokens), so every batch and step size compiles:
the ops themselves (verifier, text round trip, interpreter, lowering), parallelize-tokens reading the fact instead
of shapes, and every stage and layer kind at (batch, seq) in {1, 2, 3}^2 — tile level against the tensor level,
stages and layer kinds against the FP32 references — plus compressed caches of exactly `seq` entries.

The default run covers batch*seq = 1 (the shape that used to be refused) and the caches of `seq` entries; the
rest of the 9-point grid runs with `-m slow`."""
from __future__ import annotations

import functools

import pytest
import torch

from attnc.ir import IRError, parse_ir, print_ir
from attnc.ir.dsl import DSLError, In, StageDef, build_stage, from_tokens, stage_config, to_tokens
from attnc.ir.interpreter import run_module
from attnc.kernels_src import STAGES, resolve_config
from attnc.kernels_src.inputs import make_inputs
from attnc.passes import DEFAULT_PIPELINE, PassError
from attnc.passes.verify import normalised_error, run_pipeline
from tests.layer_harness import CompiledStepDriver, layer_module
from tests.test_layers_vs_reference import check_against_reference
from tests.test_stages_vs_reference import TOLERANCE, reference

ALL_STAGES = ["qkv_proj_rope", "sparse_attn_core", "sparse_attn", "compressor", "index_compressor", "indexer",
              "decode_swa", "decode_hca", "decode_csa"]
GRID = [(b, s) for b in (1, 2, 3) for s in (1, 2, 3)]
DEFAULT_POINTS = {(1, 1)}


def grid(points=GRID):
    return [pytest.param(b, s, id=f"b{b}s{s}", marks=() if (b, s) in DEFAULT_POINTS else pytest.mark.slow)
            for b, s in points]


def ops_named(module, name):
    return [op for op in module.walk() if op.name == name]


# ------------------------------------------------------------------------------------------ the ops


def _module(body: str, args: str, results: str, token_dims=(2, 2)) -> str:
    b, s = token_dims
    return (f'builtin.module {{\n  func.func @f({args}) -> {results} attributes {{token_dims = [{b} : i64, {s} : i64]}} '
            f'{{\n{body}\n  }}\n}}\n')


ROUND_TRIP = _module('''    %0 = "attn.to_tokens"(%x) {loc = "t.py:1"} : (tensor<2x3x8xf32>) -> tensor<6x8xf32>
    %1 = "attn.exp"(%0) : (tensor<6x8xf32>) -> tensor<6x8xf32>
    %2 = "attn.from_tokens"(%1) {loc = "t.py:3"} : (tensor<6x8xf32>) -> tensor<2x3x8xf32>
    func.return %2 : tensor<2x3x8xf32>''', "%x: tensor<2x3x8xf32>", "tensor<2x3x8xf32>", (2, 3))


def test_token_ops_round_trip_and_interpret_as_reshapes():
    module = parse_ir(ROUND_TRIP)
    assert print_ir(parse_ir(print_ir(module))) == print_ir(module)
    x = torch.randn(2, 3, 8)
    (y,) = run_module(module, [x])
    assert torch.equal(y, torch.exp(x))
    run_pipeline(module, "lower-to-tiles")
    assert not ops_named(module, "attn.to_tokens") and len(ops_named(module, "tile.reshape")) == 2
    assert torch.equal(run_module(module, [x])[0], y)


@pytest.mark.parametrize("op,src,dst,message", [
    ("to_tokens", "2x3x8", "3x16", "result must be the token rows"),
    ("to_tokens", "6", "6", r"input must be \[batch, seq, \.\.\.\]"),
    ("from_tokens", "6x8", "3x3x8", "input must be the token rows"),
    ("from_tokens", "6x8", "48", r"result must be \[batch, seq, \.\.\.\]"),
])
def test_token_ops_verify_their_shapes(op, src, dst, message):
    text = _module(f'''    %0 = "attn.{op}"(%x) {{loc = "t.py:7"}} : (tensor<{src}xf32>) -> tensor<{dst}xf32>
    func.return %0 : tensor<{dst}xf32>''', f"%x: tensor<{src}xf32>", f"tensor<{dst}xf32>")
    with pytest.raises(IRError, match=f"t.py:7: 'attn.{op}': {message}"):
        parse_ir(text)


def test_dsl_flattens_only_the_stage_token_dims():
    def fn(cfg, x, y):
        return {"a": from_tokens(to_tokens(x) + 1.0), "b": to_tokens(y)}

    st = StageDef("t", fn, {"x": In("batch", "seq", 4, dtype="f32"), "y": In("seq", "batch", 4, dtype="f32")},
                  ("a", "b"))
    with pytest.raises(DSLError, match=r"to_tokens needs \[batch, seq, \.\.\.\] = \[2, 3\] leading dims"):
        build_stage(st, dict(batch=2, seq=3))
    st.params["y"] = In("batch", "seq", 4, dtype="f32")
    module = build_stage(st, dict(batch=2, seq=3))
    assert len(ops_named(module, "attn.to_tokens")) == 2 and len(ops_named(module, "attn.from_tokens")) == 1


def test_parallelize_tokens_refuses_a_flatten_of_other_dims():
    text = _module('''    %0 = "attn.to_tokens"(%x) {loc = "t.py:9"} : (tensor<3x2x8xf32>) -> tensor<6x8xf32>
    %1 = "attn.exp"(%0) : (tensor<6x8xf32>) -> tensor<6x8xf32>
    %2 = "attn.from_tokens"(%1) : (tensor<6x8xf32>) -> tensor<3x2x8xf32>
    func.return %2 : tensor<3x2x8xf32>''', "%x: tensor<3x2x8xf32>", "tensor<3x2x8xf32>", (2, 3))
    with pytest.raises(PassError, match=r"t.py:9: 'attn.to_tokens' flattens \[3, 2\] rows but the function's token "
                                        r"dims are \[2, 3\]"):
        run_pipeline(parse_ir(text), "parallelize-tokens{rows=2}")


def test_a_plain_reshape_of_batch_seq_shape_is_not_token_rows():
    """[2, 3, 8] -> [6, 8] through attn.reshape (e.g. a cache of `seq` entries flattened into a pool) is batch-major
    work: no token loop is made for it, while the same body through attn.to_tokens gets one."""
    plain = ROUND_TRIP.replace('"attn.to_tokens"', '"attn.reshape"').replace('"attn.from_tokens"', '"attn.reshape"')
    for text, loops in ((plain, 0), (ROUND_TRIP, 1)):
        module = parse_ir(text)
        run_pipeline(module, "parallelize-tokens{rows=4}", verify_inputs=[torch.randn(2, 3, 8)])
        assert len(ops_named(module, "tile.parallel")) == loops


def test_one_token_shares_a_row_of_non_token_data():
    """T = 1: a [1, H, 1] value that is not token rows (a sink reshaped by tile-softmax) meets the token's
    [1, H, 1] row without a broadcast op; every chunk (of one row) uses it whole."""
    text = _module('''    %0 = "attn.to_tokens"(%x) : (tensor<1x1x4x1xf32>) -> tensor<1x4x1xf32>
    %1 = "attn.reshape"(%s) : (tensor<4xf32>) -> tensor<1x4x1xf32>
    %2 = "attn.max"(%0, %1) : (tensor<1x4x1xf32>, tensor<1x4x1xf32>) -> tensor<1x4x1xf32>
    %3 = "attn.from_tokens"(%2) : (tensor<1x4x1xf32>) -> tensor<1x1x4x1xf32>
    func.return %3 : tensor<1x1x4x1xf32>''', "%x: tensor<1x1x4x1xf32>, %s: tensor<4xf32>", "tensor<1x1x4x1xf32>",
                   (1, 1))
    module = parse_ir(text)
    run_pipeline(module, "parallelize-tokens{rows=16}", verify_inputs=[torch.randn(1, 1, 4, 1), torch.randn(4)])
    (loop,) = ops_named(module, "tile.parallel")
    assert loop.rows.value.data == 1


# ------------------------------------------------------------------------------------------ the grid


def _cfg(stage: str, batch: int, seq: int, **overrides) -> dict:
    return stage_config(STAGES[stage], resolve_config("tiny", dict(dict(batch=batch, seq=seq, max_pos=256),
                                                                    **overrides)))


@functools.lru_cache(maxsize=None)
def _tile_module(stage: str, batch: int, seq: int, overrides: tuple = ()):
    """The default-pipeline module (a layer kind's is shared with the layer harness, same config)."""
    if stage.startswith("decode_"):
        return layer_module(stage[len("decode_"):], batch, seq, overrides, DEFAULT_PIPELINE)
    module = build_stage(STAGES[stage], _cfg(stage, batch, seq, **dict(overrides)))
    run_pipeline(module, DEFAULT_PIPELINE)
    return module


def _compile_and_compare(stage: str, batch: int, seq: int, overrides: tuple = (), seed: int = 0):
    """Tensor-level and default-pipeline tile-level results on the same seeded inputs (float outputs within the
    pipeline's tolerance, integer outputs exact)."""
    st = STAGES[stage]
    cfg = _cfg(stage, batch, seq, **dict(overrides))
    tensor_mod = build_stage(st, cfg)
    tile_mod = _tile_module(stage, batch, seq, overrides)
    assert ops_named(tile_mod, "tile.parallel"), "no token loop"
    assert not [op for op in tile_mod.walk() if op.name.startswith("attn.")]
    inputs = make_inputs(st, cfg, seed)
    want = run_module(tensor_mod, list(inputs.values()))
    got = run_module(tile_mod, list(inputs.values()))
    for name, g, w in zip(st.outputs, got, want):
        err = normalised_error(g.float() if g.dtype.is_floating_point else g, w.float() if w.dtype.is_floating_point else w)
        assert err <= (TOLERANCE if w.dtype.is_floating_point else 0.0), f"{stage}/{name}: {err:.3e}"


@pytest.mark.parametrize("batch,seq", grid())
@pytest.mark.parametrize("stage", ALL_STAGES)
def test_every_stage_compiles_at_every_batch_and_step(stage, batch, seq):
    _compile_and_compare(stage, batch, seq)


def _stage_inputs(stage: str, cfg: dict, start_pos, seed=0) -> dict:
    return make_inputs(STAGES[stage], cfg, seed, {"start_pos": torch.tensor(start_pos, dtype=torch.int32)})


def _check_stage_vs_reference(stage: str, cfg: dict, inputs: dict):
    st = STAGES[stage]
    ref = reference(stage, inputs, cfg)
    for level in ("tensor", "tile"):
        module = build_stage(st, cfg)
        if level == "tile":
            run_pipeline(module, DEFAULT_PIPELINE)
        outs = dict(zip(st.outputs, run_module(module, list(inputs.values()))))
        for n in ref:
            err = normalised_error(outs[n].float(), ref[n].float())
            assert err <= TOLERANCE, f"{stage}/{n} {level} level vs reference: {err:.3e}"


STARTS = (5, 2, 19)  # rows at different positions: window edges, the first CSA block, a wrapped ring


@pytest.mark.parametrize("batch,seq", grid())
@pytest.mark.parametrize("stage", ["qkv_proj_rope", "sparse_attn_core", "sparse_attn"])
def test_stages_match_reference_at_every_batch_and_step(stage, batch, seq):
    cfg = _cfg(stage, batch, seq, max_pos=64)
    _check_stage_vs_reference(stage, cfg, _stage_inputs(stage, cfg, STARTS[:batch]))


LAYER_STARTS = {"swa": (6, 13, 0), "hca": (126, 127, 5), "csa": (11, 2, 22)}


@pytest.mark.parametrize("batch,seq", grid())
@pytest.mark.parametrize("kind", ["swa", "hca", "csa"])
def test_layer_kinds_match_reference_at_every_batch_and_step(kind, batch, seq):
    d = CompiledStepDriver(kind, batch=batch, length=140, pipeline=DEFAULT_PIPELINE)
    check_against_reference(d, kind, LAYER_STARTS[kind][:batch], seq)


# ------------------------------------------------------------------------------------------ caches of `seq` entries


@pytest.mark.parametrize("seq", [2, pytest.param(3, marks=pytest.mark.slow)])
@pytest.mark.parametrize("stage", ["compressor", "index_compressor", "indexer"])
def test_compressed_cache_of_exactly_seq_entries(stage, seq):
    """max_pos = 4*seq: the CSA caches [B, n_cmp, d] hold exactly `seq` entries, [batch, seq, ...]-shaped (the
    CSA layer: below, against the reference)."""
    assert _cfg(stage, 2, seq, max_pos=4 * seq)["n_cmp"] == seq
    _compile_and_compare(stage, 2, seq, (("max_pos", 4 * seq),))


@pytest.mark.parametrize("stage", ["sparse_attn_core", "sparse_attn"])
def test_attention_with_a_cache_of_exactly_seq_entries_matches_reference(stage):
    cfg = _cfg(stage, 2, 2, max_pos=64, n_cmp=2, cmp_topk=2)
    _check_stage_vs_reference(stage, cfg, _stage_inputs(stage, cfg, (7, 3)))


def test_csa_layer_with_a_cache_of_exactly_seq_entries_matches_reference():
    d = CompiledStepDriver("csa", batch=2, length=12, pipeline=DEFAULT_PIPELINE, overrides=(("max_pos", 8),))
    assert d.cfg["n_cmp"] == 2
    check_against_reference(d, "csa", (5, 2), 2)


# ------------------------------------------------------------------------------------------ pypto SIM


@pytest.mark.slow
@pytest.mark.parametrize("stage, overrides", [
    ("decode_swa", (("batch", 1), ("seq", 1))),   # one request, one token
    ("decode_csa", (("batch", 1), ("seq", 1))),
], ids=["swa-b1s1", "csa-b1s1"])
def test_pypto_sim_matches_interpreter_at_one_token(stage, overrides):
    from tests import test_pypto_target as target

    if not target.pypto_available():
        pytest.skip("pypto 0.2.0 is not importable here")
    target.test_pypto_sim_matches_interpreter(stage, (*overrides, ("max_pos", 256)), ())


@pytest.mark.slow
def test_pypto_sim_prefill_chunk_longer_than_window():
    """A 16-token CSA chunk (S > W, S > the compressor rings, blocks completing mid-chunk) in SIM: caches and picks
    bit for bit, f32 states within 1e-3; `out` within a bf16 ulp (pypto sums the f32 products of a matmul in its
    own order, and with 32 tokens one output lands on the other side of a bf16 rounding: measured 1.2e-3)."""
    from tests import test_pypto_target as target

    if not target.pypto_available():
        pytest.skip("pypto 0.2.0 is not importable here")
    from attnc.codegen.pypto.target import run_pypto_sim

    cfg, module = target.compiled("decode_csa", (("seq", 16), ("max_pos", 256)))
    st = STAGES["decode_csa"]
    inputs = make_inputs(st, stage_config(st, cfg), 5)
    want = dict(zip(st.outputs, run_module(module, list(inputs.values()))))
    res = run_pypto_sim(module, inputs, verify="tensor-graph", timeout_s=900)
    for name, w in want.items():
        got = res.outputs[name]
        err = normalised_error(got.float(), w.float())
        limit = 4e-3 if name == "out" else 1e-3 if w.dtype == torch.float32 else 0.0
        assert err <= limit, f"{name}: {err:.3e}"
