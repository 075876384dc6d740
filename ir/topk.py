"""Top-k: the interpreter's selection, a tie-aware comparison of another selection with it, and the resolver hook
that lets a caller see (and replace) what every `topk` op of an interpreter run returns.

Why tie-aware: a top-k over f32 scores is not a continuous function of them. A device that sums the same
products in another order gets scores within the f32 summation-order error of the interpreter's, and where two
entries' scores are that close (near the k-th score, or next to each other inside the list) it may rank them the
other way. Such a selection is still a top-k of the interpreter's scores up to that error; one that takes an entry
clearly below the cut, leaves out one clearly above it, or picks an invisible entry is wrong.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# Relative width of the tie band, as a fraction of a row's score scale (the largest |score| among its valid
# entries). A CSA indexer score is sum_h w_h * relu(q_h . k), H = 64 heads of d = 128 bf16 products (flash).
# f32 summation order: exact products summed in f32 in any order differ from the exactly rounded sum by at most
# gamma_n * sum|terms| (Higham 3.1; n = 127 + 63, gamma = 1.1e-5). Measured at flash B=2 (decode_csa, seed 0,
# 4 rows of 542..946 visible entries): re-summing the indexer's dots as 16-wide fractals accumulated in f32 and
# the head sum sequentially moves scores by <= 3.1e-7 of the scale; re-summing every upstream matmul the same way
# (bf16 roundings of q and the weights may flip) by <= 3.0e-7. pypto 0.2.0 SIM (default candidate) against the
# interpreter: the one entry swapped at the k-th score is 8.2e-6 of the scale from it, but one pick is listed
# after an entry it outscores by 3.8e-4 of the scale -- more than these f32 models give (pypto's scores or sort
# differ there by more than the summation order; not explained). 2^-10 = 9.8e-4 keeps a factor 2.6 above that
# largest measured displacement and is about two median neighbour gaps near the cut (2.7e-4..4.4e-3 there):
# 1..4 entries per row lie within the band of the k-th score, so a pick further than a neighbour or two from
# its rank fails. (The reference test's 2e-2 covers bf16-vs-f32 layer differences, a much coarser error.)
TIE_EPS = 2.0 ** -10


def topk_indices(scores: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k by score, ties broken by the lower index; -1 where fewer than k entries are valid."""
    s = torch.where(valid, scores.float(), -math.inf)
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices
    n = s.shape[-1]
    if n < k:
        order = torch.cat([order, order.new_zeros(*order.shape[:-1], k - n)], -1)
    picked = order[..., :k]
    ok = torch.gather(valid, -1, picked.clamp(max=n - 1)) & (torch.arange(k) < n)
    return torch.where(ok, picked, -1).to(torch.int32)


# -------------------------------------------------------------------------------------------------- comparison


@dataclass
class TopkComparison:
    """The verdict on a selection compared with the interpreter's, over all rows compared."""

    ok: bool = True
    reason: str = ""  # the first failing row's reason ("" when ok)
    rows: int = 0
    picks: int = 0  # valid picks compared
    differing: int = 0  # list positions whose id differs from the interpreter's (all accepted as ties when ok)
    swapped: int = 0  # entries picked instead of one of the interpreter's (near-ties at the k-th score)
    max_gap: float = 0.0  # the largest tie gap accepted, in units of the row's score scale

    def merge(self, other: "TopkComparison") -> "TopkComparison":
        return TopkComparison(self.ok and other.ok, self.reason or other.reason, self.rows + other.rows,
                              self.picks + other.picks, self.differing + other.differing,
                              self.swapped + other.swapped, max(self.max_gap, other.max_gap))


def compare_topk_row(scores, valid, want, got, k: int | None = None, eps: float = TIE_EPS,
                     ordered: bool = True) -> TopkComparison:
    """Is `got` a top-k of `scores` (1-D, over entry ids; `valid` marks the visible entries) up to near-ties?

    `want`: the exact selection (e.g. the interpreter's), valid ids first, -1 padding; or None to derive it from
    the scores (then `k` is needed). Accepted iff `got` lists the same number of valid ids as `want` (all first,
    then -1 padding), each visible and listed once, the two sets differ only in entries whose scores lie within
    eps * scale of the k-th score (scale: the largest |score| among visible entries), and, with `ordered`, no
    pick scores more than eps * scale above one listed before it (descending order up to near-ties)."""
    scores = torch.as_tensor(scores).double().reshape(-1)
    valid = torch.as_tensor(valid).bool().reshape(-1)
    if want is None:
        want = topk_indices(scores, valid, int(k))
    want = torch.as_tensor(want).long().reshape(-1)
    got = torch.as_tensor(got).long().reshape(-1)
    n = scores.numel()
    res = TopkComparison(rows=1)

    def fail(why: str) -> TopkComparison:
        res.ok, res.reason = False, why
        return res

    if got.numel() != want.numel():
        return fail(f"{got.numel()} picks listed, expected {want.numel()}")
    n_want = int((want >= 0).sum())
    live = got >= 0
    n_got = int(live.sum())
    if n_got != n_want:
        return fail(f"{n_got} valid picks, expected {n_want}")
    if not bool(live[:n_got].all()):
        return fail("a -1 padding entry precedes a valid pick")
    ids = got[:n_got]
    if bool((ids >= n).any()):
        return fail(f"pick {int(ids.max())} out of range [0, {n})")
    invisible = ids[~valid[ids]]
    if invisible.numel():
        return fail(f"invisible entry {int(invisible[0])} picked")
    if torch.unique(ids).numel() != n_got:
        return fail("an entry is picked twice")
    res.picks = n_got
    res.differing = int((got != want).sum())
    if n_got == 0 or res.differing == 0:
        return res
    visible = scores[valid]
    band = eps * float(visible.abs().max())
    kth = float(scores[want[n_want - 1]])
    mine, theirs = set(want[:n_want].tolist()), set(ids.tolist())
    extra, missing = sorted(theirs - mine), sorted(mine - theirs)
    res.swapped = len(extra)
    for w in extra + missing:
        gap = abs(float(scores[w]) - kth)
        if gap > band:
            what = "picked" if w in theirs else "left out"
            return fail(f"entry {w} {what}: score {float(scores[w]):.9g} is {gap:.3g} from the k-th score "
                        f"{kth:.9g}, outside the tie band {band:.3g} ({eps:g} x scale)")
        res.max_gap = max(res.max_gap, gap / (band / eps) if band else 0.0)
    if ordered:
        listed = scores[ids]
        floor = torch.cummin(listed, 0).values  # the lowest score listed so far
        rise = listed[1:] - floor[:-1]
        if rise.numel() and float(rise.max()) > band:
            i = int(rise.argmax()) + 1
            return fail(f"pick {i} (entry {int(ids[i])}) scores {float(rise.max()):.3g} above an earlier pick, "
                        f"outside the tie band {band:.3g}")
        if rise.numel():
            res.max_gap = max(res.max_gap, max(0.0, float(rise.max())) / (band / eps) if band else 0.0)
    return res


def compare_topk(scores, valid, want, got, eps: float = TIE_EPS, ordered: bool = True) -> TopkComparison:
    """`compare_topk_row` over rows: scores/valid [..., N], want/got [..., k] (the same leading shape)."""
    scores, valid = torch.as_tensor(scores), torch.as_tensor(valid)
    want, got = torch.as_tensor(want), torch.as_tensor(got)
    n, k = scores.shape[-1], want.shape[-1]
    if tuple(got.shape) != tuple(want.shape):
        return TopkComparison(False, f"picks of shape {list(got.shape)}, expected {list(want.shape)}")
    total = TopkComparison()
    for r, (s, v, w, g) in enumerate(zip(scores.reshape(-1, n), valid.reshape(-1, n), want.reshape(-1, k),
                                         got.reshape(-1, k))):
        one = compare_topk_row(s, v, w, g, eps=eps, ordered=ordered)
        if not one.ok:
            one.reason = f"row {r}: {one.reason}"
        total = total.merge(one)
    return total


# -------------------------------------------------------------------------------------------------- resolver hook


@dataclass
class TopkCall:
    """What a top-k resolver is given for one `topk` op execution.

    scores, valid: [..., N]; k; rows: [...] int64, the global token row of each leading position (inside a
    tile.parallel over token rows: the loop's row offset plus the position; elsewhere the flattened leading
    index); live: [...] bool, False for padding rows past a token loop's end (their picks are discarded);
    op: the IR op (a stable key across runs of the same module)."""

    scores: torch.Tensor
    valid: torch.Tensor
    k: int
    rows: torch.Tensor
    live: torch.Tensor
    op: object

    def default(self) -> torch.Tensor:
        return topk_indices(self.scores, self.valid, self.k)


@dataclass
class TopkRecorder:
    """A resolver that records every live row's scores, validity and picks per op, and returns either the
    interpreter's own picks or, for the rows in `substitute[op]` ({global row: picks}), the given ones."""

    substitute: dict = field(default_factory=dict)
    calls: dict = field(default_factory=dict)  # op -> {row: (scores [N], valid [N], own picks [k], returned [k])}

    def __call__(self, call: TopkCall) -> torch.Tensor:
        n, k = call.scores.shape[-1], call.k
        own = call.default()
        picks = own.clone()
        flat_scores, flat_valid = call.scores.reshape(-1, n), call.valid.reshape(-1, n)
        flat_picks = picks.reshape(-1, k)
        given = self.substitute.get(call.op, {})
        seen = self.calls.setdefault(call.op, {})
        for i, (row, live) in enumerate(zip(call.rows.reshape(-1).tolist(), call.live.reshape(-1).tolist())):
            if not live:
                continue
            if row in given:
                flat_picks[i] = torch.as_tensor(given[row], dtype=torch.int32)
            seen[row] = (flat_scores[i].clone(), flat_valid[i].clone(), own.reshape(-1, k)[i].clone(),
                         flat_picks[i].clone())
        return picks

    def table(self, op) -> tuple[torch.Tensor, ...]:
        """(scores [T, N], valid [T, N], own picks [T, k], returned picks [T, k]) of `op` by global row
        0..T-1; KeyError if a row in between was never seen."""
        seen = self.calls[op]
        rows = range(max(seen) + 1)
        return tuple(torch.stack([seen[r][j] for r in rows]) for j in range(4))
