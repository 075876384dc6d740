"""Layer kinds as a serving loop drives them: an S-token step equals S single-token steps (outputs and every
cache and state), blocks complete mid-step, rows have different start positions, and what a token may not see
cannot change its output."""
from __future__ import annotations

import pytest
import torch

from tests.layer_harness import LayerDriver

# (kind, start_pos per row): P mod 4 in {0, 2, 3} (a CSA block completes before, inside, at the first token of
# the step), P mod 128 in {126, 127} for HCA, and rows at different positions in every case
CASES = [
    ("csa", (12, 22)), ("csa", (11, 3)), ("csa", (2, 16)),
    ("hca", (126, 127)), ("hca", (127, 5)),
    ("swa", (6, 13)), ("swa", (7, 0)),
]


@pytest.fixture(scope="module")
def drivers():
    return {kind: LayerDriver(kind) for kind in ("swa", "hca", "csa")}


@pytest.mark.parametrize("kind,start", CASES, ids=[f"{k}-{a}-{b}" for k, (a, b) in CASES])
@pytest.mark.parametrize("seq", [2, 3])
def test_step_of_s_tokens_equals_s_single_steps(drivers, kind, start, seq):
    d = drivers[kind]
    state = d.history(list(start))
    whole = d.step(list(start), seq, state)
    single_state, singles = state, []
    for s in range(seq):
        outs = d.step([p + s for p in start], 1, single_state)
        singles.append(outs)
        single_state = d.carry(outs)
    out_singles = torch.cat([o["out"] for o in singles], dim=1)
    assert torch.equal(whole["out"], out_singles)
    for name in d.state_names:
        assert torch.equal(whole[name], single_state[name]), name
    if kind == "csa":
        picks = torch.cat([o["cmp_idx"] for o in singles], dim=1)
        assert torch.equal(whole["cmp_idx"], picks)


def test_history_chunking_does_not_matter(drivers):
    """Prefill-free decode from position 0 in chunks of 8 or of 3 reaches the same state (CSA, both rows)."""
    d = drivers["csa"]
    a, b = d.history([21, 14]), d.history([21, 14], chunk=3)
    for name in d.state_names:
        assert torch.equal(a[name], b[name]), name


def test_csa_token_before_first_block_ignores_every_compressed_entry(drivers):
    """t = 2: no CSA entry is complete, so the caches' contents cannot matter; t = 3 completes entry 0 in-step and
    stores it at slot 0 (the stale slot content is replaced)."""
    d = drivers["csa"]
    state = d.history([2, 2])
    base = d.step([2, 2], 1, state)
    junk = dict(state, kv_cmp=torch.randn_like(state["kv_cmp"].float()).to(torch.bfloat16),
                idx_cmp=torch.randn_like(state["idx_cmp"].float()).to(torch.bfloat16))
    assert torch.equal(d.step([2, 2], 1, junk)["out"], base["out"])
    after = d.step([3, 3], 1, d.carry(base))
    junk_after = d.step([3, 3], 1, dict(d.carry(base), kv_cmp=junk["kv_cmp"], idx_cmp=junk["idx_cmp"]))
    assert torch.equal(after["kv_cmp"][:, 0], junk_after["kv_cmp"][:, 0])
    assert torch.equal(after["out"], junk_after["out"])
    assert not torch.equal(after["kv_cmp"][:, 0], base["kv_cmp"][:, 0])


def test_ring_is_written_after_attention(drivers):
    """At the window edge an S = 2 step must not let token 0 see token 1 in place of its oldest key
    (pypto-lib#492): poisoning the ring slot token 1 will take changes token 0's output."""
    d = drivers["swa"]
    W = d.cfg["window"]
    start = [W - 1, 2 * W - 1]
    state = d.history(start)
    out = d.step(start, 2, state)
    # token 0 at position P reads position P - W + 1 from ring slot (P + 1) mod W, the slot token 1 writes
    ring = state["kv_ring"].clone()
    ring[1, (start[1] + 1) % W] += 1.0
    poisoned = d.step(start, 2, dict(state, kv_ring=ring))
    assert not torch.equal(poisoned["out"][1, 0], out["out"][1, 0])
    assert torch.equal(poisoned["out"][0], out["out"][0])
    assert torch.equal(out["kv_ring"][1, (start[1] + 1) % W], out["kv_ring"][1, (start[1] + 1) % W])


# ------------------------------------------------------------------------------------------ chunked prefill: S > W

# (kind, start_pos per row, S): the chunk is longer than the window (8) and than the compressor rings (8 for
# m = 4), so tokens read window rows and ring slots that are older rows of the same chunk, CSA blocks complete
# several times mid-chunk, and an HCA block (m = 128) completes mid-chunk (positions 127 and 255 inside)
PREFILL_CASES = [
    pytest.param("swa", (3, 21), 16, id="swa-s16"),
    pytest.param("csa", (3, 10), 16, id="csa-s16"),
    pytest.param("hca", (120, 5), 16, id="hca-s16", marks=pytest.mark.slow),
    pytest.param("swa", (0, 37), 64, id="swa-s64", marks=pytest.mark.slow),
    pytest.param("csa", (2, 29), 64, id="csa-s64", marks=pytest.mark.slow),
    pytest.param("hca", (100, 200), 64, id="hca-s64", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module")
def prefill_drivers():
    return {kind: LayerDriver(kind, length=280, overrides=(("max_pos", 512),)) for kind in ("swa", "hca", "csa")}


@pytest.mark.parametrize("kind,start,seq", PREFILL_CASES)
def test_prefill_chunk_longer_than_window_equals_single_steps(prefill_drivers, kind, start, seq):
    """A chunk of S > W tokens gives the outputs, caches, states and picks of S single-token steps, bit for bit."""
    d = prefill_drivers[kind]
    assert seq > d.cfg["window"]
    test_step_of_s_tokens_equals_s_single_steps({kind: d}, kind, start, seq)


@pytest.mark.slow
@pytest.mark.parametrize("kind,start", [("csa", (3, 10)), ("hca", (120, 5)), ("swa", (3, 21))])
def test_compiled_prefill_chunk_matches_reference(kind, start):
    """The default-pipeline layer on a 16-token chunk (S > W) against the whole-layer FP32 reference: output, ring,
    every compressed and indexer cache entry."""
    from attnc.passes import DEFAULT_PIPELINE
    from tests.layer_harness import CompiledStepDriver
    from tests.test_layers_vs_reference import check_against_reference

    d = CompiledStepDriver(kind, length=160, overrides=(("max_pos", 512),), pipeline=DEFAULT_PIPELINE)
    check_against_reference(d, kind, start, 16)
