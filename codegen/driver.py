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
    from attnc.codegen.io import InputError
    from attnc.ir import IRError
    from attnc.ir.dsl import DSLError
    from attnc.ir.interpreter import InterpretError
    from attnc.kernels_src.configs import ConfigError
    from attnc.passes import PassError, PipelineError
    from attnc.passes.verify import VerificationFailed

    from attnc.codegen.pypto_options import OptionError

    from attnc.codegen.tune import TuneError

    types = [CliError, InputError, IRError, DSLError, InterpretError, ConfigError, PassError, PipelineError,
             VerificationFailed, OptionError, TuneError]
    try:
        from attnc.codegen.pypto_emit import EmitError

        types.append(EmitError)
    except ImportError:
        pass
    try:
        from attnc.codegen.pto_emit import PtoEmitError

        types.append(PtoEmitError)
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
        try:
            with open(spec) as f:
                text = f.read()
        except OSError as e:
            raise CliError(f"{spec}: cannot read ({e.strerror})") from None
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


def _names(fn, attr, n, prefix):
    a = fn.attributes.get(attr)
    names = [x.data for x in a.data] if a is not None else []
    return names if len(names) == n else [f"{prefix}{i}" for i in range(n)]


def source_inputs(src: Source, seed: int, npz_path: str | None = None) -> dict:
    """Inputs by name: arrays from the file where given, seeded values for the rest."""
    import torch

    from attnc.codegen.io import InputError, load_npz, seeded_tensor_for_type, to_tensor
    from attnc.ir.interpreter import entry_function
    from attnc.ir.types import dtype_of, shape_of
    from attnc.kernels_src.inputs import make_inputs

    fn = entry_function(src.module)
    types = dict(zip(src.arg_names, fn.function_type.inputs.data))
    given = {}
    if npz_path:
        arrays = load_npz(npz_path)
        unknown = sorted(set(arrays) - set(types))
        if unknown:
            raise InputError(f"{npz_path}: array '{unknown[0]}' is not a parameter of {src.name} "
                             f"(parameters: {', '.join(src.arg_names)})")
        for name, arr in arrays.items():
            given[name] = to_tensor(npz_path, name, arr, shape_of(types[name]), dtype_of(types[name]))
    if src.stage is not None:
        return make_inputs(src.stage, src.cfg, seed, given)
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
    if getattr(args, "emit", "") == "pto":
        from attnc.passes import pto_pipeline

        return pto_pipeline(args.pipeline, getattr(args, "pto_dtype", None))
    return args.pipeline if args.pipeline is not None else DEFAULT_PIPELINES["pypto" if pypto else "interp"]


def compile_source(src: Source, pipeline: str, *, verify_each: bool, seed: int = 0, after_pass=None):
    from attnc.passes.verify import run_pipeline

    inputs = list(source_inputs(src, seed).values()) if verify_each else None
    return run_pipeline(src.module, pipeline, verify_inputs=inputs, output_names=src.output_names,
                        after_pass=after_pass)


def pypto_options(args):
    from attnc.codegen.pypto_options import PyptoOptions

    return PyptoOptions().with_settings(args.pypto_option)


def apply_tuning(args, stage_name: str) -> None:
    from attnc.codegen.tune import apply_tuning as apply

    apply(args, stage_name)


def cmd_compile(args) -> int:
    from attnc.codegen.io import atomic_write_text
    from attnc.ir import print_ir

    if args.pto_dtype and args.emit != "pto":
        raise CliError("--pto-dtype needs --emit pto")
    src = load_source(args.source, args.config, args.set)
    apply_tuning(args, src.name)
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

        text, suffix = emit_pypto(src.module, pypto_options(args)), ".pypto.py"
    elif args.emit == "pto":
        from attnc.codegen.pto_emit import emit_pto

        kernels = emit_pto(src.module, src.name)
        text, suffix = "".join(k.text for k in kernels), None
    else:
        text, suffix = print_ir(src.module), ".mlir"
    # everything is computed before anything is written
    if args.dump_dir:
        for fname, body in dumps:
            atomic_write_text(os.path.join(args.dump_dir, fname), body)
    if args.output and suffix is None:  # --emit pto: one .pto file per token loop
        for k in kernels:
            path = os.path.join(args.output, k.name + ".pto")
            atomic_write_text(path, k.text)
            print(f"wrote {path}", file=sys.stderr)
    elif args.output:
        path = os.path.join(args.output, src.name + suffix)
        atomic_write_text(path, text)
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

    from attnc.codegen.io import save_npz
    from attnc.ir.interpreter import run_module

    src = load_source(args.source, args.config, args.set)
    apply_tuning(args, src.name)
    if args.level == "tile" or args.target != "interp":
        compile_source(src, _pipeline_for(args), verify_each=False)
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
                            npu=args.target == "pypto-npu", options=pypto_options(args))
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
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--pypto-option", action="append", default=[], metavar="KEY=VALUE",
                       help="pypto target option (scheduling/merging knobs, vector tile budget), e.g. "
                            "'vec_nbuffer_setting={-1: 4}'; see codegen/pypto_options.py")
        q.add_argument("--tuning", metavar="FILE", default=None,
                       help="apply a tuning file from `attnc tune` (its pipeline and pypto options)")

    c = sub.add_parser("compile", help="compile a stage or an .mlir file")
    common(c)
    c.add_argument("--emit", choices=("mlir", "pypto", "pto"), default="mlir")
    c.add_argument("--pto-dtype", choices=("f16",), default=None,
                   help="--emit pto: compute bf16 values in f16 (ptoas 0.1.1 has no bf16)")
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

    from attnc.codegen.tune import add_parser as add_tune_parser

    add_tune_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.fn(args)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except _error_types() as e:
        print(f"attnc: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug in attnc: still one line; ATTNC_TRACEBACK=1 shows the traceback
        if os.environ.get("ATTNC_TRACEBACK"):
            raise
        print(f"attnc: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
