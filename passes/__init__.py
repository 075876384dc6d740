"""attnc passes: one module each, registered by name, composed with MLIR pipeline strings, e.g.
`fuse-rmsnorm,rope-selector-matmul,tile-softmax{kv-tile=32},parallelize-tokens{rows=16},tile-matmul{k=512},lower-to-tiles,canonicalize,cse`.

Every attnc pass declares `tolerance`: the largest normalised error (max |after - before| / max |before|, per
output) that `--verify-each` accepts between the module interpreted before and after it; 0 = exact rewrite.
"""
from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar

from xdsl.passes import ModulePass, PassPipeline
from xdsl.utils.arg_spec import parse_pipeline

from attnc.errors import AttncError, did_you_mean

DEFAULT_PIPELINE = ("quantize-w8a8,schedule-compressor,fuse-rmsnorm,rope-selector-matmul,gather-keys,tile-softmax{kv-tile=32},parallelize-tokens{rows=16},"
                    "tile-matmul{k=512},lower-to-tiles,canonicalize,cse,update-in-place")
# pypto: wider KV tiles (as pypto-lib#486) and 32-row token chunks halve the simulated time at the flash shape;
# projection loops take up to 128 token rows per chunk (each weight read once per step, cube M tile 128) with 16K
# vector tiles; tile-matmul{rule=cost} picks K chunks and N tiles per matmul from the cost model's charges (K kept
# whole: pypto accumulates K inside a cube task; N narrowed only while the 24 cube cores gain more than the A
# re-reads cost; decode_swa flash B=64: 940.6 us with k=4096 tasks=24 -> 896.1). row-tile=16: a chunk above 16
# rows is a multiple of 16, the row tile the emitter gives a 512-wide f32 row (power-of-two splits of 8192); a
# 24-row chunk (T = 24 or 48) is tiled 16 + 8 by wide ops, 24 by narrow ones, and pypto 0.2.0 then keeps the
# compressor pooling in one leaf function larger than UB, which its SIM cannot run (docs/limitations.md)
PYPTO_PIPELINE = ("quantize-w8a8{tile-rows=4 min-rows=128},schedule-compressor,fuse-rmsnorm,rope-pair-swap{min-rank=3},rope-selector-matmul,tile-softmax{kv-tile=128},"
                  "parallelize-tokens{rows=32 weight-rows=128 weight-vec-tile=16384 row-tile=16},"
                  "schedule-attention,tile-matmul{rule=cost tasks=24 split-k=4},lower-to-tiles,canonicalize,cse,update-in-place,pypto-legalize")
# PTO (ptoas 0.1.1): one token per kernel (rows=1, the token axis is dropped), 16-key tiles; then f16 and the
# legalization of what 0.1.1 cannot express (host-side gathers, 0/1 masks instead of i1), then row chunks of the
# loop bodies whose tiles would overflow UB/L1/L0
PTO_PIPELINE = ("quantize-w8a8,schedule-compressor{schedule=row},fuse-rmsnorm,rope-selector-matmul,gather-keys,tile-softmax{kv-tile=16},parallelize-tokens{rows=1},"
                "tile-matmul{k=512},lower-to-tiles,canonicalize,cse,pto-legalize,canonicalize,cse,pto-plan-memory,"
                "canonicalize,cse")


def pto_pipeline(pipeline: str | None, dtype: str | None) -> str:
    """The `--emit pto` pipeline (or the user's), with `pto-dtype{dtype=...}` before pto-legalize when asked."""
    spec = pipeline if pipeline is not None else PTO_PIPELINE
    if dtype is None or "pto-dtype" in spec:
        return spec
    step = f"pto-dtype{{dtype={dtype}}}"
    return spec.replace("pto-legalize", f"{step},pto-legalize", 1) if "pto-legalize" in spec else f"{spec},{step}"


DEFAULT_PIPELINES = {"interp": DEFAULT_PIPELINE, "pypto": PYPTO_PIPELINE, "pto": PTO_PIPELINE}

# module name for every attnc pass (imported lazily so that `attnc list` stays fast)
_PASS_MODULES = {
    "quantize-w8a8": "quantize_w8a8",
    "fuse-rmsnorm": "fuse_rmsnorm",
    "rope-selector-matmul": "rope_selector_matmul",
    "rope-pair-swap": "rope_pair_swap",
    "gather-keys": "gather_keys",
    "tile-softmax": "tile_softmax",
    "parallelize-tokens": "parallelize_tokens",
    "schedule-attention": "schedule_attention",
    "schedule-compressor": "schedule_compressor",
    "tile-matmul": "tile_matmul",
    "lower-to-tiles": "lower_to_tiles",
    "update-in-place": "update_in_place",
}
# a target's own passes (what it cannot express, rewritten in tile IR) live with the target in codegen/; the
# package metadata lists them (pyproject.toml, entry points "attnc.passes"), so this registry finds them by name
# without importing upward
TARGET_PASS_GROUP = "attnc.passes"


@functools.cache
def _target_passes() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=TARGET_PASS_GROUP)}


# xDSL's generic passes that attnc pipelines may use
_XDSL_PASSES = {
    "canonicalize": ("xdsl.transforms.canonicalize", "CanonicalizePass"),
    "cse": ("xdsl.transforms.common_subexpression_elimination", "CommonSubexpressionElimination"),
    "dce": ("xdsl.transforms.dead_code_elimination", "DeadCodeElimination"),
}


class PassError(AttncError):
    """A pass cannot apply (e.g. a dependence check refused it); one line naming the pass and the op location."""


@dataclass(frozen=True)
class AttncPass(ModulePass):
    tolerance: ClassVar[float] = 0.0
    summary: ClassVar[str] = ""
    # the values an enumerated option takes (`attnc list passes` shows them)
    option_choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    # the inclusive (low, high) of a bounded integer option
    option_ranges: ClassVar[dict[str, tuple[int, int]]] = {}

    def check_options(self) -> None:
        """One error line for an option outside its choices or range, before the pass touches the module."""
        for option, choices in self.option_choices.items():
            value = getattr(self, option)
            if value not in choices:
                raise PassError(f"{self.name}: {option.replace('_', '-')} must be one of {', '.join(choices)}, "
                                f"got '{value}'")
        for option, (low, high) in self.option_ranges.items():
            value = getattr(self, option)
            if not low <= value <= high:
                raise PassError(f"{self.name}: {option.replace('_', '-')} must be in [{low}, {high}], got {value}")


@dataclass(frozen=True)
class PatternPass(AttncPass):
    """A pass that is one rewrite pattern applied once over the module; integer options must be positive (those in
    `zero_is_off` may be 0: the feature off)."""
    zero_is_off: ClassVar[tuple[str, ...]] = ()

    def pattern(self):
        raise NotImplementedError

    def finish(self, module) -> None:
        """Hook run after the rewrite."""

    def apply(self, ctx, op):
        from dataclasses import fields

        from xdsl.pattern_rewriter import PatternRewriteWalker

        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and value <= 0 and not (value == 0 and f.name in self.zero_is_off):
                raise PassError(f"{self.name}: option {f.name.replace('_', '-')} must be positive, got {value}")
        self.check_options()
        PatternRewriteWalker(self.pattern(), apply_recursively=False).rewrite_module(op)
        self.finish(op)


_REGISTRY: dict[str, type[ModulePass]] = {}


def register(cls: type[AttncPass]) -> type[AttncPass]:
    _REGISTRY[cls.name] = cls
    return cls


def pass_class(name: str) -> type[ModulePass]:
    if name in _XDSL_PASSES:
        mod, attr = _XDSL_PASSES[name]
        return getattr(importlib.import_module(mod), attr)
    if name not in _REGISTRY:
        if name in _PASS_MODULES:
            importlib.import_module(f"{__name__}.{_PASS_MODULES[name]}")
        else:
            _target_passes()[name].load()
    return _REGISTRY[name]


def pass_names() -> list[str]:
    return [*_PASS_MODULES, *_target_passes(), *_XDSL_PASSES]


def pass_tolerance(p: ModulePass) -> float:
    return getattr(p, "tolerance", 0.0)


def pass_summary(name: str) -> str:
    if name in _XDSL_PASSES:
        return {"canonicalize": "xDSL canonicalization patterns", "cse": "xDSL common subexpression elimination",
                "dce": "xDSL dead code elimination"}[name]
    return pass_class(name).summary


def strip_module_anchor(spec: str) -> str:
    """`builtin.module(a,b{x=1})` (mlir-opt's --pass-pipeline form) -> `a,b{x=1}`; other text is returned as is."""
    text = spec.strip()
    for anchor in ("builtin.module(", "module("):
        if text.startswith(anchor) and text.endswith(")"):
            return text[len(anchor):-1].strip()
    return spec


def build_pipeline(spec: str, callback=None) -> PassPipeline:
    """Parse a pipeline string (plain or wrapped in `builtin.module(...)`); unknown passes, bad options and
    malformed text raise PipelineError."""
    from xdsl.utils.exceptions import ArgSpecParseError

    spec = strip_module_anchor(spec)
    try:
        specs = list(parse_pipeline(spec))
    except (ArgSpecParseError, Exception) as e:  # xDSL's parse error derives from BaseException
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        where = next((ln for ln in lines if ln.startswith("pass-pipeline:")), "")
        col = where.rsplit(":", 1)[-1] if where else "?"
        raise PipelineError(f"pipeline:{col}: {lines[-1] if lines else 'malformed'} in '{spec}'") from None
    passes = []
    for s in specs:
        if s.name not in pass_names():
            raise PipelineError(f"pipeline: unknown pass '{s.name}'{did_you_mean(s.name, pass_names())} "
                                f"(known: {', '.join(pass_names())})")
        known = [f.name.replace("_", "-") for f in fields(pass_class(s.name))]
        for opt in s.parameters:
            if opt.replace("_", "-") not in known:
                raise PipelineError(f"pipeline: pass '{s.name}' has no option '{opt}'{did_you_mean(opt, known)} "
                                    f"(options: {', '.join(known) or 'none'})")
        try:
            passes.append(pass_class(s.name).from_pass_spec(s))
        except Exception as e:
            raise PipelineError(f"pipeline: pass '{s.name}': {str(e).splitlines()[0]}") from None
    return PassPipeline(tuple(passes), callback)


class PipelineError(AttncError):
    pass


def pass_spec_text(p: ModulePass) -> str:
    return str(p.pipeline_pass_spec())
