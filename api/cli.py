"""`attnc` command line: list, show-config, compile, run.

Every failure caused by the input (unknown stage/config/pass, malformed pipeline or IR text, a missing or
mis-shaped array, a pass refusing, a verification mismatch) prints one line `attnc: error: ...` and exits 2;
no output file is left half-written."""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

from attnc.errors import AttncError, did_you_mean

EXIT_USAGE = 2
EXIT_INTERNAL = 3


class CliError(AttncError):
    """A bad command line (flags, file arguments): the one error kind that speaks in flags."""


EXIT_MISMATCH = 1


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that child process groups and temp folders are cleaned up on the way
    out (like KeyboardInterrupt for SIGINT)."""


def _one_line(e: BaseException) -> str:
    """The first line of an error, its control characters escaped: text from an input file (an escape
    sequence, a carriage return) is never sent raw to the terminal."""
    from attnc.provenance import printable

    return printable(str(e).splitlines()[0]) if str(e) else type(e).__name__


def _say(line: str) -> None:
    """The command's last line on stderr, its end of line in the same write: a signal arriving between print's two
    writes glued 'attnc: terminated' to the error line (the soak)."""
    if sys.stderr is not None:  # `2>&-`
        sys.stderr.write(line + "\n")


def _importing(frame) -> bool:
    """Is the interrupted code inside an import (a module's body, an extension's init, importlib itself)?"""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


class _SignalHold:
    """Sends a signal that arrived inside an import to the main thread again a moment later, from a thread of its
    own woken through a pipe (the handler takes no lock). After HOLD_MAX_S of holding, the signal's default action
    (a hung import must not make attnc unkillable)."""

    REDELIVER_S, HOLD_MAX_S = 0.02, 30.0

    def __init__(self):
        import threading

        self.pid, self.since = os.getpid(), {}
        self.r, self.w = os.pipe()
        threading.Thread(target=self._run, args=(self.r,), name="attnc-signal-hold", daemon=True).start()

    def _run(self, r: int) -> None:
        import signal
        import threading

        while sig := os.read(r, 1):
            time.sleep(self.REDELIVER_S)
            signal.pthread_kill(threading.main_thread().ident, sig[0])  # to cut a wait (a SIM child) short
        os.close(r)

    def later(self, signum: int) -> bool:
        """Hold `signum` (False: held too long)."""
        if time.monotonic() - self.since.setdefault(signum, time.monotonic()) > self.HOLD_MAX_S:
            return False
        os.write(self.w, bytes([signum]))
        return True

    def close(self) -> None:
        os.close(self.w)  # the thread reads the end and leaves


_hold: _SignalHold | None = None


def _on_sigterm(signum, frame):
    """SIGTERM (and a Ctrl-C while a command runs): unwind with Terminated / KeyboardInterrupt, but never from
    inside an import. Raised there, the exception aborted the process in torch's C++ init ('Fatal Python error:
    Aborted'), became 'ImportError: initialization failed' (exit 3) or was cleared by C code (the command went on
    to exit 0): the soak and a SIGTERM loop saw all three. Held, it is raised once the import is done."""
    import signal

    hold = _hold if _hold is not None and _hold.pid == os.getpid() else None
    if hold is not None and _importing(frame):
        if hold.later(signum):
            return
        signal.signal(signum, signal.SIG_DFL)  # the default action, now
        os.kill(os.getpid(), signum)
    if hold is not None:
        hold.since.pop(signum, None)
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


class _SwallowedSignals:
    """sys.unraisablehook while a command runs: a Ctrl-C or SIGTERM whose exception was raised inside a __del__ or
    a callback is swallowed by Python (printed as 'Exception ignored ... Traceback') and the command would go on
    and exit 0 (the soak saw it): it is recorded here, printed as nothing, and the command ends 130/143."""

    def __init__(self):
        self.caught: list[BaseException] = []
        self.previous = sys.unraisablehook

    def __call__(self, unraisable):
        if isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
            self.caught.append(unraisable.exc_value)
            return
        self.previous(unraisable)


def _catch_sigterm(handler=_on_sigterm):
    """Install `handler` for SIGTERM (main thread only); returns the one it replaced."""
    import signal

    try:
        return signal.signal(signal.SIGTERM, handler)
    except (ValueError, TypeError):  # not the main thread, or no previous handler to restore
        return None


def _catch_sigint():
    """Ctrl-C held outside imports like SIGTERM, where Python would raise KeyboardInterrupt (an ignored SIGINT, a
    shell's background job, stays ignored); returns the handler to put back, or None."""
    import signal

    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            return signal.signal(signal.SIGINT, _on_sigterm)
    except ValueError:  # not the main thread
        pass
    return None


class CheckMismatch(Exception):
    """A pypto run's output differs from the interpreter's on the same compiled IR and inputs (exit 1)."""


# -------------------------------------------------------------------------------------------------- sources


@dataclass
class Source:
    """What to compile: a DSL stage built for a config, or a parsed .mlir file."""

    name: str
    module: object
    arg_names: list[str]
    output_names: list[str]
    stage: object | None
    cfg: dict


MAX_IR_BYTES = 64 << 20


def read_source_text(spec: str) -> str:
    """The text of an .mlir source (`-` reads stdin, as mlir-opt does): at most MAX_IR_BYTES, UTF-8."""
    try:
        if spec == "-":
            if sys.stdin is None:  # started with stdin closed (<&-)
                raise CliError("-: cannot read (stdin is closed)")
            stdin = getattr(sys.stdin, "buffer", None)  # a text stream without bytes (tests): read text
            data = stdin.read(MAX_IR_BYTES + 1) if stdin else sys.stdin.read(MAX_IR_BYTES + 1).encode("utf-8")
        else:
            with open(spec, "rb") as f:
                data = f.read(MAX_IR_BYTES + 1)
    except OSError as e:
        raise CliError(f"{spec}: cannot read ({e.strerror})") from None
    if len(data) > MAX_IR_BYTES:
        raise CliError(f"{spec}: larger than {MAX_IR_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise CliError(f"{spec}:{line}: not UTF-8 text (byte {e.start})") from None


def is_ir_source(spec: str) -> bool:
    return spec == "-" or spec.endswith(".mlir")


def load_user_stages(path: str) -> list[str]:
    """Execute a user's stage file (`attnc compile my_stage.py:NAME`); returns the stage names it registered.
    The file is trusted code, like a plugin: it is run as Python."""
    import importlib.util

    from attnc.kernels_src import STAGES

    if not os.path.isfile(path):
        raise CliError(f"{path}: no such file")
    before = dict(STAGES)
    modname = "attnc_user_stage_" + str(abs(hash(os.path.abspath(path))))
    try:
        spec = importlib.util.spec_from_file_location(modname, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module
        spec.loader.exec_module(module)
    except Exception as e:  # the user's own error, in their file: one line naming it
        raise CliError(f"{path}: cannot load ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return [n for n, st in STAGES.items() if before.get(n) is not st]


def load_source(spec: str, config: str, overrides: list[str]) -> Source:
    from attnc.ir import parse_ir
    from attnc.ir import entry_function
    from attnc.kernels_src import STAGES, build_stage, resolve_config

    cfg = resolve_config(config, overrides)
    if is_ir_source(spec):
        module = parse_ir(read_source_text(spec), "<stdin>" if spec == "-" else spec)
        fn = entry_function(module)
        names = _names(fn, "arg_names", len(fn.args), "arg")
        outs = _names(fn, "result_names", len(fn.function_type.outputs.data), "out")
        return Source(fn.sym_name.data, module, names, outs, None, cfg)
    if ".py:" in spec:
        path, _, name = spec.rpartition(":")
        registered = load_user_stages(path)
        if name not in registered:
            raise CliError(f"{path}: defines no stage '{name}' (stages it registers: "
                           f"{', '.join(registered) or 'none'}; use @stage(\"{name}\", ...))")
        spec = name
    if spec not in STAGES:
        raise CliError(f"unknown stage '{spec}'{did_you_mean(spec, STAGES)} (known: {', '.join(STAGES)}; or give a "
                       "FILE.mlir)")
    st = STAGES[spec]
    reason = st.needs(cfg)
    if reason:
        raise CliError(f"stage {spec} cannot be built for config {config}: {reason}")
    from attnc.ir.dsl import stage_params

    return Source(spec, build_stage(st, cfg), list(stage_params(st, cfg)), list(st.outputs), st, cfg)


def _names(fn, attr, n, prefix):
    a = fn.attributes.get(attr)
    names = [x.data for x in a.data] if a is not None else []
    return names if len(names) == n else [f"{prefix}{i}" for i in range(n)]


def source_inputs(src: Source, seed: int, npz_path: str | None = None, extra: dict | None = None) -> dict:
    """Inputs by name: `extra` arrays, then arrays from the file (names and declared sizes checked before any data
    is read), where given; seeded values for the rest."""
    import torch

    from attnc.io import load_npz, seeded_tensor_for_type, to_tensor
    from attnc.ir import entry_function
    from attnc.ir.types import dtype_of, shape_of
    from attnc.kernels_src.inputs import IndexInputError, make_inputs

    fn = entry_function(src.module)
    types = dict(zip(src.arg_names, fn.function_type.inputs.data))
    given = {}
    if npz_path:
        arrays = load_npz(npz_path, {n: shape_of(t) for n, t in types.items()}, src.name)
        for name, arr in arrays.items():
            given[name] = to_tensor(npz_path, name, arr, shape_of(types[name]), dtype_of(types[name]))
    given.update(extra or {})
    if src.stage is not None:
        try:
            return make_inputs(src.stage, src.cfg, seed, given)  # checks the index inputs (one rule)
        except IndexInputError as e:
            raise IndexInputError(f"{npz_path or 'inputs'}: {e}") from None
    gen = torch.Generator().manual_seed(seed)
    return {n: given[n] if n in given else seeded_tensor_for_type(t, gen) for n, t in types.items()}


# -------------------------------------------------------------------------------------------------- commands


def pass_options(name: str) -> list[tuple[str, str, object]]:
    """(option as spelled in a pipeline, type or its values, default) of a pass."""
    import dataclasses

    from attnc.passes import pass_class

    cls = pass_class(name)
    choices = getattr(cls, "option_choices", {})
    return [(f.name.replace("_", "-"), "|".join(map(str, choices[f.name])) if f.name in choices else
             f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type)), f.default)
            for f in dataclasses.fields(cls)]


def cmd_list(args) -> int:
    from attnc.kernels_src import CONFIGS, STAGES
    from attnc.passes import DEFAULT_PIPELINES, pass_class, pass_names, pass_summary, pass_tolerance

    what = args.what or "all"
    if what in ("all", "stages"):
        for name, st in STAGES.items():
            print(f"stage   {name:<22} {st.doc}")
    if what in ("all", "configs"):
        for name, cfg in CONFIGS.items():
            print(f"config  {name:<22} batch={cfg['batch']} seq={cfg['seq']} dim={cfg['dim']} heads={cfg['n_heads']} "
                  f"window={cfg['window']} compress_ratio={cfg['compress_ratio']}")
    if what == "all":
        for name in pass_names():
            print(f"pass    {name:<22} {pass_summary(name)}")
    if what == "passes":  # each pass with its options (pipeline spelling, type, default) and its tolerance
        for name in pass_names():
            print(f"{name}  (tolerance {pass_tolerance(pass_class(name)):g}): {pass_summary(name)}")
            for opt, typ, default in pass_options(name):
                print(f"    {opt}: {typ} = {default}")
    if what in ("all", "pipelines"):
        for target, pipe in DEFAULT_PIPELINES.items():
            print(f"pipeline {target:<21} {pipe}")
    return 0


def cmd_show_config(args) -> int:
    from attnc.kernels_src.configs import public_view, resolve_config

    print(json.dumps(public_view(resolve_config(args.name, args.set)), indent=2))
    return 0


def _pipeline_for(args) -> str:
    from attnc.passes import DEFAULT_PIPELINES

    pypto = getattr(args, "emit", "") == "pypto" or getattr(args, "target", "interp") != "interp"
    if getattr(args, "emit", "") == "pto":
        from attnc.passes import pto_pipeline

        return pto_pipeline(args.pipeline, getattr(args, "pto_dtype", None))
    return args.pipeline if args.pipeline is not None else DEFAULT_PIPELINES["pypto" if pypto else "interp"]


def compile_source(src: Source, pipeline: str, *, verify_each: bool, seed: int = 0, after_pass=None,
                   before_pass=None, timing=None, progress_label: str | None = None):
    """Run `pipeline` on the source in place; a progress line per pass (and per verify) on a terminal, and the
    reference interpretation, each pass and each verify as phases of `timing`."""
    from attnc.progress import Progress
    from attnc.passes import build_pipeline
    from attnc.passes.verify import run_pipeline

    n_passes = len(build_pipeline(pipeline).passes)
    with Progress(n_passes, progress_label or f"compile {src.name}") as bar:
        def before(label, module):
            bar.describe(f"{src.name}: pass {label}")
            if before_pass is not None:
                before_pass(label, module)

        def after(label, module):
            if after_pass is not None:
                after_pass(label, module)
            bar.advance()
            if verify_each:
                bar.describe(f"{src.name}: verify {label}")

        if verify_each:
            bar.describe(f"{src.name}: seeded inputs, reference run")
            inputs = list(source_inputs(src, seed).values())
        else:
            inputs = None
        report = run_pipeline(src.module, pipeline, verify_inputs=inputs, output_names=src.output_names,
                              after_pass=after, before_pass=before)
    if timing is not None:
        if verify_each:
            timing.add("verify: reference run of the input", report.reference_seconds)
        for label, secs in report.pass_seconds.items():
            timing.add(f"pass {label}", secs)
            if label in report.verify_seconds:
                timing.add(f"  verify after {label.split('{')[0]}", report.verify_seconds[label])
    return report


def _config_overrides(src: Source, overrides: list[str]) -> dict:
    """The --set keys with their resolved values (never the raw text)."""
    keys = [o.split("=", 1)[0] for o in overrides]
    return {k: src.cfg[k] for k in dict.fromkeys(keys) if k in src.cfg}


def output_target(output: str | None, default_name: str) -> str | None:
    """mlir-opt's -o: None or `-` = stdout; `DIR/` (a trailing slash) or an existing folder = DIR/default_name;
    anything else is the file itself."""
    if output is None or output == "-":
        return None
    if output.endswith(("/", os.sep)) or os.path.isdir(output):
        return os.path.join(output, default_name)
    return output


def _check_print_ir_names(names: list[str]) -> None:
    from attnc.passes import pass_names

    for name in names:
        if name.split("{")[0] not in pass_names():
            raise CliError(f"--print-ir-before/--print-ir-after: unknown pass '{name}'"
                           f"{did_you_mean(name, pass_names())} (known: {', '.join(pass_names())})")


def _ir_dump(title: str, text: str) -> None:
    from attnc.progress import stderr_write

    stderr_write(f"// -----// IR Dump {title} //----- //\n{text}")


def pypto_options(args):
    from attnc.codegen.pypto.options import PyptoOptions

    return PyptoOptions().with_settings(args.pypto_option)


def apply_tuning(args, stage_name: str) -> None:
    from attnc.tune import apply_tuning as apply

    apply(args, stage_name)


def cmd_compile(args) -> int:
    from attnc.codegen.escape import file_stem
    from attnc.io import Outputs, check_output_path
    from attnc.provenance import Provenance
    from attnc.ir.printing import render_ir

    if args.pto_dtype and args.emit != "pto":
        raise CliError("--pto-dtype needs --emit pto")
    def print_ir(module) -> str:  # names from the DSL; locations and generic form on request
        return render_ir(module, debuginfo=args.print_debuginfo, generic=args.print_op_generic)

    timing = args.timing_report
    _check_print_ir_names(args.print_ir_after + args.print_ir_before)
    if args.dump_dir is not None:
        check_output_path(args.dump_dir, folder=True)
    if args.output is not None:  # every output path is checked before any work
        check_output_path(args.output, folder=args.output != "-" and (
            args.emit == "pto" or args.output.endswith(("/", os.sep)) or os.path.isdir(args.output)))
    with timing.phase("parse" if is_ir_source(args.source) else "build stage (DSL -> attn IR)"):
        source_text = read_source_text(args.source) if is_ir_source(args.source) else None
        if source_text is not None and args.source == "-":
            from attnc.ir import parse_ir  # stdin can be read once: parse the text we already hold
            from attnc.ir import entry_function
            from attnc.kernels_src import resolve_config

            module = parse_ir(source_text, "<stdin>")
            fn = entry_function(module)
            src = Source(fn.sym_name.data, module, _names(fn, "arg_names", len(fn.args), "arg"),
                         _names(fn, "result_names", len(fn.function_type.outputs.data), "out"), None,
                         resolve_config(args.config, args.set))
        else:
            src = load_source(args.source, args.config, args.set)
    apply_tuning(args, src.name)
    if args.verify_each:
        from attnc.memory import check_memory

        check_memory(src.module, f"--verify-each on {src.name}")
    pipeline = _pipeline_for(args)
    dumps: list[tuple[str, str]] = []
    if args.dump_dir:
        dumps.append(("00-input.mlir", print_ir(src.module)))
    state = {"last": print_ir(src.module) if args.print_ir_after_change else None, "running": None}

    def wants(names, label):
        return label.split("{")[0] in [n.split("{")[0] for n in names]

    def before_pass(label: str, module) -> None:
        state["running"] = label
        if args.print_ir_before_all or wants(args.print_ir_before, label):
            _ir_dump(f"Before {label}", print_ir(module))

    def after_pass(label: str, module) -> None:
        state["running"] = None
        text = None
        if args.print_ir_after_all or wants(args.print_ir_after, label):
            text = print_ir(module)
            _ir_dump(f"After {label}", text)
        elif args.print_ir_after_change:
            text = print_ir(module)
            if text != state["last"]:
                _ir_dump(f"After {label}", text)
        if args.print_ir_after_change:
            state["last"] = text or print_ir(module)
        if args.dump_dir:
            fname = f"{len(dumps):02d}-{label.split('{')[0]}.mlir"
            dumps.append((fname, text or print_ir(module)))

    try:
        report = compile_source(src, pipeline, verify_each=args.verify_each, seed=args.seed, after_pass=after_pass,
                                before_pass=before_pass, timing=timing)
    except AttncError as e:
        # the pass that failed: the one running (a refusal) or the last one done (a --verify-each mismatch)
        failed = state["running"] or (dumps[-1][0][3:-5] if len(dumps) > 1 else "input")
        if args.print_ir_after_failure:
            _ir_dump(f"After {failed} Failed", print_ir(src.module))
        if args.dump_dir:
            failure = Outputs()
            for fname, body in dumps:
                failure.add(os.path.join(args.dump_dir, fname), body)
            if state["running"]:  # the IR the failing pass left; a verify failure's IR is already the last dump
                failure.add(os.path.join(args.dump_dir, f"{len(dumps):02d}-{failed.split('{')[0]}.failed.mlir"),
                            print_ir(src.module))
            failure.commit()
        raise e
    suffix = {"pypto": ".pypto.py", "pto": ".pto"}.get(args.emit, ".mlir")
    path = output_target(args.output, file_stem(src.name) + suffix)
    prov = Provenance(args.source, args.config, _config_overrides(src, args.set), pipeline, args.emit,
                      Provenance.hash_text(source_text) if source_text is not None else None,
                      tuple(f for f, on in (("--print-debuginfo", args.print_debuginfo),
                                            ("--print-op-generic", args.print_op_generic))
                            if on and args.emit == "mlir")
                      + tuple(w for o in args.pypto_option for w in ("--pypto-option", o) if args.emit == "pypto")
                      + (("--pto-dtype", args.pto_dtype) if args.emit == "pto" and args.pto_dtype else ()))
    shown = os.path.basename(path) if path else None
    if args.emit == "pto" and args.output not in (None, "-"):  # -o names a folder of kernels
        shown = os.path.basename(os.path.normpath(args.output)) + "/"
    with timing.phase(f"emit {args.emit}"):
        if args.emit == "pypto":
            from attnc.codegen.pypto.emit import emit_pypto

            text = prov.header("#", shown) + emit_pypto(src.module, pypto_options(args))
        elif args.emit == "pto":
            from attnc.codegen.pto.emit import emit_pto

            kernels = emit_pto(src.module, src.name)
            for i, k in enumerate(kernels):  # each file says how it was made and which token loop it is
                k.text = prov.header("//", shown, (
                    f"kernel: {k.name}, token loop {i + 1} of {len(kernels)} ({k.blocks} kernel instances, "
                    f"one per token row); compile it: attnc ptoas {file_stem(k.name)}.pto -o "
                    f"{file_stem(k.name)}.cpp",)) + k.text
            text = "".join(k.text for k in kernels)
        else:
            text = prov.header("//", shown) + print_ir(src.module)
    # everything is computed before anything is written, and written all or nothing
    with timing.phase("write"):
        outputs = Outputs()
        if args.dump_dir:
            for fname, body in dumps:
                outputs.add(os.path.join(args.dump_dir, fname), body)
        written = []
        if args.emit == "pto" and args.output not in (None, "-"):  # one .pto file per token loop: -o is a folder
            for k in kernels:
                written.append(os.path.join(args.output, file_stem(k.name) + ".pto"))
                outputs.add(written[-1], k.text)
        elif path:
            written.append(path)
            outputs.add(path, text)
        else:  # stdout, streamed with the files (all or nothing)
            outputs.add("-", text)
        outputs.commit()
        for w in written:
            print(f"wrote {w}", file=sys.stderr)
    for rec in report.records:
        print(rec.line(), file=sys.stderr)
    if args.timing:
        for line in timing.report():
            print(line, file=sys.stderr)
    return 0


# -------------------------------------------------------------------------------------------------- run


def state_names(src: Source) -> list[str]:
    """In/out arrays: parameters that are also outputs under the same name (caches, rings, states)."""
    return [n for n in src.output_names if n in src.arg_names]


def _npz_names(path: str | None) -> set[str]:
    import numpy as np

    if not path:
        return set()
    try:
        with np.load(path, allow_pickle=False) as data:
            return set(data.files)
    except Exception:  # an unreadable file: source_inputs reports it with the file contract's message
        return set()


def run_inputs(src: Source, args, *, steps: int = 1, tokens: int | None = None) -> tuple[dict, list[str]]:
    """The inputs of `attnc run`/`attnc inputs` and the names of those that were seeded. `--start-pos P` sets
    every row's start position (seeded compressed ids then follow it); a multi-step run starts at 0 unless told.
    Packed layout: `--seqlens` gives the rows' token counts, `--start-pos` each row's first position.
    `tokens`: the tokens per row of the whole run (default: steps x seq), which must stay inside the RoPE table."""
    import torch

    extra = {}
    in_file = _npz_names(args.inputs) if args.inputs else set()
    packed = "position_ids" in src.arg_names and "cu_seqlens" in src.arg_names
    start = args.start_pos
    if start is None and steps > 1 and not in_file & {"start_pos", "position_ids"}:
        start = [0]  # decoding from position 0 needs no prefill and no initial values
    seqlens = getattr(args, "seqlens", None)
    if seqlens is not None:
        if not packed:
            raise CliError(f"--seqlens: {src.name} is not built in the packed layout (--set layout=packed)")
        rows = src.cfg["batch"]
        if len(seqlens) != rows:
            raise CliError(f"--seqlens: {len(seqlens)} token counts for batch={rows} rows")
        if sum(seqlens) > 2**31 - 1:  # cu_seqlens are int32 prefix sums
            raise CliError(f"--seqlens: {sum(seqlens)} tokens in all exceed 2**31 - 1 (cu_seqlens are int32)")
        extra["cu_seqlens"] = torch.tensor([0, *itertools.accumulate(seqlens)], dtype=torch.int32)
    if start is not None:
        if "start_pos" not in src.arg_names and not packed:
            raise CliError(f"--start-pos: {src.name} has no start_pos parameter")
        rows = src.cfg["batch"]
        if len(start) not in (1, rows):
            raise CliError(f"--start-pos: {len(start)} positions for batch={rows} rows (give one, or one per row)")
        # packed: each row's first position (its tokens follow at consecutive positions)
        extra["start_pos"] = torch.tensor(start * rows if len(start) == 1 else start, dtype=torch.int32)
    state_file = getattr(args, "state", None)
    if state_file:
        extra.update(_state_arrays(src, state_file))
    inputs = source_inputs(src, args.seed, args.inputs, extra)
    if packed and "rope_cos" in inputs:
        last = int((inputs["position_ids"] + (steps - 1) * _token_row_lengths(inputs["cu_seqlens"])).max())
        if last >= inputs["rope_cos"].shape[0]:
            raise CliError(f"position_ids: {steps} step(s) reach position {last}, outside the RoPE table "
                           f"(max_pos {inputs['rope_cos'].shape[0]}; --set max_pos=... to grow it)")
    if "start_pos" in inputs and "rope_cos" in inputs and "x" in inputs:
        last = int(inputs["start_pos"].max()) + (tokens if tokens is not None else steps * inputs["x"].shape[1])
        if int(inputs["start_pos"].min()) < 0 or last > inputs["rope_cos"].shape[0]:
            raise CliError(f"start_pos: positions {int(inputs['start_pos'].min())}..{last - 1} are outside the "
                           f"RoPE table (max_pos {inputs['rope_cos'].shape[0]}; --set max_pos=... to grow it)")
    told = in_file | set(extra) | ({"position_ids"} if packed and "start_pos" in extra else set())
    seeded = [n for n in src.arg_names if n not in told]
    return inputs, seeded


def note_seeded(src: Source, seeded: list[str], seed: int, no_seed: bool) -> None:
    if not seeded:
        return
    if no_seed:
        raise CliError(f"--no-seed: {src.name} needs {len(seeded)} more input array(s): {', '.join(seeded)}")
    from attnc.progress import stderr_write

    stderr_write(f"attnc: note: seeded {len(seeded)} of {len(src.arg_names)} inputs of {src.name} (seed {seed}): "
                 f"{', '.join(seeded)}\n")


def _state_arrays(src: Source, path: str) -> dict:
    """The in/out arrays (caches, rings, states) of a previous step's `--out` file: what a serving loop hands from
    one step to the next. The file's other outputs (out, cmp_idx, ...) are not inputs and are left out."""
    from attnc.io import load_npz, to_tensor
    from attnc.ir import entry_function
    from attnc.ir.types import dtype_of, shape_of

    names = state_names(src)
    if not names:
        raise CliError(f"--state: {src.name} has no in/out arrays (caches, rings, states) to carry")
    types = dict(zip(src.arg_names, entry_function(src.module).function_type.inputs.data))
    found = _npz_names(path)
    missing = [n for n in names if n not in found]
    if missing:
        raise CliError(f"--state {path}: no array {', '.join(missing)} (a previous step's --out of {src.name})")
    # only the carried arrays are read, and only after their headers declare the parameters' shapes
    arrays = load_npz(path, {n: shape_of(types[n]) for n in names}, src.name, only=set(names))
    state = {}
    for n in names:
        if tuple(arrays[n].shape) != shape_of(types[n]):
            raise CliError(f"--state {path}: array '{n}' has shape {list(arrays[n].shape)}, the parameter "
                           f"{list(shape_of(types[n]))}")
        state[n] = to_tensor(path, n, arrays[n], shape_of(types[n]), dtype_of(types[n]))
    return state


def _token_row_lengths(cu_seqlens):
    """[T] i32: the token count of each token's row (packed layout)."""
    import torch

    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(lengths, lengths).to(torch.int32)


def _next_step_inputs(src: Source, inputs: dict, outs: dict, step: int, seed: int) -> dict:
    """Step `step`'s inputs for `src` (built for this step's seq): the in/out arrays of the previous step's
    outputs, start_pos advanced by the previous step's token count, fresh seeded tokens x of this step's shape
    (seed + step); weights and tables unchanged."""
    import torch

    from attnc.io import seeded_tensor_for_type
    from attnc.ir import entry_function

    nxt = dict(inputs)
    nxt.update({n: outs[n] for n in state_names(src)})
    if "position_ids" in inputs:  # packed: every row keeps its token count, its positions follow on
        nxt["position_ids"] = inputs["position_ids"] + _token_row_lengths(inputs["cu_seqlens"])
    else:
        nxt["start_pos"] = inputs["start_pos"] + inputs["x"].shape[1]
    x_type = entry_function(src.module).function_type.inputs.data[src.arg_names.index("x")]
    nxt["x"] = seeded_tensor_for_type(x_type, torch.Generator().manual_seed(seed + step))
    return nxt


MAX_STEPS_FILE_BYTES = 1 << 20
MAX_STEPS = 1 << 20


def read_step_counts(path: str) -> list[int]:
    """`--steps-file`: every step's token count per batch row — a JSON list of positive integers, or one positive
    integer a line (blank lines and `#` comments skipped). A bad file is one error naming the file (and line)."""
    from attnc.io import parse_json, read_bounded

    try:
        text = read_bounded(path, MAX_STEPS_FILE_BYTES, "the steps file").decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{path}: the steps file is not UTF-8 text") from None

    def count(value, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CliError(f"{where}: {printable_value(value)} is not a token count (a positive integer)")
        return value

    if text.lstrip().startswith(("[", "{")):
        values = parse_json(text, f"{path}: not a JSON list of token counts")
        if not isinstance(values, list):
            raise CliError(f"{path}: not a JSON list of token counts")
        counts = [count(v, f"{path}: entry {i}") for i, v in enumerate(values)]
    else:
        counts = []
        for no, line in enumerate(text.splitlines(), 1):
            word = line.split("#", 1)[0].strip()
            if word:
                try:
                    value = int(word, 10)
                except ValueError:
                    value = word
                counts.append(count(value, f"{path}:{no}"))
    if not counts:
        raise CliError(f"{path}: no steps (one token count a line, or a JSON list)")
    return counts


def printable_value(value) -> str:
    from attnc.provenance import printable

    return repr(printable(value))[:40] if isinstance(value, str) else printable(repr(value))[:40]


def step_sources(src: Source, args, counts: list[int]) -> list[Source]:
    """The stage built for each step's token count (`seq`), one build per distinct count; only `x` may change."""
    from attnc.ir import entry_function

    from attnc.ir.dsl import stage_config

    if src.stage is None:
        raise CliError(f"--steps-file: {args.source} is IR with a fixed seq; give a stage name or FILE.py:STAGE")
    if any(o.split("=", 1)[0].strip() == "seq" for o in args.set):
        raise CliError("--steps-file sets seq per step: drop --set seq=...")
    max_pos = stage_config(src.stage, src.cfg)["max_pos"]
    if sum(counts) > max_pos:  # before building a stage per count (the exact check, with start_pos, follows)
        raise CliError(f"--steps-file: {sum(counts)} tokens per row do not fit the RoPE table (max_pos {max_pos}; "
                       f"--set max_pos=... to grow it)")
    by_seq: dict[int, Source] = {}
    for n in counts:
        if n not in by_seq:
            by_seq[n] = load_source(args.source, args.config, [*args.set, f"seq={n}"])
    types = {n: dict(zip(s.arg_names, entry_function(s.module).function_type.inputs.data))
             for n, s in by_seq.items()}
    first = types[counts[0]]
    for n, t in types.items():
        changed = [a for a in first if a != "x" and t[a] != first[a]]
        if changed:
            raise CliError(f"--steps-file: {src.name}'s parameter {changed[0]} changes with seq ({counts[0]} vs {n}): "
                           f"only the tokens x may")
    return [by_seq[n] for n in counts]


def _execute(src: Source, inputs: dict, args, timing, label: str):
    """One run on the chosen target: (outputs by name, aicore_us or None, wall seconds)."""
    from attnc.ir.interpreter import run_module

    if args.target == "interp":
        with timing.phase(f"interpret ({args.level} level){label}"):
            t0 = time.perf_counter()
            outs = dict(zip(src.output_names, run_module(src.module, list(inputs.values()))))
            return outs, None, time.perf_counter() - t0
    from attnc.progress import Progress
    from attnc.codegen.pypto.sim import held_temp_folder
    from attnc.codegen.pypto.target import run_pypto_sim

    kind = args.target.split("-")[1].upper()
    marks = [(f"pypto {kind}{label}: emit, start the child", time.perf_counter())]
    with held_temp_folder("attnc-trace-") as trace_tmp:
        with Progress(None, f"{src.name}: pypto {kind}{label}: emit, start the child") as bar:
            bar.tick_every(0.5)

            def on_phase(text: str) -> None:
                marks.append((f"pypto {kind}{label}: {text}", time.perf_counter()))
                bar.describe(f"{src.name}: pypto {kind}{label}: {text}")

            try:
                res = run_pypto_sim(src.module, inputs, verify="none" if args.time_only else "default",
                                    npu=args.target == "pypto-npu", on_phase=on_phase,
                                    trace_dir=trace_tmp if args.trace_dir else None, options=pypto_options(args))
            finally:
                marks.append(("", time.perf_counter()))
                for (name, t0), (_, t1) in zip(marks, marks[1:]):
                    timing.add(name, t1 - t0)
        if args.trace_dir:
            with timing.phase(f"keep the trace, draw swim lanes{label}"):
                _keep_trace(src, trace_tmp, args.trace_dir, label, getattr(args, "pending_outputs", None))
    _check_sim_verify(res)
    if not (args.time_only or args.no_check):
        with timing.phase(f"check against the interpreter{label}"):
            _check_against_interpreter(src, inputs, res.outputs, label, _report_stream(args))
    return res.outputs, res.aicore_us, res.wall_s


def _check_against_interpreter(src: Source, inputs: dict, got: dict, label: str, report=None) -> None:
    """Every output of a pypto run against the interpreter on the same compiled module and inputs
    (`attnc.sim_check`): one line per output (to `report`, default stdout); the first mismatch is an
    error (exit 1)."""
    from attnc.sim_check import check_outputs

    check = check_outputs(src.module, inputs, got, src.output_names)
    for row in check.outputs:
        print(row.line() + label, file=report)
    if check.topk is not None and check.topk_failure:
        print(f"check top-k picks ({', '.join(check.topk['outputs'])}): NOT a top-k of the interpreter's scores "
              f"up to near-ties: {check.topk_failure}{label}", file=report)
    if not check.ok:
        raise CheckMismatch(f"pypto {src.name}{label}: {check.failures[0]} vs the interpreter on the same IR "
                            f"and inputs ({len(check.failures)} output(s) fail the check; --no-check skips it)")


def _check_sim_verify(res) -> None:
    """A FAILED pypto per-pass verify record (or AssembleChecker overlap report) is an error unless its cause
    excuses it (codegen/pypto/target.excuse: a known pypto limitation by error code and op, or disjoint padded writes)."""
    from attnc.codegen.pypto.target import describe, excuse

    bad = [r for r in res.failed_records if excuse(r, res.program) is None]
    if bad:
        raise CliError(f"pypto per-pass verify: {len(bad)} of {len(res.verify)} records FAILED with no known cause "
                       f"(first: {describe(bad[0], res.program)})")
    if res.failed_records:
        why = sorted({excuse(r, res.program) for r in res.failed_records})
        print(f"attnc: note: {len(res.failed_records)} of {len(res.verify)} pypto records (pass verify, "
              f"AssembleChecker) not clean, each excused by its cause: {'; '.join(why)}", file=sys.stderr)


def _keep_trace(src: Source, trace_tmp: str, trace_dir: str, label: str, outputs=None) -> None:
    """pypto's Perfetto trace and a swim-lane picture of the run, named after the stage (and step); added to
    `outputs` (written with the command's other files, all or nothing), or written now without it."""
    from attnc import pictures
    from attnc.io import Outputs

    pending = outputs if outputs is not None else Outputs()

    stem = os.path.join(trace_dir, src.name + label.replace(" step ", "-step").replace("/", "of"))
    trace, swim = os.path.join(trace_tmp, "perfetto.json"), os.path.join(trace_tmp, "swim.json")
    if not os.path.exists(trace):
        print("attnc: note: pypto wrote no cost-model trace for this run", file=sys.stderr)
        return
    with open(trace, "rb") as f:
        pending.add(stem + ".perfetto.json", f.read())
    print(f"pypto trace: {stem}.perfetto.json (open in https://ui.perfetto.dev)", file=sys.stderr)
    if os.path.exists(swim):
        pictures.swim_lanes(swim, stem + ".swim.png", f"pypto SIM swim lanes: {src.name}{label}", sink=pending)
        print(f"swim lanes: {stem}.swim.png", file=sys.stderr)
    if outputs is None:
        pending.commit()


def _report_stream(args):
    """Where `run` prints its summary lines: stderr when stdout carries the outputs (`--out -`), else stdout."""
    return sys.stderr if getattr(args, "out", None) == "-" else sys.stdout


def cmd_run(args) -> int:
    import torch

    from attnc.io import Outputs, check_output_path, npz_bytes
    from attnc.memory import check_memory

    timing = args.timing_report
    if args.out == "-" and sys.stdout is not None and sys.stdout.isatty():
        raise CliError("--out -: stdout is a terminal; redirect it to a file or a pipe (an .npz is binary)")
    if args.out is not None:
        check_output_path(args.out)
    if args.trace_dir is not None:
        check_output_path(args.trace_dir, folder=True)
    args.pending_outputs = Outputs()  # traces and pictures, written with --out (all or nothing)
    if args.target == "interp" and (args.time_only or args.trace_dir or args.no_check):
        raise CliError(("--time-only" if args.time_only else "--trace-dir" if args.trace_dir else "--no-check")
                       + " needs a pypto target")
    if args.target == "pypto-npu":
        from attnc.codegen.pypto.sim import npu_available

        if not npu_available():
            raise CliError("--target pypto-npu needs torch_npu and an Ascend NPU; none found on this machine")
    if args.steps_file and args.steps is not None:
        raise CliError("--steps and --steps-file: give one of them")
    counts = read_step_counts(args.steps_file) if args.steps_file else None
    steps = len(counts) if counts else (1 if args.steps is None else args.steps)
    if steps < 1:
        raise CliError(f"--steps must be at least 1, got {args.steps}")
    if steps > MAX_STEPS:  # before a list of steps is made: each step advances at least one RoPE position
        raise CliError(f"{'--steps-file' if counts else '--steps'}: {steps} steps, more than {MAX_STEPS}")
    how = "--steps-file" if counts else "--steps"
    with timing.phase("parse" if is_ir_source(args.source) else "build stage (DSL -> attn IR)"):
        src = load_source(args.source, args.config, args.set)
    if counts and "position_ids" in src.arg_names:
        raise CliError("--steps-file sets seq per step, which a packed step does not have: use --seqlens and --steps")
    apply_tuning(args, src.name)
    if counts or steps > 1:
        if not state_names(src) or "x" not in src.arg_names or not {"start_pos", "position_ids"} & set(src.arg_names):
            raise CliError(f"{how}: {src.name} carries no state from step to step (a stage with x, start_pos "
                           f"and in/out arrays such as decode_swa/decode_hca/decode_csa or compressor)")
        if args.time_only:
            raise CliError(f"{how} needs each step's values: not with --time-only")
    with timing.phase("build a stage per step size"):
        sources = step_sources(src, args, counts) if counts else [src] * steps
    distinct = list({id(s): s for s in sources}.values())  # one compile per distinct seq
    for each in distinct:
        check_memory(each.module, f"run {each.name}")  # the seeded inputs alone may not fit
    if args.level == "tile" or args.target != "interp":
        for each in distinct:
            compile_source(each, _pipeline_for(args), verify_each=False, timing=timing)
            # SIM: the inputs also travel as numpy arrays and an .npz to the child
            check_memory(each.module, f"run {each.name}", copies_of_inputs=1 if args.target == "interp" else 3,
                         sim_children=0 if args.target == "interp" else 1)
    with timing.phase("inputs"):
        inputs, seeded = run_inputs(sources[0], args, steps=steps, tokens=sum(counts) if counts else None)
    note_seeded(src, seeded, args.seed, args.no_seed)
    aicore = None
    total_wall = 0.0
    for step in range(steps):
        if step:
            inputs = _next_step_inputs(sources[step], inputs, outs, step, args.seed)
        label = f" step {step + 1}/{steps}" if steps > 1 else ""
        outs, aicore, wall = _execute(sources[step], inputs, args, timing, label)
        total_wall += wall
        if steps > 1:
            where = (f"start_pos={inputs['start_pos'].tolist()} seq={inputs['x'].shape[1]}" if "start_pos" in inputs
                     else f"position_ids={inputs['position_ids'].tolist()}")
            print(f"step {step + 1}/{steps}: {where} wall_s={wall:.3f}"
                  + (f" aicore_us={aicore:.3f}" if aicore is not None else ""), file=sys.stderr)
    with timing.phase("write outputs"):
        if args.out is not None and not args.time_only:
            args.pending_outputs.add(args.out, npz_bytes(outs))
        args.pending_outputs.commit()
    report = _report_stream(args)
    for name, t in ({} if args.time_only else outs).items():  # --time-only computes no values
        tf = t.float()
        print(f"{name:<8} {str(t.dtype).replace('torch.', ''):<9} {list(t.shape)} "
              f"mean_abs={tf.abs().mean().item():.6g} finite={bool(torch.isfinite(tf).all())}", file=report)
    print(f"wall_s: {total_wall:.3f}", file=report)
    if aicore is not None:
        print(f"aicore_us: {aicore:.3f}", file=report)
    if args.timing:
        for line in timing.report():
            print(line, file=sys.stderr)
    return 0


def cmd_inputs(args) -> int:
    """Write a stage's inputs (the file's arrays where given, seeded values for the rest) to one .npz."""
    from attnc.io import check_output_path, save_npz

    from attnc.memory import check_memory

    check_output_path(args.output)
    src = load_source(args.source, args.config, args.set)
    check_memory(src.module, f"inputs {src.name}", copies_of_inputs=3, inputs_only=True)  # tensors, arrays, .npz
    inputs, seeded = run_inputs(src, args)
    save_npz(args.output, inputs)
    print(f"wrote {args.output}: {len(inputs)} arrays of {src.name} ({len(seeded)} seeded with seed {args.seed})",
          file=sys.stderr)
    return 0


def _visibility_kind(src: Source) -> str:
    if "start_pos" not in src.arg_names and "position_ids" in src.arg_names:
        raise CliError("plot visibility: draws the dense layout only (batch rows x seq tokens); drop layout=packed")
    if src.name.startswith("decode_"):
        return src.name.split("_", 1)[1]
    if "cmp_idx" in src.arg_names and "kv_ring" in src.arg_names:
        return "csa"  # sparse attention over listed entries
    raise CliError(f"plot visibility: {src.name} attends nothing (a layer kind or a sparse_attn stage)")


def _plot_errors(src: Source, args, title: str) -> None:
    """Every level's error vs the level before (and the pass's tolerance), the tensor level and the FP32 reference."""
    from attnc import pictures
    from attnc.fp32_reference import fp32_reference
    from attnc.pass_errors import measure_pass_errors
    from attnc.ir.dsl import stage_config

    args.inputs, args.no_seed = getattr(args, "inputs", None), False
    inputs, _ = run_inputs(src, args)
    cfg = stage_config(src.stage, src.cfg) if src.stage is not None else src.cfg
    reference, why = (fp32_reference(src.name, cfg, state_names(src), inputs.get("start_pos"))
                      if src.stage is not None else (None, "an .mlir source has no FP32 reference"))
    if reference is None:
        print(f"attnc: note: no FP32 reference in the picture: {why}", file=sys.stderr)
    from attnc.progress import Progress

    with Progress(None, f"{src.name}: every pass, interpreted after each") as bar:
        bar.tick_every(0.5)
        data = measure_pass_errors(src.module, _pipeline_for(args), inputs, list(src.output_names), reference)
    pictures.pass_errors(data, args.output, "error after each pass: " + title,
                         "" if reference is not None else "no FP32 reference: " + why.split(":")[0])


def cmd_plot(args) -> int:
    """Pictures: the tile schedule, the timing of every phase, or which keys each token sees."""
    from attnc import pictures
    from attnc.io import check_output_path
    from attnc.ir.dsl import stage_config

    from attnc.memory import check_memory

    check_output_path(args.output)
    src = load_source(args.source, args.config, args.set)
    if args.kind != "schedule":  # timing verifies each pass, visibility and errors interpret the stage
        check_memory(src.module, f"plot {args.kind} of {src.name}")
    title = f"{src.name} ({args.config}{''.join(' ' + o for o in args.set)})"
    if args.kind == "schedule":
        compile_source(src, _pipeline_for(args), verify_each=False)
        pictures.tile_schedule(src.module, args.output, "tile schedule of " + title)
    elif args.kind == "errors":
        _plot_errors(src, args, title)
    elif args.kind == "timing":
        timing = args.timing_report
        compile_source(src, _pipeline_for(args), verify_each=True, seed=args.seed, timing=timing)
        pictures.phase_timing(timing.phases, args.output, "compile --verify-each: " + title)
    else:
        from attnc.ir.interpreter import run_module

        kind = _visibility_kind(src)
        args.inputs, args.no_seed = getattr(args, "inputs", None), False
        inputs, _ = run_inputs(src, args)
        picks = None
        if kind == "csa":
            picks = inputs.get("cmp_idx")
            if "cmp_idx" in src.output_names:  # the layer's indexer picks them: run it
                outs = dict(zip(src.output_names, run_module(src.module, list(inputs.values()))))
                picks = outs["cmp_idx"]
            picks = picks.tolist()
        cfg = stage_config(src.stage, src.cfg) if src.stage is not None else src.cfg
        pictures.visibility(cfg, inputs["start_pos"].tolist(), kind, args.output, "keys each token sees: " + title,
                            picks)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


# -------------------------------------------------------------------------------------------------- parser


def _positions(text: str) -> list[int]:
    """P or P,P,...: non-negative integers (positions or token counts), at most 2**31 - 1 each."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid list {text[:40]!r}: expected integers separated by commas") from None
    if any(not 0 <= v < 2**31 for v in values):
        raise argparse.ArgumentTypeError(f"invalid list {text[:40]!r}: values must be in [0, 2**31 - 1]")
    return values


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: expected an integer") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"seed {value if len(text) < 40 else text[:40] + '...'} out of range "
                                         "(0 <= SEED < 2**63)")
    return value




def _in_file(text: str) -> str:
    """A file argument read by attnc: `-` (stdin) is only a source (MLIR text), never an .npz or a JSON file."""
    if text == "-":
        raise argparse.ArgumentTypeError("'-' (stdin) is accepted only as the SOURCE; name a file")
    return text


def _out_path(text: str, dash: bool = False, folder: bool = False) -> str:
    """An output path: `-` is stdout only where the output is text (`dash`); its folder must exist unless the
    path ends in `/` (a folder attnc creates) or names one (`folder`: the argument is itself a folder)."""
    if text == "-":
        if dash:
            return text
        raise argparse.ArgumentTypeError("'-' (stdout) is only for compile -o and run --out; name a file")
    if text.endswith("/") or folder:
        return text
    parent = os.path.dirname(text)
    if parent and not os.path.isdir(parent):
        ancestor = parent
        while ancestor and not os.path.exists(ancestor):
            ancestor = os.path.dirname(ancestor)
        if ancestor and not os.path.isdir(ancestor):  # a file in the way: the output check names it
            return text
        raise argparse.ArgumentTypeError(f"{text}: folder {parent}/ does not exist (end a path with / to have "
                                         "attnc create a folder)")
    return text


def _out_text(text: str) -> str:
    return _out_path(text, dash=True)


def _out_dir(text: str) -> str:
    return _out_path(text, folder=True)


_INVALID_CHOICE = re.compile(r"invalid choice: '(.*?)' \(choose from (.*)\)")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other input error
        m = _INVALID_CHOICE.search(message)
        if m:  # a mistyped command or choice: name the closest one
            message += did_you_mean(m.group(1), re.findall(r"'([^']*)'", m.group(2)))
        raise CliError(f"{self.prog}: {message}")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every valued option's help ends with its default (flags are off unless given; an option without a default
    says in its help what happens without it); descriptions keep their line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text or not action.option_strings or default is None or default is False
                or default == [] or default == argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


_EPILOG = """examples:
  attnc list
  attnc compile sparse_attn --config tiny --verify-each --timing -o out/
  attnc inputs decode_hca --config tiny --start-pos 0 -o in.npz
  attnc run decode_hca --config tiny --inputs in.npz --steps 4 --out state.npz
  attnc compile - --pipeline 'builtin.module(cse)' < out/sparse_attn.mlir

environment: ATTNC_PROGRESS=0|1 (progress line; default: when stderr is a terminal),
ATTNC_TRACEBACK=1 (show the traceback of an internal error)."""


def cmd_ptoas(args) -> int:
    """ptoas's own exit code and output; its debug dumps (stderr) pass through."""
    from attnc.codegen.pto.ptoas import PtoasUnavailable, ptoas_command

    if not os.path.isfile(args.pto):
        raise CliError(f"{args.pto}: no such file")
    try:
        argv, env = ptoas_command([args.pto, *args.ptoas_args])
    except PtoasUnavailable as e:
        raise CliError(f"ptoas: {e}") from None
    return subprocess.run(argv, env=env, check=False).returncode


def build_parser() -> argparse.ArgumentParser:
    from attnc.provenance import version_line

    p = _Parser(prog="attnc", formatter_class=_HelpFormatter, epilog=_EPILOG,
                description="DeepSeek-V4 attention stage compiler (DSL -> attn -> tile -> pypto)")
    p.add_argument("--version", action="version", version=version_line(), help="print versions and exit")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    def add(name, help_text, fn):
        q = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)
        q.set_defaults(fn=fn)
        return q

    ls = add("list", "stages, configs, passes and pipelines, one line each", cmd_list)
    ls.add_argument("what", nargs="?", choices=("stages", "configs", "passes", "pipelines"), default=None,
                    help="only these; `passes` also shows each pass's options (type = default) and tolerance "
                         "(default: everything, one line each)")

    sc = add("show-config", "a config as JSON (with its derived sizes)", cmd_show_config)
    sc.add_argument("name", help="config name (see `attnc list`)")
    sc.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")

    def step_inputs(q, overrides: str, default: str):
        """The arrays that place a step: start positions, packed row lengths, a previous step's state."""
        q.add_argument("--start-pos", type=_positions, default=None, metavar="P[,P...]",
                       help=f"every row's start position, or one per row ({overrides}packed: each row's first "
                            f"position); default: seeded{default}")
        q.add_argument("--seqlens", type=_positions, default=None, metavar="N,N,...",
                       help="packed layout: each row's token count (cu_seqlens are their prefix sums); default: "
                            "seeded")
        q.add_argument("--state", metavar="OUT.npz", default=None, type=_in_file,
                       help="the in/out arrays (caches, rings, states) of a previous step's --out file, over "
                            "--inputs (default: none)")

    def common(q, pipeline=True):
        q.add_argument("source", metavar="SOURCE",
                       help="a stage name, FILE.mlir, - (MLIR text on stdin) or FILE.py:STAGE (your own stage file)")
        q.add_argument("--config", default="tiny", help="config name (see `attnc list`)")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key (repeatable)")
        if pipeline:
            q.add_argument("-p", "--pipeline", "--pass-pipeline", dest="pipeline", default=None, metavar="PIPELINE",
                           help="pass pipeline, `a,b{opt=1}` or `builtin.module(a,b)`; default: the target's "
                                 "(`attnc list` shows both)")
        q.add_argument("--seed", type=_seed, default=0, help="seed of the generated inputs, 0 <= SEED < 2**63")
        q.add_argument("--pypto-option", action="append", default=[], metavar="KEY=VALUE",
                       help="pypto target option (scheduling/merging knobs, vector tile budget), e.g. "
                            "'vec_nbuffer_setting={-1: 4}'; see codegen/pypto/options.py (repeatable)")
        q.add_argument("--timing", action="store_true",
                       help="print the wall time of every phase (build/parse, each pass, each verify, emit, write)")
        q.add_argument("--tuning", metavar="FILE", default=None, type=_in_file,
                       help="apply a tuning file from `attnc tune` (its pipeline and pypto options; default: none)")

    c = add("compile", "compile a stage, an .mlir file or stdin", cmd_compile)
    common(c)
    c.add_argument("--emit", choices=("mlir", "pypto", "pto"), default="mlir",
                   help="output kind (pto: one .pto file per token loop, for ptoas; -o names a folder)")
    c.add_argument("--pto-dtype", choices=("f16",), default=None,
                   help="--emit pto: compute bf16 values in f16 (ptoas 0.1.1 has no bf16) (default: bf16 kept)")
    c.add_argument("-o", "--output", metavar="FILE|DIR/", default=None, type=_out_text,
                   help="output file (- = stdout); DIR/ (trailing slash) or an existing folder writes "
                        "DIR/<stage>.mlir or DIR/<stage>.pypto.py; default: stdout")
    c.add_argument("--print-ir-before", action="append", default=[], metavar="PASS",
                   help="print the IR before every run of PASS to stderr (repeatable)")
    c.add_argument("--print-ir-after", action="append", default=[], metavar="PASS",
                   help="print the IR after every run of PASS to stderr (repeatable)")
    c.add_argument("--print-ir-before-all", action="store_true", help="print the IR before every pass")
    c.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass")
    c.add_argument("--print-ir-after-change", action="store_true",
                   help="print the IR after a pass only when the pass changed it")
    c.add_argument("--print-ir-after-failure", action="store_true",
                   help="print the IR a failing pass (or failed verification) left behind")
    c.add_argument("--dump-dir", metavar="DIR", default=None, type=_out_dir,
                   help="write 00-input.mlir and NN-<pass>.mlir after each pass; on a failure the dumps up to it "
                        "and NN-<pass>.failed.mlir (default: no dumps)")
    c.add_argument("--print-debuginfo", action="store_true",
                   help="print each op's DSL location as an MLIR location, loc(\"kernels_src/x.py\":12:1)")
    c.add_argument("--print-op-generic", action="store_true",
                   help="print every op in MLIR's generic form (func, scf and arith included)")
    c.add_argument("--verify-each", action="store_true",
                   help="interpret before and after every pass on seeded inputs; fail beyond the pass's tolerance")

    r = add("run", "run a stage on inputs and write its outputs", cmd_run)
    common(r)
    r.add_argument("--target", choices=("interp", "pypto-sim", "pypto-npu"), default="interp",
                   help="interp: the torch interpreter; pypto-sim: the emitted pypto program in SIM on the CPU")
    r.add_argument("--level", choices=("tensor", "tile"), default="tensor",
                   help="interpret the stage as built (tensor) or after the pipeline (tile)")
    r.add_argument("--inputs", metavar="IN.npz", default=None, type=_in_file,
                   help="input arrays by parameter name (`attnc inputs` writes one); default: none, every array "
                        "seeded (one note line names the seeded arrays)")
    r.add_argument("--no-seed", action="store_true",
                   help="a missing input array is an error instead of a seeded value")
    step_inputs(r, "overrides the file; ", ", or 0 with --steps")
    r.add_argument("--steps-file", metavar="FILE", default=None, type=_in_file,
                   help="decode one step per entry of FILE, each with its own token count per row (seq): one "
                        "positive integer a line (# comments) or a JSON list, e.g. [16, 1, 1, 4]; state carried as "
                        "with --steps (default: none)")
    r.add_argument("--steps", type=int, default=None, metavar="N",
                   help="decode N steps (default 1): each step's in/out arrays (caches, rings, states) feed the next, "
                        "start_pos advances by seq (packed: each row's positions by its token count), x is seeded "
                        "per step (seed+k); --out gets the last step")
    r.add_argument("--out", metavar="OUT.npz", default=None, type=_out_text,
                   help="write the outputs by name (- = stdout, not a terminal: the summary lines then go to stderr) "
                        "(default: not written)")
    r.add_argument("--time-only", action="store_true", help="pypto targets: simulated time only, no values "
                   "(so no check)")
    r.add_argument("--no-check", action="store_true",
                   help="pypto targets: skip the check of every output against the interpreter on the same compiled "
                        "IR and inputs (by default a mismatch exits 1)")
    r.add_argument("--trace-dir", metavar="DIR", default=None, type=_out_dir,
                   help="pypto targets: keep the cost model's Perfetto trace (DIR/<stage>.perfetto.json) and draw "
                        "its swim lanes (DIR/<stage>.swim.png) (default: not kept)")

    i = add("inputs", "write a stage's inputs (seeded, or completed from --inputs) to an .npz", cmd_inputs)
    common(i, pipeline=False)
    i.add_argument("-o", "--output", metavar="IN.npz", required=True, type=_out_path, help="the .npz to write")
    i.add_argument("--inputs", metavar="IN.npz", default=None, type=_in_file, help="arrays to keep; the rest are seeded (default: all seeded)")
    step_inputs(i, "", "")
    pl = add("plot", "pictures (PNG, or SVG by suffix): tile schedule, phase timing, token visibility", cmd_plot)
    pl.add_argument("kind", choices=("schedule", "timing", "visibility", "errors"),
                    help="schedule: the compiled loop nest; timing: every phase of compile --verify-each; "
                         "visibility: window keys and compressed entries of each token; errors: each output's "
                         "error after every pass vs the level before (with the pass's tolerance), the tensor "
                         "level and the FP32 reference")
    common(pl)
    pl.add_argument("-o", "--output", metavar="FILE.png", required=True, type=_out_path,
                    help="the picture to write")
    pl.add_argument("--inputs", metavar="IN.npz", default=None, type=_in_file,
                    help="visibility, errors: inputs (start_pos, cmp_idx, ...); default: seeded")
    pl.add_argument("--start-pos", type=_positions, default=None, metavar="P[,P...]",
                    help="visibility, errors: every row's start position (default: seeded)")

    pt = add("ptoas", "run ptoas 0.1.1 (the wheel's binary, with the loader path it needs) on a .pto file",
             cmd_ptoas)
    pt.add_argument("pto", metavar="FILE.pto", help="a kernel written by `attnc compile --emit pto`")
    pt.add_argument("ptoas_args", nargs=argparse.REMAINDER, metavar="ARGS",
                    help="passed to ptoas as written, e.g. -o FILE.cpp (default: the C++ on stdout)")

    from attnc.tune import add_parser as add_tune_parser

    add_tune_parser(sub, _HelpFormatter)
    return p


def _subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser | None:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices.get(command) if actions and command else None


def main(argv: list[str] | None = None) -> int:
    from attnc.progress import Timing

    timing = Timing()
    process_entry = argv is None  # the `attnc` command itself, not a caller in Python
    argv = sys.argv[1:] if argv is None else list(argv)
    import signal

    global _hold
    outer_hold, _hold = _hold, _SignalHold()
    previous, previous_int = _catch_sigterm(), _catch_sigint()
    swallowed = _SwallowedSignals()
    sys.unraisablehook = swallowed

    def restore():
        global _hold
        sys.unraisablehook = swallowed.previous
        _catch_sigterm(previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)
        hold, _hold = _hold, outer_hold
        hold.close()

    try:
        code = _main(argv, timing)
        if swallowed.caught:  # the signal's exception was swallowed on the way: end as the signal says
            raise swallowed.caught[0]
    except KeyboardInterrupt:
        _say("attnc: interrupted")
        code = 130
    except Terminated:
        _say("attnc: terminated")
        code = 143
    except BaseException:  # ATTNC_TRACEBACK=1: the traceback, as Python prints it
        restore()
        raise
    if process_entry:  # the work is done: skip Python's finalization, which sets SIGTERM back to its default and
        _catch_sigterm(signal.SIG_IGN)  # then takes seconds with torch loaded (a SIGTERM there killed the
        if previous_int is not None:  # finished command)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        _exit_now(code)
    restore()
    return code


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(code)


def _main(argv: list[str], timing) -> int:
    try:
        parser = build_parser()
        if not argv:  # `attnc` alone: usage and the commands
            parser.print_help()
            return 0
        args, extra = parser.parse_known_args(argv)
        if extra:  # name the closest option of the command
            sub = _subparser(parser, getattr(args, "command", None))
            options = [o for a in sub._actions for o in a.option_strings] if sub else []
            flag = next((w for w in extra if w.startswith("-")), extra[0])
            raise CliError(f"{sub.prog if sub else 'attnc'}: unrecognized arguments: {' '.join(extra)}"
                           f"{did_you_mean(flag.split('=')[0], options) if flag.startswith('-') else ''}")
        if getattr(args, "fn", None) is None:
            raise CliError("attnc: a command is required (attnc --help)")
        args.timing_report = timing
        if args.fn in (cmd_compile, cmd_run, cmd_inputs, cmd_plot):
            # a compile interprets nothing unless --verify-each: torch and the interpreter (about half of its CPU
            # time at tiny) stay unloaded
            interprets = args.fn is not cmd_compile or args.verify_each
            with timing.phase("imports (torch, xdsl, attnc)" if interprets else "imports (xdsl, attnc)"):
                import attnc.kernels_src  # noqa: F401
                import attnc.passes.verify  # noqa: F401
                if interprets:
                    import attnc.ir.interpreter  # noqa: F401
        return args.fn(args)
    except SystemExit as e:  # --help, --version
        return int(e.code or 0)
    except AttncError as e:  # every user-facing error; nothing is imported to report it
        _say(f"attnc: error: {_one_line(e)}")
        return EXIT_USAGE
    except BrokenPipeError:  # `attnc list | head -1`: the reader left
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        except (OSError, ValueError, AttributeError):
            pass
        _say("attnc: error: -: cannot write (Broken pipe)")
        return EXIT_USAGE
    except MemoryError:  # an allocation the estimate let through
        _say("attnc: error: out of memory (a smaller --config or --set batch=... needs less)")
        return EXIT_USAGE
    except CheckMismatch as e:
        _say(f"attnc: error: {e}")
        return EXIT_MISMATCH
    except Exception as e:  # a bug in attnc: still one line; ATTNC_TRACEBACK=1 shows the traceback
        if isinstance(e, RuntimeError) and "can't allocate memory" in str(e):  # torch's allocator
            _say("attnc: error: out of memory (a smaller --config or --set batch=... needs less)")
            return EXIT_USAGE
        if os.environ.get("ATTNC_TRACEBACK"):
            raise
        _say(f"attnc: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
