"""A device run's outputs checked against attnc's interpreter on the same compiled IR and the same inputs: the
check `attnc run --target pypto-sim|pypto-npu` makes after every run (every step) and `attnc tune`'s re-check.

Rules, per output:
- integers bit for bit;
- floats within `recheck_limit` of the largest |value| (bf16: one rounding step of it -- pypto sums f32 products
  in its own order, so a bf16 result may land one step off; f32 states: 1e-3), sentinels (|x| >= 1e38) exactly;
  the line says `exact` when no value differs, `bounded` when some do within the limit;
- top-k picks (an output that carries a `topk` op's result) tie-aware: row by row a top-k of the interpreter's
  own scores up to near-ties (`attnc.ir.topk.compare_topk`); the interpreter then runs again with the device's
  picks substituted, and every output (picks included) is compared with that run, so a legitimately different
  member at the cut does not fail what depends on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

# limits on the normalised error per output dtype. bf16: one rounding step of the largest value (pypto sums f32
# products in its own order before rounding: the default SWA core at flash B=2 differs from the interpreter in 7
# of 131072 bf16 values by one step, 3.3e-4); f32 as tests/test_pypto_target.py; integers exact. For bf16/f16
# these are floors: the limit is one step (ulp) of the output's largest |value| over that value, which lies in
# (2^-8, 2^-7] for bf16 -- 2^-8 alone is less than one step unless the largest value sits at the top of its
# binade (decode_csa's `out` at flash B=2: one step of 2^-9 at |out| max 0.35 is 5.6e-3)
RECHECK_TOLERANCE = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11, "float32": 1e-3}


def recheck_limit(want) -> float:
    """The limit on normalised_error(got, want): RECHECK_TOLERANCE, raised for bf16/f16 to one rounding step of
    the largest |value| (sentinels |x| >= 1e38 excluded, as in normalised_error)."""
    import torch

    limit = RECHECK_TOLERANCE.get(str(want.dtype).replace("torch.", ""), 0.0)
    if want.dtype in (torch.bfloat16, torch.float16) and want.numel():
        w = want.double().abs()
        w = w[(w < 1e38) & torch.isfinite(w)]
        top = float(w.max()) if w.numel() else 0.0
        if top > 0:
            step = torch.finfo(want.dtype).eps * 2.0 ** math.floor(math.log2(top))
            limit = max(limit, step / top)
    return limit


@dataclass
class OutputCheck:
    """One output's comparison: normalised error vs its limit and how many values differ at all."""

    name: str
    dtype: str
    shape: tuple
    error: float | None  # None: the device returned no such output
    limit: float
    differing: int = 0
    total: int = 0
    picks: str = ""  # top-k picks: "tie-aware (n of m picks near-ties)"

    @property
    def ok(self) -> bool:
        return self.error is not None and self.error <= self.limit

    @property
    def verdict(self) -> str:
        if self.error is None:
            return "MISSING"
        if not self.ok:
            return "MISMATCH"
        return "exact" if self.differing == 0 else "bounded"

    def line(self) -> str:
        err = "n/a" if self.error is None else f"{self.error:.3g}"
        return (f"check {self.name:<10} {self.dtype:<9} {list(self.shape)} max_error={err} limit={self.limit:.3g} "
                f"differing={self.differing}/{self.total} {self.verdict}" + (f" {self.picks}" if self.picks else ""))


@dataclass
class Check:
    outputs: list = field(default_factory=list)  # OutputCheck per output, in the stage's order
    topk: dict | None = None  # the tie-aware verdict on the picks (see attnc.ir.topk.TopkComparison)
    topk_failure: str = ""  # why the picks are not a top-k of the interpreter's scores ("" when they are)

    @property
    def ok(self) -> bool:
        return not self.topk_failure and all(o.ok for o in self.outputs)

    @property
    def failures(self) -> list[str]:
        bad = [f"top-k picks not a top-k of the interpreter's scores up to near-ties: {self.topk_failure}"] \
            if self.topk_failure else []
        for o in self.outputs:
            if o.error is None:
                bad.append(f"{o.name} missing")
            elif not o.ok:
                bad.append(f"{o.name} error {o.error:.3g} > {o.limit:g} ({o.differing} of {o.total} values differ)")
        return bad

    def as_dict(self) -> dict:
        """The re-check's record (tuning files, the tune cache)."""
        errs = [o.error for o in self.outputs if o.error is not None]
        return {"ok": self.ok, "note": "; ".join(self.failures), "max_error": max(errs, default=0.0),
                "differing": sum(o.differing for o in self.outputs), "topk": self.topk}


def _picks_outputs(recorder, want: dict) -> dict:
    """{output name: topk op} for the outputs that carry a top-k op's picks unchanged (their values, as
    [rows, k], are exactly what the op returned for rows 0..T-1)."""
    import torch

    found = {}
    for op in recorder.calls:
        try:
            returned = recorder.table(op)[3]
        except KeyError:  # a row in between was never computed: not a whole-token-axis selection
            continue
        for name, value in want.items():
            if value.dtype == torch.int32 and value.numel() == returned.numel() and \
                    torch.equal(value.reshape(returned.shape), returned):
                found[name] = op
    return found


def check_outputs(module, inputs: dict, got: dict, output_names, eps: float | None = None) -> Check:
    """Compare a device run's outputs `got` (by name, torch tensors of the declared dtypes) with attnc's
    interpreter run of `module` on `inputs` (see the module docstring for the rules)."""
    import torch

    from attnc.ir.interpreter import run_module
    from attnc.ir.topk import TIE_EPS, TopkComparison, TopkRecorder, compare_topk
    from attnc.passes.verify import normalised_error

    eps = TIE_EPS if eps is None else eps
    args = list(inputs.values())
    recorder = TopkRecorder()
    want = dict(zip(output_names, run_module(module, args, topk=recorder)))
    check = Check()
    picks_outputs = _picks_outputs(recorder, want)
    if picks_outputs:
        verdict, substitute = TopkComparison(), {}
        for name, op in picks_outputs.items():
            scores, valid, own, _ = recorder.table(op)
            device = got.get(name)
            if device is None:
                continue  # reported as missing below
            if device.numel() != own.numel():
                verdict = verdict.merge(TopkComparison(False, f"{name}: {device.numel()} values, expected "
                                                              f"{own.numel()}"))
                continue
            device = device.to(torch.int32).reshape(own.shape)
            one = compare_topk(scores, valid, own, device, eps=eps)
            if not one.ok:
                one.reason = f"{name} {one.reason}"
            verdict = verdict.merge(one)
            substitute[op] = dict(enumerate(device))
        check.topk = {"outputs": sorted(picks_outputs), "ok": verdict.ok, "eps": eps, "rows": verdict.rows,
                      "picks": verdict.picks, "differing": verdict.differing, "swapped": verdict.swapped,
                      "max_gap": verdict.max_gap}
        if not verdict.ok:
            check.topk_failure = verdict.reason
        elif substitute:  # downstream outputs follow the device's (accepted) picks
            want = dict(zip(output_names, run_module(module, args, topk=TopkRecorder(substitute=substitute))))
    for name, w in want.items():
        g = got.get(name)
        row = OutputCheck(name, str(w.dtype).replace("torch.", ""), tuple(w.shape), None, recheck_limit(w),
                          total=w.numel())
        if name in picks_outputs and check.topk is not None:
            row.picks = (f"tie-aware ({check.topk['differing']} of {check.topk['picks']} picks near-ties)"
                         if not check.topk_failure else "tie-aware: NOT a top-k")
        if g is not None:
            row.error = normalised_error(g, w)
            if tuple(g.shape) == tuple(w.shape):
                g = g.to(w.dtype)
                both_nan = torch.isnan(g) & torch.isnan(w) if w.dtype.is_floating_point else w != w
                row.differing = int(((g != w) & ~both_nan).sum())  # NaN in both (never-written rows) agrees
            else:
                row.differing = w.numel()
        check.outputs.append(row)
    return check
