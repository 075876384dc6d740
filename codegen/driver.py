"""`attnc` command line: list, show-config, compile, run.

Every failure caused by the input (unknown stage/config/pass, malformed pipeline or IR text, a missing or
mis-shaped array, a pass refusing, a verification mismatch) prints one line `attnc: error: ...` and exits 2;
no output file is left half-written."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass

EXIT_USAGE = 2
EXIT_INTERNAL = 3


class CliError(Exception):
    pass


def _error_types() -> tuple[type[BaseException], ...]:
    from attnc.codegen.escape import UnsafeName
    from attnc.codegen.io import InputError, OutputError
    from attnc.codegen.memory import MemoryLimitError
    from attnc.ir import IRError
    from attnc.ir.dsl import DSLError
    from attnc.ir.interpreter import InterpretError
    from attnc.kernels_src.configs import ConfigError
    from attnc.kernels_src.inputs import IndexInputError
    from attnc.passes import PassError, PipelineError
    from attnc.passes.verify import VerificationFailed

    types = [CliError, InputError, OutputError, MemoryLimitError, UnsafeName, IndexInputError, IRError, DSLError,
             InterpretError, ConfigError, PassError, PipelineError, VerificationFailed]
    try:
        from attnc.codegen.pypto_emit import EmitError

        types.append(EmitError)
    except ImportError:
        pass
    try:
        from attnc.codegen.pypto_sim import PyptoSimError

        types.append(PyptoSimError)
    except ImportError:
        pass
    return tuple(types)


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


def load_source(spec: str, config: str, overrides: list[str]) -> Source:
    from attnc.ir import parse_ir
    from attnc.ir.interpreter import entry_function
    from attnc.kernels_src import STAGES, build_stage, resolve_config

    cfg = resolve_config(config, overrides)
    if spec.endswith(".mlir"):
        text = read_ir_text(spec)
        module = parse_ir(text, spec)
        fn = entry_function(module)
        names = _names(fn, "arg_names", len(fn.args), "arg")
        outs = _names(fn, "result_names", len(fn.function_type.outputs.data), "out")
        return Source(fn.sym_name.data, module, names, outs, None, cfg)
    if spec not in STAGES:
        raise CliError(f"unknown stage '{spec}' (known: {', '.join(STAGES)}; or give a FILE.mlir)")
    st = STAGES[spec]
    reason = st.needs(cfg)
    if reason:
        raise CliError(f"stage {spec} cannot be built for config {config}: {reason}")
    return Source(spec, build_stage(st, cfg), list(st.params), list(st.outputs), st, cfg)


MAX_IR_BYTES = 64 << 20


def read_ir_text(path: str) -> str:
    """The text of an .mlir file: at most MAX_IR_BYTES, UTF-8."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_IR_BYTES + 1)
    except OSError as e:
        raise CliError(f"{path}: cannot read ({e.strerror})") from None
    if len(data) > MAX_IR_BYTES:
        raise CliError(f"{path}: larger than {MAX_IR_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise CliError(f"{path}:{line}: not UTF-8 text (byte {e.start})") from None


def _names(fn, attr, n, prefix):
    a = fn.attributes.get(attr)
    names = [x.data for x in a.data] if a is not None else []
    return names if len(names) == n else [f"{prefix}{i}" for i in range(n)]


def source_inputs(src: Source, seed: int, npz_path: str | None = None) -> dict:
    """Inputs by name: arrays from the file where given, seeded values for the rest."""
    import torch

    from attnc.codegen.io import load_npz, seeded_tensor_for_type, to_tensor
    from attnc.ir.interpreter import entry_function
    from attnc.ir.types import dtype_of, shape_of
    from attnc.kernels_src.inputs import IndexInputError, make_inputs

    fn = entry_function(src.module)
    types = dict(zip(src.arg_names, fn.function_type.inputs.data))
    given = {}
    if npz_path:
        arrays = load_npz(npz_path, {n: shape_of(t) for n, t in types.items()}, src.name)
        for name, arr in arrays.items():
            given[name] = to_tensor(npz_path, name, arr, shape_of(types[name]), dtype_of(types[name]))
    if src.stage is not None:
        try:
            return make_inputs(src.stage, src.cfg, seed, given)  # checks the index inputs (one rule)
        except IndexInputError as e:
            raise IndexInputError(f"{npz_path}: {e}") from None
    gen = torch.Generator().manual_seed(seed)
    return {n: given[n] if n in given else seeded_tensor_for_type(t, gen) for n, t in types.items()}


# -------------------------------------------------------------------------------------------------- commands


def cmd_list(args) -> int:
    from attnc.kernels_src import CONFIGS, STAGES
    from attnc.passes import pass_names, pass_summary

    for name, st in STAGES.items():
        print(f"stage   {name:<22} {st.doc}")
    for name, cfg in CONFIGS.items():
        print(f"config  {name:<22} batch={cfg['batch']} seq={cfg['seq']} dim={cfg['dim']} heads={cfg['n_heads']} "
              f"window={cfg['window']} compress_ratio={cfg['compress_ratio']}")
    for name in pass_names():
        print(f"pass    {name:<22} {pass_summary(name)}")
    return 0


def cmd_show_config(args) -> int:
    from attnc.kernels_src.configs import public_view, resolve_config

    print(json.dumps(public_view(resolve_config(args.name, args.set)), indent=2))
    return 0


def _pipeline_for(args) -> str:
    from attnc.passes import DEFAULT_PIPELINES

    pypto = getattr(args, "emit", "") == "pypto" or getattr(args, "target", "interp") != "interp"
    return args.pipeline if args.pipeline is not None else DEFAULT_PIPELINES["pypto" if pypto else "interp"]


def compile_source(src: Source, pipeline: str, *, verify_each: bool, seed: int = 0, after_pass=None):
    from attnc.passes.verify import run_pipeline

    inputs = list(source_inputs(src, seed).values()) if verify_each else None
    return run_pipeline(src.module, pipeline, verify_inputs=inputs, output_names=src.output_names,
                        after_pass=after_pass)


def cmd_compile(args) -> int:
    from attnc.ir import print_ir

    from attnc.codegen.escape import file_stem
    from attnc.codegen.io import Outputs, check_output_path

    if args.output:
        check_output_path(args.output, folder=True)
    if args.dump_dir:
        check_output_path(args.dump_dir, folder=True)
    src = load_source(args.source, args.config, args.set)
    if args.verify_each:
        from attnc.codegen.memory import check_memory

        check_memory(src.module, f"--verify-each on {src.name}")
    pipeline = _pipeline_for(args)
    dumps: list[tuple[str, str]] = []
    if args.dump_dir:
        dumps.append(("00-input.mlir", print_ir(src.module)))

    def after_pass(label: str, module) -> None:
        text = None
        if args.print_ir_after_all or (args.print_ir_after and label.split("{")[0] in args.print_ir_after):
            text = print_ir(module)
            print(f"// -----// IR after {label} //----- //", file=sys.stderr)
            sys.stderr.write(text)
        if args.dump_dir:
            fname = f"{len(dumps):02d}-{label.split('{')[0]}.mlir"
            dumps.append((fname, text or print_ir(module)))

    report = compile_source(src, pipeline, verify_each=args.verify_each, seed=args.seed, after_pass=after_pass)
    if args.emit == "pypto":
        from attnc.codegen.pypto_emit import emit_pypto

        text, suffix = emit_pypto(src.module), ".pypto.py"
    else:
        text, suffix = print_ir(src.module), ".mlir"
    # everything is computed before anything is written, and written all or nothing
    outputs = Outputs()
    if args.dump_dir:
        for fname, body in dumps:
            outputs.add(os.path.join(args.dump_dir, fname), body)
    if args.output:
        path = os.path.join(args.output, file_stem(src.name) + suffix)
        outputs.add(path, text)
    outputs.commit()
    if args.output:
        print(f"wrote {path}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    for rec in report.records:
        print(rec.line(), file=sys.stderr)
    if args.timing:
        for label, secs in report.pass_seconds.items():
            print(f"timing {label:<40} {secs * 1e3:8.2f} ms", file=sys.stderr)
        print(f"timing {'total':<40} {report.compile_seconds * 1e3:8.2f} ms", file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    import torch

    from attnc.codegen.io import check_output_path, save_npz
    from attnc.codegen.memory import check_memory
    from attnc.ir.interpreter import run_module

    if args.out:
        check_output_path(args.out)
    src = load_source(args.source, args.config, args.set)
    check_memory(src.module, f"run {src.name}")  # the seeded inputs alone may not fit
    if args.level == "tile" or args.target != "interp":
        compile_source(src, _pipeline_for(args), verify_each=False)
        # SIM: the inputs also travel as numpy arrays and an .npz to the child
        check_memory(src.module, f"run {src.name}", copies_of_inputs=1 if args.target == "interp" else 3)
    inputs = source_inputs(src, args.seed, args.inputs)
    aicore = None
    if args.target == "interp":
        if args.time_only:
            raise CliError("--time-only needs a pypto target")
        t0 = time.perf_counter()
        outs = dict(zip(src.output_names, run_module(src.module, list(inputs.values()))))
        wall = time.perf_counter() - t0
    else:
        from attnc.codegen.pypto_sim import npu_available
        from attnc.codegen.pypto_target import run_pypto_sim

        if args.target == "pypto-npu" and not npu_available():
            raise CliError("--target pypto-npu needs torch_npu and an Ascend NPU; none found on this machine")
        res = run_pypto_sim(src.module, inputs, verify="none" if args.time_only else "default",
                            npu=args.target == "pypto-npu")
        outs, aicore, wall = res.outputs, res.aicore_us, res.wall_s
        for rec in res.failed_records:
            print(f"pypto verify FAILED: {rec}", file=sys.stderr)
    if args.out and not args.time_only:
        save_npz(args.out, outs)
    for name, t in ({} if args.time_only else outs).items():  # --time-only computes no values
        tf = t.float()
        print(f"{name:<8} {str(t.dtype).replace('torch.', ''):<9} {list(t.shape)} "
              f"mean_abs={tf.abs().mean().item():.6g} finite={bool(torch.isfinite(tf).all())}")
    print(f"wall_s: {wall:.3f}")
    if aicore is not None:
        print(f"aicore_us: {aicore:.3f}")
    return 0


# -------------------------------------------------------------------------------------------------- parser


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: expected an integer") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"seed {value if len(text) < 40 else text[:40] + '...'} out of range "
                                         "(0 <= SEED < 2**63)")
    return value


def _one_line(message: str) -> str:
    """The first line of a message with control characters escaped (a message may quote the input)."""
    first = message.splitlines()[0] if message.splitlines() else message
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in first)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other input error
        raise CliError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="attnc", description="DeepSeek-V4 attention stage compiler (DSL -> attn -> tile -> pypto)")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    sub.required = True

    sub.add_parser("list", help="stages, configs and passes, one line each").set_defaults(fn=cmd_list)

    sc = sub.add_parser("show-config", help="a config as JSON")
    sc.add_argument("name")
    sc.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    sc.set_defaults(fn=cmd_show_config)

    def common(q):
        q.add_argument("source", metavar="STAGE|FILE.mlir")
        q.add_argument("--config", default="tiny")
        q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        q.add_argument("--pipeline", default=None, help="pass pipeline string (default: the target's)")
        q.add_argument("--seed", type=_seed, default=0, help="random seed, 0 <= SEED < 2**63")

    c = sub.add_parser("compile", help="compile a stage or an .mlir file")
    common(c)
    c.add_argument("--emit", choices=("mlir", "pypto"), default="mlir")
    c.add_argument("-o", "--output", metavar="DIR")
    c.add_argument("--print-ir-after-all", action="store_true")
    c.add_argument("--print-ir-after", action="append", default=[], metavar="PASS")
    c.add_argument("--dump-dir", metavar="DIR")
    c.add_argument("--timing", action="store_true")
    c.add_argument("--verify-each", action="store_true")
    c.set_defaults(fn=cmd_compile)

    r = sub.add_parser("run", help="run a stage on inputs and write its outputs")
    common(r)
    r.add_argument("--target", choices=("interp", "pypto-sim", "pypto-npu"), default="interp")
    r.add_argument("--level", choices=("tensor", "tile"), default="tensor")
    r.add_argument("--inputs", metavar="IN.npz")
    r.add_argument("--out", metavar="OUT.npz")
    r.add_argument("--time-only", action="store_true")
    r.set_defaults(fn=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.fn(args)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except _error_types() as e:
        print(f"attnc: error: {_one_line(str(e)) if str(e).strip() else type(e).__name__}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug in attnc: still one line; ATTNC_TRACEBACK=1 shows the traceback
        if os.environ.get("ATTNC_TRACEBACK"):
            raise
        print(f"attnc: internal error: {type(e).__name__}: {_one_line(str(e)) if str(e).strip() else ''}",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
