"""The error of every pipeline level, measured for a picture (`attnc plot errors`): after each pass, each output's
max abs and normalised error against the level before (what `--verify-each` checks, with the pass's declared
tolerance), against the tensor-level golden (the error accumulated so far) and, where the stage has one, against
an FP32 reference run on the same inputs."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from attnc.passes.verify import normalised_error, run_pipeline


def max_abs_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| over the values normalised_error scales (sentinels |x| >= 1e38 must match: else inf)."""
    if got.shape != want.shape:
        return float("inf")
    g, w = got.double(), want.double()
    if not want.dtype.is_floating_point:
        return (g - w).abs().max().item() if g.numel() else 0.0
    if torch.isnan(g).any() != torch.isnan(w).any():
        return float("inf")
    sentinel = w.abs() >= 1e38
    if not torch.equal(g[sentinel], w[sentinel]):
        return float("inf")
    diff = (g[~sentinel] - w[~sentinel]).abs().nan_to_num(0.0)
    return diff.max().item() if diff.numel() else 0.0


@dataclass
class LevelErrors:
    """One level of the pipeline: "input" (the tensor-level IR) or a pass label; errors by output name."""
    label: str
    tolerance: float | None = None  # the pass's declared tolerance (None for the input)
    rel_prev: dict[str, float] = field(default_factory=dict)
    abs_prev: dict[str, float] = field(default_factory=dict)
    rel_golden: dict[str, float] = field(default_factory=dict)
    abs_golden: dict[str, float] = field(default_factory=dict)
    rel_reference: dict[str, float] = field(default_factory=dict)  # outputs the reference computes
    abs_reference: dict[str, float] = field(default_factory=dict)


@dataclass
class PassErrors:
    levels: list[LevelErrors]
    outputs: list[str]
    reference_outputs: list[str]  # outputs with an FP32 reference value (empty: none)


def measure_pass_errors(module, pipeline: str, inputs: dict, output_names: list[str],
                        reference: Callable[[dict], dict] | None = None) -> PassErrors:
    """Run `pipeline` on `module` in place with `--verify-each` semantics (a pass beyond its tolerance still
    fails) and collect every level's errors. `reference(inputs)` returns FP32 outputs by name (any subset)."""
    ref = {k: v for k, v in (reference(inputs) if reference else {}).items() if k in output_names}
    levels: list[LevelErrors] = []
    state: dict[str, list[torch.Tensor]] = {}

    def on_level(label: str, outs: list[torch.Tensor]) -> None:
        level = LevelErrors(label)
        golden = state.setdefault("golden", outs)
        previous = state.get("previous")
        for name, got, want in zip(output_names, outs, golden):
            if previous is not None:
                before = previous[output_names.index(name)]
                level.rel_prev[name] = normalised_error(got, before)
                level.abs_prev[name] = max_abs_error(got, before)
            level.rel_golden[name] = normalised_error(got, want)
            level.abs_golden[name] = max_abs_error(got, want)
            if name in ref:
                r = ref[name].to(torch.float32).reshape(got.shape)
                level.rel_reference[name] = normalised_error(got.float(), r)
                level.abs_reference[name] = max_abs_error(got.float(), r)
        state["previous"] = outs
        levels.append(level)

    report = run_pipeline(module, pipeline, verify_inputs=list(inputs.values()), output_names=output_names,
                          on_level=on_level)
    tolerance = {r.pass_name: r.tolerance for r in report.records}
    for level in levels[1:]:
        level.tolerance = tolerance.get(level.label)
    return PassErrors(levels, list(output_names), sorted(ref, key=list(output_names).index))
