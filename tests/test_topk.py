"""Top-k up to near-ties (attnc.ir.topk): the tie-aware comparison on synthetic scores, the interpreter's top-k
resolver hook on decode_csa at `tiny`, and the re-check's comparison (attnc.tune.compare_with_interpreter) fed
with device outputs made by the interpreter itself (no SIM)."""
from __future__ import annotations

import pytest
import torch

from attnc.cli import load_source, source_inputs
from attnc.tune import compare_with_interpreter
from attnc.ir.interpreter import InterpretError, run_module
from attnc.ir.topk import TIE_EPS, TopkRecorder, compare_topk, compare_topk_row, topk_indices
from attnc.passes import PYPTO_PIPELINE
from attnc.passes.verify import run_pipeline

# one row over 8 entries: entry 7 invisible; 2 and 5 within 1e-4 of each other (scale 10: a near-tie at
# 1e-5 of the scale); the k = 4 cut falls between them
SCORES = torch.tensor([10.0, 3.0, 5.0, 8.0, 1.0, 5.0001, -2.0, 50.0])
VALID = torch.tensor([True, True, True, True, True, True, True, False])


def _row(got, k=4, eps=TIE_EPS, ordered=True):
    return compare_topk_row(SCORES, VALID, None, torch.as_tensor(got), k=k, eps=eps, ordered=ordered)


def test_exact_selection_is_the_interpreters():
    want = topk_indices(SCORES, VALID, 4)
    assert want.tolist() == [0, 3, 5, 2]
    r = _row(want)
    assert r.ok and r.picks == 4 and r.differing == 0 and r.swapped == 0


def test_near_ties_swapped_at_the_cut_and_inside_the_list_are_accepted():
    # 2 (5.0) instead of 5 (5.0001) at the cut
    cut = compare_topk_row(SCORES, VALID, None, torch.tensor([0, 3, 5, 1]), k=3)
    assert not cut.ok  # a real wrong pick: 1 (3.0) is 2.0 below the k-th score, far outside the band
    with_k3 = compare_topk_row(SCORES, VALID, None, torch.tensor([0, 3, 2]), k=3)
    assert with_k3.ok and with_k3.swapped == 1 and with_k3.differing == 1
    assert 0 < with_k3.max_gap < TIE_EPS
    inside = _row([0, 3, 2, 5])  # two near-equal scores listed the other way round
    assert inside.ok and inside.differing == 2 and inside.swapped == 0


@pytest.mark.parametrize("got,why", [
    ([0, 3, 5, 1], "entry 1 picked"),                    # below the cut by far
    ([0, 3, 5, -1], "3 valid picks, expected 4"),       # a different valid count
    ([0, 3, 5, 7], "invisible entry 7"),                # an entry nobody may see
    ([0, 3, 5, 5], "picked twice"),
    ([0, 3, 5, 2, 1, -1, 4, 6], "padding entry precedes"),  # k = 8 > 7 visible: one -1, but not last
    ([3, 0, 5, 2], "scores 2 above an earlier pick"),   # 10 listed after 8: not descending, not a tie
    ([0, 3, 5, 2, 1], "5 picks listed, expected 4"),
])
def test_wrong_selections_are_rejected_with_a_reason(got, why):
    r = _row(got, k=8 if len(got) == 8 else 4)
    assert not r.ok and why in r.reason


def test_the_band_is_relative_to_the_rows_score_scale():
    gap = 1e-4 / 10.0  # between entries 5 and 2, relative to the largest visible |score| (10; 50 is invisible)
    assert compare_topk_row(SCORES, VALID, None, torch.tensor([0, 3, 2]), k=3, eps=gap * 1.01).ok
    assert not compare_topk_row(SCORES, VALID, None, torch.tensor([0, 3, 2]), k=3, eps=gap * 0.99).ok
    assert compare_topk_row(SCORES * 1e3, VALID, None, torch.tensor([0, 3, 2]), k=3, eps=gap * 1.01).ok


def test_order_is_ignored_when_asked_and_rows_are_counted():
    assert _row([3, 0, 5, 2], ordered=False).ok
    scores = torch.stack([SCORES, SCORES])
    valid = torch.stack([VALID, VALID])
    want = topk_indices(scores, valid, 4)
    got = torch.tensor([[0, 3, 2, 5], [0, 3, 5, 1]])
    r = compare_topk(scores, valid, want, got)
    assert not r.ok and r.reason.startswith("row 1: ") and r.rows == 2
    ok = compare_topk(scores, valid, want, torch.tensor([[0, 3, 2, 5], [0, 3, 5, 2]]))
    assert ok.ok and ok.rows == 2 and ok.picks == 8 and ok.differing == 2


# ------------------------------------------------------------------------------------------------ the hook


@pytest.fixture(scope="module")
def csa_tiny():
    """decode_csa at tiny after the pypto pipeline (the topk inside a token loop of 32 rows over T = 4 rows)."""
    src = load_source("decode_csa", "tiny", [])
    run_pipeline(src.module, PYPTO_PIPELINE, output_names=src.output_names)
    inputs = source_inputs(src, 0)
    plain = dict(zip(src.output_names, run_module(src.module, list(inputs.values()))))
    return src, inputs, plain


def _run(src, inputs, resolver):
    return dict(zip(src.output_names, run_module(src.module, list(inputs.values()), topk=resolver)))


def _alternative(scores, valid, own):
    """Row by row, own picks with the k-th pick replaced by the best entry left out: (picks, the largest gap
    between the two scores relative to the row's scale)."""
    alt, worst = own.clone(), 0.0
    for r in range(own.shape[0]):
        n = int((own[r] >= 0).sum())
        left = [int(i) for i in torch.nonzero(valid[r]).flatten() if int(i) not in own[r].tolist()]
        if n == 0 or not left:
            continue
        best = max(left, key=lambda i: float(scores[r, i]))
        alt[r, n - 1] = best
        scale = float(scores[r][valid[r]].abs().max())
        worst = max(worst, (float(scores[r, own[r, n - 1]]) - float(scores[r, best])) / scale)
    return alt, worst


def test_hook_returning_the_interpreters_picks_changes_nothing(csa_tiny):
    src, inputs, plain = csa_tiny
    rec = TopkRecorder()
    hooked = _run(src, inputs, rec)
    assert all(torch.equal(hooked[n], plain[n]) for n in plain)
    (op,) = rec.calls
    assert sorted(rec.calls[op]) == [0, 1, 2, 3]  # the global token rows; padding rows 4..31 are not recorded
    scores, valid, own, returned = rec.table(op)
    assert torch.equal(own, returned) and torch.equal(own, plain["cmp_idx"].reshape(4, -1))
    assert torch.equal(own, topk_indices(scores, valid, own.shape[1]))


def _run_on_alternative_picks(src, inputs):
    """Run once recording the top-k, then again with another valid selection substituted: (own picks, the
    alternative, its score gap at the cut, the outputs of the substituted run)."""
    rec = TopkRecorder()
    _run(src, inputs, rec)
    (op,) = rec.calls
    scores, valid, own, _ = rec.table(op)
    alt, gap = _alternative(scores, valid, own)
    return own, alt, gap, _run(src, inputs, TopkRecorder(substitute={op: dict(enumerate(alt))}))


def test_hook_substituting_other_picks_changes_the_outputs(csa_tiny):
    src, inputs, plain = csa_tiny
    own, alt, _, swapped = _run_on_alternative_picks(src, inputs)
    assert not torch.equal(alt, own)
    assert torch.equal(swapped["cmp_idx"].reshape(alt.shape), alt)
    assert not torch.equal(swapped["out"], plain["out"])
    assert torch.equal(swapped["kv_cmp"], plain["kv_cmp"])  # upstream of the selection: unchanged


def test_hook_with_a_wrong_result_is_a_located_error(csa_tiny):
    src, inputs, _ = csa_tiny
    with pytest.raises(InterpretError, match="top-k resolver returned"):
        _run(src, inputs, lambda call: call.default()[..., :1])


def test_hook_sees_the_tensor_level_op_with_flattened_token_rows():
    src = load_source("decode_csa", "tiny", [])  # before any pass: attn.topk over [B, S, N]
    inputs = source_inputs(src, 0)
    rec = TopkRecorder()
    hooked = _run(src, inputs, rec)
    (op,) = rec.calls
    assert op.name == "attn.topk" and sorted(rec.calls[op]) == [0, 1, 2, 3]
    assert torch.equal(rec.table(op)[3], hooked["cmp_idx"].reshape(4, -1))


# ------------------------------------------------------------------------------------------------ the re-check


def test_recheck_accepts_the_interpreters_own_outputs(csa_tiny):
    src, inputs, plain = csa_tiny
    r = compare_with_interpreter(src.module, inputs, plain, src.output_names)
    assert r["ok"] and r["max_error"] == 0.0 and r["differing"] == 0
    assert r["topk"]["outputs"] == ["cmp_idx"] and r["topk"]["differing"] == 0 and r["topk"]["picks"] > 0


def test_recheck_accepts_near_tie_picks_with_the_outputs_that_follow_them(csa_tiny):
    """A device that picked another member at the cut: accepted when the swap lies within the band, and the
    other outputs are compared with the interpreter re-run on those picks (not its own)."""
    src, inputs, plain = csa_tiny
    own, alt, gap, device = _run_on_alternative_picks(src, inputs)
    wide = compare_with_interpreter(src.module, inputs, device, src.output_names, eps=gap * 1.01)
    assert wide["ok"], wide["note"]
    assert wide["max_error"] == 0.0 and wide["topk"]["swapped"] == int((alt != own).sum()) > 0
    narrow = compare_with_interpreter(src.module, inputs, device, src.output_names, eps=gap * 0.99)
    assert not narrow["ok"] and "outside the tie band" in narrow["note"]
    # the accepted picks with `out` of the interpreter's own picks: out no longer follows the picks
    mixed = {**device, "out": plain["out"]}
    bad = compare_with_interpreter(src.module, inputs, mixed, src.output_names, eps=gap * 1.01)
    assert not bad["ok"] and bad["note"].startswith("out error")


@pytest.mark.parametrize("change,why", [
    (lambda p: torch.where(p == p[0, 0], torch.full_like(p, -1), p), "valid picks, expected"),
    (lambda p: torch.where(p == p[0, 0], torch.full_like(p, 15), p), "invisible entry 15"),
])
def test_recheck_rejects_a_different_valid_count_or_an_invisible_pick(csa_tiny, change, why):
    src, inputs, plain = csa_tiny
    picks = plain["cmp_idx"].reshape(4, -1)
    assert 15 not in picks.tolist()[0]  # entry 15 is not complete at these start positions
    device = {**plain, "cmp_idx": change(picks).reshape(plain["cmp_idx"].shape)}
    r = compare_with_interpreter(src.module, inputs, device, src.output_names, eps=1.0)  # any score is a tie
    assert not r["ok"] and why in r["note"]
