"""attnc's Python API: build a stage, run a pipeline, interpret, emit, run in pypto SIM; arrays travel as dicts
of named numpy arrays (bf16 as float32 holding bf16 values, exactly as in the `.npz` file contract).

    import attnc

    stage = attnc.build("decode_csa", config="tiny", seq=1)   # keyword overrides = --set
    inputs = attnc.inputs(stage, seed=7, start_pos=0)         # {name: np.ndarray}, seeded with valid meaning
    report = attnc.compile(stage, verify_each=True)           # the default pipeline; report.records, .passes
    outputs = attnc.interpret(stage, inputs)                  # {name: np.ndarray}
    later = attnc.decode(stage, inputs, steps=4)              # in/out arrays carried from step to step
    text = attnc.emit_pypto(stage)                            # a @pypto.frontend.jit program (needs tile IR)
    sim = attnc.run_sim(stage, inputs)                        # sim.outputs, sim.aicore_us, sim.failed_records

This folder installs as the package `attnc` (pyproject.toml maps it, like `attnc.ir` = `ir/`); everything here is
a thin layer over `attnc.ir`, `attnc.passes`, `attnc.kernels_src` and `attnc.codegen`, imported lazily so that
`import attnc.ir` and the CLI stay fast. Every error caused by the input is an `attnc.AttncError` (one-line
message); anything else is a bug."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from attnc.errors import AttncError

__all__ = ["AttncError", "Stage", "SimRun", "stages", "configs", "passes", "config", "build", "parse", "compile",
           "inputs", "interpret", "decode", "compare", "print_ir", "emit_pypto", "run_sim", "__version__"]
_TARGETS = ("interp", "pypto", "pypto-sim", "pypto-npu")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("attnc")
    except metadata.PackageNotFoundError:
        return "unknown"


__version__ = _version()


@dataclass
class Stage:
    """A stage's IR (an xDSL ModuleOp, changed in place by `compile`) with its parameter and output names."""

    name: str
    module: Any
    arg_names: list[str]
    output_names: list[str]
    config: str
    overrides: dict
    cfg: dict
    stage_def: Any = None
    source: str = ""
    pipelines: list[str] = field(default_factory=list)

    @property
    def state_names(self) -> list[str]:
        """In/out arrays (caches, rings, states): parameters that are also outputs."""
        return [n for n in self.output_names if n in self.arg_names]

    def __str__(self) -> str:
        return print_ir(self)

    def _source(self):
        from attnc.cli import Source

        return Source(self.name, self.module, self.arg_names, self.output_names, self.stage_def, self.cfg)


def _need_stage(stage, fn: str) -> None:
    """API functions take the Stage that `build`/`parse` return; a name is the usual slip."""
    if not isinstance(stage, Stage):
        hint = f" (attnc.build({stage!r}) makes one)" if isinstance(stage, str) else ""
        raise AttncError(f"attnc.{fn}: expected a Stage, got {type(stage).__name__}{hint}")


def stages() -> list[str]:
    from attnc.kernels_src import STAGES

    return list(STAGES)


def configs() -> list[str]:
    from attnc.kernels_src import CONFIGS

    return list(CONFIGS)


def passes() -> list[str]:
    from attnc.passes import pass_names

    return pass_names()


def config(name: str = "tiny", **overrides) -> dict:
    """A config with overrides applied and its derived sizes (as `attnc show-config`)."""
    from attnc.kernels_src import resolve_config

    return resolve_config(name, overrides)


def build(source: str, config: str = "tiny", **overrides) -> Stage:
    """A stage at the tensor level: a registered stage name, `FILE.py:NAME` (a file with your own @stage) or an
    `.mlir` file. Keyword arguments override config keys."""
    from attnc.cli import load_source

    src = load_source(source, config, [f"{k}={v}" for k, v in overrides.items()])
    return Stage(src.name, src.module, src.arg_names, src.output_names, config, dict(overrides), src.cfg, src.stage,
                 source)


def parse(text: str, name: str = "<text>", config: str = "tiny") -> Stage:
    """A stage from MLIR text (e.g. a dump)."""
    from attnc.ir import parse_ir
    from attnc.ir.interpreter import entry_function
    from attnc.kernels_src import resolve_config

    module = parse_ir(text, name)
    fn = entry_function(module)

    def names(attr, n, prefix):
        a = fn.attributes.get(attr)
        got = [x.data for x in a.data] if a is not None else []
        return got if len(got) == n else [f"{prefix}{i}" for i in range(n)]

    return Stage(fn.sym_name.data, module, names("arg_names", len(fn.args), "arg"),
                 names("result_names", len(fn.function_type.outputs.data), "out"), config, {},
                 resolve_config(config), None, name)


def compile(stage: Stage, pipeline: str | None = None, *, target: str = "interp", verify_each: bool = False,
            seed: int = 0):
    """Run a pass pipeline on the stage in place (default: the target's, `interp` or `pypto`). With
    `verify_each`, every pass is checked against the interpreter on seeded inputs. Returns the CompileReport
    (`.passes`, `.pass_seconds`, `.records`); raises VerificationFailed / PassError on a failure."""
    from attnc.errors import did_you_mean
    from attnc.passes import DEFAULT_PIPELINES
    from attnc.passes.verify import run_pipeline

    _need_stage(stage, "compile")
    if target not in _TARGETS:
        raise AttncError(f"attnc.compile: unknown target '{target}'{did_you_mean(target, _TARGETS)} "
                         f"(known: {', '.join(_TARGETS)})")
    pipe = pipeline or DEFAULT_PIPELINES["pypto" if target.startswith("pypto") else "interp"]
    verify_inputs = None
    if verify_each:
        from attnc.cli import source_inputs

        verify_inputs = list(source_inputs(stage._source(), seed).values())
    report = run_pipeline(stage.module, pipe, verify_inputs=verify_inputs, output_names=stage.output_names)
    stage.pipelines.append(pipe)
    return report


def _arg_types(stage: Stage) -> dict:
    from attnc.ir.interpreter import entry_function

    return dict(zip(stage.arg_names, entry_function(stage.module).function_type.inputs.data))


def _tensors(stage: Stage, arrays: dict, where: str) -> dict:
    """Named arrays (numpy or torch) -> torch tensors of the parameters' dtypes, shapes checked."""
    import numpy as np
    import torch

    from attnc.io import InputError, to_tensor
    from attnc.ir.types import dtype_of, shape_of

    types = _arg_types(stage)
    unknown = sorted(set(arrays) - set(types))
    if unknown:
        raise InputError(f"{where}: array '{unknown[0]}' is not a parameter of {stage.name} "
                         f"(parameters: {', '.join(stage.arg_names)})")
    out = {}
    for name, value in arrays.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().float().numpy() if value.is_floating_point() else value.cpu().numpy()
        out[name] = to_tensor(where, name, np.asarray(value), shape_of(types[name]), dtype_of(types[name]))
    return out


def _numpy(tensors: dict) -> dict:
    from attnc.io import to_numpy

    return {k: to_numpy(v) for k, v in tensors.items()}


def inputs(stage: Stage, seed: int = 0, given: dict | None = None, start_pos: int | None = None) -> dict:
    """Every parameter by name: `given` arrays, seeded values with valid meaning for the rest (as `attnc inputs`);
    `start_pos` sets every row's start position."""
    import torch

    from attnc.cli import source_inputs
    from attnc.ir.types import shape_of

    _need_stage(stage, "inputs")
    extra = _tensors(stage, dict(given or {}), "inputs")
    if start_pos is not None:  # packed layout: every row's first position (position_ids follow from it)
        types = _arg_types(stage)
        shape = shape_of(types["start_pos"]) if "start_pos" in types else (stage.cfg["batch"],)
        extra["start_pos"] = torch.full(shape, start_pos, dtype=torch.int32)
    return _numpy(source_inputs(stage._source(), seed, None, extra))


def _complete(stage: Stage, arrays: dict, fn: str = "interpret") -> list:
    from attnc.io import InputError

    _need_stage(stage, fn)
    missing = [n for n in stage.arg_names if n not in arrays]
    if missing:
        raise InputError(f"interpret: {stage.name} needs arrays {', '.join(missing)} (attnc.inputs fills them)")
    tensors = _tensors(stage, arrays, "interpret")
    return [tensors[n] for n in stage.arg_names]


def interpret(stage: Stage, arrays: dict) -> dict:
    """Run the stage's IR (at whatever level it is) in the torch interpreter; outputs by name."""
    from attnc.ir.interpreter import run_module

    return _numpy(dict(zip(stage.output_names, run_module(stage.module, _complete(stage, arrays)))))


def decode(stage: Stage, arrays: dict, steps: int, seed: int = 0) -> list[dict]:
    """`steps` decode steps from `arrays`: each step's in/out arrays feed the next, start_pos advances by seq
    (packed: each row's positions by its token count),
    later steps' tokens x are seeded (seed + k), as `attnc run --steps`. Returns every step's outputs."""
    import torch

    from attnc.io import seeded_tensor_for_type

    _need_stage(stage, "decode")
    if not stage.state_names or not {"start_pos", "position_ids"} & set(stage.arg_names) or "x" not in stage.arg_names:
        raise AttncError(f"attnc.decode: {stage.name} carries no state from step to step")
    current, results = dict(arrays), []
    for k in range(steps):
        if k:
            prev = results[-1]
            current = dict(current, **{n: prev[n] for n in stage.state_names})
            if "position_ids" in current:  # packed: every row keeps its token count, its positions follow on
                lengths = current["cu_seqlens"][1:] - current["cu_seqlens"][:-1]
                current["position_ids"] = current["position_ids"] + lengths.repeat(lengths)
            else:
                current["start_pos"] = current["start_pos"] + current["x"].shape[1]
            x = seeded_tensor_for_type(_arg_types(stage)["x"], torch.Generator().manual_seed(seed + k))
            current["x"] = _numpy({"x": x})["x"]
        results.append(interpret(stage, current))
    return results


def compare(got: dict, want: dict) -> dict[str, float]:
    """The normalised error max|got − want| / max|want| of every array `want` names (what `--verify-each`
    checks; integers: 0 or 1, NaN where the other has none: inf). Arrays are numpy or torch."""
    import numpy as np
    import torch

    from attnc.passes.verify import normalised_error

    missing = [k for k in want if k not in got]
    if missing:
        raise AttncError(f"attnc.compare: no array {', '.join(missing)} in the first argument")
    as_t = lambda v: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))  # noqa: E731
    return {k: normalised_error(as_t(got[k]), as_t(want[k])) for k in want}


def print_ir(stage: Stage, *, debuginfo: bool = False, generic: bool = False) -> str:
    """The stage's IR as `attnc compile` prints it: SSA names from the DSL, DSL locations only with `debuginfo`,
    every op generic with `generic`. `parse` reads either form back."""
    from attnc.ir.printing import render_ir

    _need_stage(stage, "print_ir")
    return render_ir(stage.module, debuginfo=debuginfo, generic=generic)


def _provenance(stage: Stage, emit: str):
    from attnc.provenance import Provenance

    return Provenance(stage.source or stage.name, stage.config, {k: stage.cfg.get(k, v) for k, v in
                      stage.overrides.items()}, ",".join(stage.pipelines), emit)


def emit_pypto(stage: Stage, header: bool = True) -> str:
    """The stage (compiled to tile IR, e.g. by `compile(stage, target="pypto")`) as a pypto 0.2.0 program."""
    from attnc.codegen.pypto.emit import emit_pypto as _emit

    _need_stage(stage, "emit_pypto")
    return (_provenance(stage, "pypto").header("#") if header else "") + _emit(stage.module)


@dataclass
class SimRun:
    outputs: dict
    aicore_us: float | None
    failed_records: list  # pypto verify records no known cause excuses (a run with any is not trustworthy)
    wall_s: float
    excused_records: list = field(default_factory=list)  # failed records excused by their cause


def run_sim(stage: Stage, arrays: dict, *, time_only: bool = False) -> SimRun:
    """Run the emitted pypto program in SIM on the CPU (a child process; minutes at full shapes). With
    `time_only`, only the simulated AICore time is computed (no output values)."""
    from attnc.codegen.pypto.target import run_pypto_sim, unexcused

    names = _complete(stage, arrays, "run_sim")
    res = run_pypto_sim(stage.module, dict(zip(stage.arg_names, names)), verify="none" if time_only else "default")
    bad = unexcused(res)
    return SimRun(_numpy(res.outputs), res.aicore_us, bad, res.wall_s,
                  [r for r in res.failed_records if r not in bad])
