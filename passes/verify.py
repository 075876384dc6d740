"""Running a pipeline, with translation validation (`--verify-each`): the module is interpreted on seeded
inputs before the first pass and after every pass; each output is compared with the previous level and a
difference beyond the pass's declared tolerance fails the compilation."""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass
from xdsl.utils.exceptions import VerifyException

from attnc.errors import AttncError
from attnc.ir import IRError, make_context, verify_ir

from . import PassError, build_pipeline, pass_tolerance

if TYPE_CHECKING:  # torch and the interpreter load only to interpret (--verify-each): a plain compile needs neither
    import torch


def normalised_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| over the real values (exact for integer tensors: 0 or 1 for any difference);
    NaN counts as inf. Sentinels (|x| >= 1e38, e.g. -inf or the lowest f32 for "not visible") must match exactly
    and stay out of the scale."""
    import torch

    if got.shape != want.shape:
        return float("inf")
    if not want.dtype.is_floating_point:
        return 0.0 if torch.equal(got.long(), want.long()) else 1.0
    g, w = got.double(), want.double()
    if torch.isnan(g).any() != torch.isnan(w).any():
        return float("inf")
    sentinel = w.abs() >= 1e38
    if not torch.equal(g[sentinel], w[sentinel]):
        return float("inf")
    g, w = g[~sentinel], w[~sentinel]
    diff = (g - w).abs().nan_to_num(0.0).max().item() if g.numel() else 0.0
    scale = w.abs().nan_to_num(0.0).max().item() if w.numel() else 0.0
    return diff / scale if scale > 0 else diff


@dataclass
class VerifyRecord:
    pass_name: str
    output: str
    error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance

    def line(self) -> str:
        status = "PASS" if self.ok else "FAILED"
        return f"verify {self.pass_name:<22} {self.output:<8} max_err={self.error:.3e} tol={self.tolerance:.0e} {status}"


@dataclass
class CompileReport:
    passes: list[str] = field(default_factory=list)
    pass_seconds: dict[str, float] = field(default_factory=dict)
    records: list[VerifyRecord] = field(default_factory=list)
    compile_seconds: float = 0.0
    # --verify-each: interpreting the input module once, then the module after each pass (by pass label)
    reference_seconds: float = 0.0
    verify_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[VerifyRecord]:
        return [r for r in self.records if not r.ok]


class VerificationFailed(AttncError):
    pass


def _label(p: ModulePass) -> str:
    """The pass as written in a pipeline string (options spelled kv-tile, not kv_tile)."""
    spec = str(p.pipeline_pass_spec())
    if "{" not in spec:
        return spec
    name, opts = spec.split("{", 1)
    return name + "{" + opts.replace("_", "-")


def run_pipeline(module: ModuleOp, pipeline: str, *, verify_inputs: Sequence[torch.Tensor] | None = None,
                 output_names: Sequence[str] = (), after_pass: Callable[[str, ModuleOp], None] | None = None,
                 stop_on_failure: bool = True,
                 before_pass: Callable[[str, ModuleOp], None] | None = None,
                 on_level: Callable[[str, list[torch.Tensor]], None] | None = None) -> CompileReport:
    """Apply `pipeline` to `module` in place. With `verify_inputs`, interpret before/after every pass.
    `before_pass`/`after_pass` are called with the pass label (as in a pipeline string) and the module;
    `on_level` (with `verify_inputs`) with "input" and the input module's outputs, then with each pass's label
    and the outputs after it (the values the verification compared, for pictures of the errors)."""
    report = CompileReport()
    if verify_inputs is not None:
        from attnc.ir.interpreter import run_module
    pipe = build_pipeline(pipeline)
    ctx = make_context()
    t_ref = time.perf_counter()
    previous = run_module(module, verify_inputs) if verify_inputs is not None else None
    report.reference_seconds = time.perf_counter() - t_ref
    if on_level is not None and previous is not None:
        on_level("input", previous)
    start = time.perf_counter()
    verify_time = 0.0
    for p in pipe.passes:
        label = _label(p)
        if before_pass is not None:
            before_pass(label, module)
        t0 = time.perf_counter()
        try:
            p.apply(ctx, module)
        except (PassError, IRError, VerifyException) as e:  # VerifyException: a pass reading a malformed attribute
            raise PassError(f"pass {label}: {e}") from None
        verify_ir(module, f"after {label}")
        report.pass_seconds[label] = time.perf_counter() - t0
        report.passes.append(label)
        if after_pass is not None:
            after_pass(label, module)
        if previous is not None:
            t1 = time.perf_counter()
            current = run_module(module, verify_inputs)
            names = list(output_names) or [f"out{i}" for i in range(len(current))]
            for name, got, want in zip(names, current, previous):
                rec = VerifyRecord(label, name, normalised_error(got, want), pass_tolerance(p))
                report.records.append(rec)
            if on_level is not None:
                on_level(label, current)
            previous = current
            report.verify_seconds[label] = time.perf_counter() - t1
            verify_time += report.verify_seconds[label]
            if stop_on_failure and report.failed:
                bad = report.failed[0]
                raise VerificationFailed(
                    f"verify-each: pass {bad.pass_name} changed output '{bad.output}' by {bad.error:.3e} "
                    f"(tolerance {bad.tolerance:.0e})")
    report.compile_seconds = time.perf_counter() - start - verify_time
    return report
