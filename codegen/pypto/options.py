"""pypto 0.2.0 target options: the scheduling and merging knobs of `@pypto.frontend.jit` and the emitter's tile
budgets, as one validated record that the emitter writes into the program.

Defaults were chosen by measurement in pypto 0.2.0's cost model (attention cores at B=64, S=2, 8K; README
"Simulated AICore time"): the hand-written SWA kernel's settings (stitching 128 functions, L1 reuse, double
buffering) are the best we found for every attention schedule, with double-buffered cube operands at every loop
level (`attnc tune`'s pick on every core: SWA 182 -> 164 us, CSA 906 -> 870 us).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field, fields, replace

from attnc.errors import AttncError


class OptionError(AttncError):
    """A malformed or unknown target option; the message names the option."""


def _int_map(value, name: str) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, int) and isinstance(v, int) and not isinstance(v, bool)
                                              for k, v in value.items()):
        raise OptionError(f"pypto option {name}: expected a dict of int -> int, e.g. {{-1: 4}}")
    return dict(sorted(value.items()))


@dataclass(frozen=True)
class PyptoOptions:
    # pypto.experimental.set_operation_options(combine_axis=...)
    combine_axis: bool = False  # True costs per-pass verify exceptions in token loops (InferDynShape), gains ~1 %
    # runtime_options
    stitch_function_max_num: int = 128
    device_sched_mode: int = 0
    # pass_options (pypto's keys: -1 = every level, otherwise a loop level)
    cube_l1_reuse_setting: dict = field(default_factory=lambda: {0: 4})
    cube_nbuffer_setting: dict = field(default_factory=lambda: {-1: 2})  # attnc tune: best on every core
    vec_nbuffer_setting: dict = field(default_factory=lambda: {-1: 4})
    # emitter: elements of one vector tile (UB 192 KiB holds an op's inputs and outputs, double buffered) outside
    # loops whose pass chose its own (schedule-attention's vec_tile); 16384 trips pypto 0.2.0 runtime crashes
    # (F74007) on padded key lists, 32768 overflows UB (its OoOSchedule pass fails)
    vec_tile_elems: int = 8192

    def with_settings(self, settings: list[str] | dict) -> PyptoOptions:
        """Apply KEY=VALUE strings (VALUE a Python literal) or a dict; raises OptionError naming the option."""
        items = settings.items() if isinstance(settings, dict) else [_split(s) for s in settings]
        known = {f.name: f for f in fields(self)}
        changes = {}
        for key, value in items:
            name = key.replace("-", "_")
            if name not in known:
                raise OptionError(f"unknown pypto option '{key}' (known: {', '.join(known)})")
            changes[name] = _check(name, _literal(key, value) if isinstance(value, str) else value)
        return replace(self, **changes)

    def pass_options(self) -> dict:
        return {"cube_l1_reuse_setting": self.cube_l1_reuse_setting, "cube_nbuffer_setting": self.cube_nbuffer_setting,
                "vec_nbuffer_setting": self.vec_nbuffer_setting}

    def runtime_options(self) -> dict:
        out = {"stitch_function_max_num": self.stitch_function_max_num}
        if self.device_sched_mode:
            out["device_sched_mode"] = self.device_sched_mode
        return out

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _split(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise OptionError(f"pypto option '{text}': expected KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _literal(key: str, text: str):
    try:
        return ast.literal_eval(text)  # literals only: no names, calls or attributes
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise OptionError(f"pypto option {key}: '{text}' is not a Python literal") from None


def _check(name: str, value):
    if name == "combine_axis":
        if not isinstance(value, bool):
            raise OptionError("pypto option combine_axis: expected True or False")
        return value
    if name.endswith("_setting"):
        return _int_map(value, name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= (1 << 20):
        raise OptionError(f"pypto option {name}: expected an integer in [0, 1048576]")
    if name in ("stitch_function_max_num", "vec_tile_elems") and value < 1:
        raise OptionError(f"pypto option {name}: must be positive")
    return value
