"""Mutation fuzzing of the IR front end: parse -> check/verify -> memory estimate -> interpret -> passes ->
interpret -> emit pypto, on mutants of a small corpus of real IR files. Mutations are drawn by Hypothesis
(token-aware: SSA names, numbers, dtypes, op names, string literals, attributes, lines; plus raw byte edits), so
runs are reproducible from a seed and failures shrink to a small mutant.

The contract checked on every mutant: the front end either succeeds or raises one of the CLI's input-error types
(what `attnc` turns into one `attnc: error:` line and exit 2) — never another exception (exit 3) — and finishes
within a time limit. Used by tests/test_ir_fuzz.py (small seeded run) and benchmarks/fuzz_ir.py (long run)."""
from __future__ import annotations

import functools
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import strategies as st

MEMORY_LIMIT = 256 << 20  # a mutant may not make the fuzzer allocate more than this (refused by the estimate)
HANG_SECONDS = 5.0

# hand-written kernels that reach every emitter/interpreter family cheaply
_SMALL = """builtin.module {
  func.func @k(%0: tensor<16x16xf32>, %1: tensor<16x16xf32>, %2: tensor<4xi32>) -> (tensor<16x16xf32>, tensor<4x16xf32>) attributes {arg_names = ["x", "w", "ids"], result_names = ["y", "g"]} {
    %3 = "tile.exp"(%0) {loc = "a.py:1"} : (tensor<16x16xf32>) -> tensor<16x16xf32>
    %4 = "tile.matmul"(%3, %1) <{transpose_b = false}> {loc = "a.py:2"} : (tensor<16x16xf32>, tensor<16x16xf32>) -> tensor<16x16xf32>
    %5 = "tile.transpose"(%4) <{perm = [1 : i64, 0 : i64]}> {loc = "a.py:3"} : (tensor<16x16xf32>) -> tensor<16x16xf32>
    %6 = "tile.gather_rows"(%5, %2) {loc = "a.py:4"} : (tensor<16x16xf32>, tensor<4xi32>) -> tensor<4x16xf32>
    %7 = "tile.cmp"(%5, %0) <{predicate = "lt"}> {loc = "a.py:5"} : (tensor<16x16xf32>, tensor<16x16xf32>) -> tensor<16x16xi1>
    %8 = "tile.select"(%7, %5, %0) {loc = "a.py:6"} : (tensor<16x16xi1>, tensor<16x16xf32>, tensor<16x16xf32>) -> tensor<16x16xf32>
    func.return %8, %6 : tensor<16x16xf32>, tensor<4x16xf32>
  }
}
"""


@functools.lru_cache(maxsize=None)
def corpus() -> tuple[str, ...]:
    """Printed IR of a hand-written kernel and of small stages at the tensor and the tile level."""
    from attnc.cli import compile_source, load_source
    from attnc.ir import print_ir
    from attnc.passes import DEFAULT_PIPELINES

    texts = [_SMALL]
    over: list[str] = []
    for stage in ("sparse_attn_core", "qkv_proj_rope"):
        src = load_source(stage, "tiny", over)
        texts.append(print_ir(src.module))
        compile_source(src, DEFAULT_PIPELINES["interp"], verify_each=False)
        texts.append(print_ir(src.module))
    return tuple(texts)


# -------------------------------------------------------------------------------------------------- mutations

_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|%[0-9A-Za-z_]+|@[A-Za-z_0-9]+|-?\d+(?:\.\d+)?(?:e[+-]?\d+)?|[A-Za-z_][\w.]*'
                    r'|[^\s\w]')
NUMBERS = ["0", "1", "-1", "2", "3", "7", "16", "17", "100000", "2147483647", "2147483648", "-2147483649",
           "9223372036854775807", "9223372036854775808", "99999999999999999999999", "1.5", "-0.0", "1e308",
           "0x7fffffff", "nan", "inf"]
TYPES = ["f32", "bf16", "f16", "i32", "i8", "i1", "f64", "i64", "index", "i0", "f8E4M3FN", "complex<f32>", "none"]
STRINGS = ['"', '"\\', '"\\q"', '"\\0A"', '"' + "a" * 40, '"\\0Aimport os\\0A#"', '"../x"', '"x y"', '""',
           '"lt"', '"rint"', '"class"', '"\\FF\\FE"', '"\u2028"']
PUNCT = ["(", ")", "{", "}", "<", ">", "[", "]", ",", ":", "=", "->", "x", "?", "%", "@", "#", '"', "\n", "^bb0"]


@dataclass
class Mutation:
    kind: str
    a: int
    b: int
    text: str = ""


def mutations(texts: tuple[str, ...]):
    """A strategy: (corpus index, a list of 1..4 mutations)."""
    op_names = sorted({m for t in texts for m in re.findall(r'"((?:attn|tile|arith|scf|func)\.[a-z_]+)"', t)}
                      | {"func.call", "scf.execute_region", "scf.while", "arith.divsi", "arith.addf", "tile.nope"})
    # the global_* kinds replace every occurrence of a token, so types stay consistent and mutants get past
    # the verifier into the interpreter, the passes and the emitter; they are drawn more often
    kinds = st.sampled_from(["number", "type", "string", "swap_ssa", "op_name", "delete_token", "dup_token",
                             "delete_line", "dup_line", "swap_lines", "punct", "bytes", "truncate",
                             "attribute"] + ["global_number", "global_type", "global_string"] * 3
                            + ["ir_int", "ir_float", "ir_operand", "ir_string"] * 4)
    replacement = {
        "number": st.sampled_from(NUMBERS),
        "global_number": st.sampled_from(NUMBERS + ["4", "8", "32", "64", "128", "0"]),
        "global_type": st.sampled_from(TYPES),
        "ir_int": st.sampled_from(["-1", "0", "1", "2", "3", "5", "16", "33", "4096", "2147483647", "-9"]),
        "ir_float": st.sampled_from(["0.0", "-0.0", "1e-30", "1e30", "inf", "-inf", "nan", "-1.0", "3.5e38"]),
        "ir_string": st.sampled_from(["lt", "eq", "rint", "trunc", "bogus", "", "a\nb", "kernels_src/x.py:1"]),
        "global_string": st.sampled_from(STRINGS + ['"le"', '"ge"', '"trunc"', '"round"', '"x"']),
        "type": st.sampled_from(TYPES),
        "string": st.sampled_from(STRINGS),
        "op_name": st.sampled_from(op_names or ["attn.exp"]),
        "punct": st.sampled_from(PUNCT),
        "bytes": st.text(st.characters(codec="utf-8"), min_size=1, max_size=8),
        "attribute": st.sampled_from([" {loc = 3 : i64}", " <{perm = [0.5 : f64]}>", " {arg_names = [1 : i64]}",
                                      ' {result_names = ["a", "a"]}', " <{k = -5 : i64}>", " <{axis = 99 : i64}>",
                                      " <{rows = 0 : i64}>", " <{value = 1e308 : f64}>", " <{scale = nan : f64}>"]),
    }
    one = kinds.flatmap(lambda k: st.tuples(st.just(k), st.integers(0, 10**6), st.integers(0, 10**6),
                                            replacement.get(k, st.just(""))))
    return st.tuples(st.integers(0, len(texts) - 1), st.lists(one, min_size=1, max_size=4))


def apply_mutation(text: str, kind: str, a: int, b: int, new: str) -> str:
    tokens = [m for m in _TOKEN.finditer(text)]
    lines = text.split("\n")

    def pick(pred):
        hits = [m for m in tokens if pred(m.group())]
        return hits[a % len(hits)] if hits else None

    def replace(m, s):
        return text[:m.start()] + s + text[m.end():] if m is not None else text

    if kind.startswith("ir_"):
        return _mutate_ir(text, kind, a, b, new)
    if kind.startswith("global_"):
        want = {"global_number": lambda t: t.isdigit(), "global_type": lambda t: t in ("f32", "bf16", "i32", "i1"),
                "global_string": lambda t: t.startswith('"') and not t.startswith(('"attn.', '"tile.'))}[kind]
        m = pick(want)
        if m is None:
            return text
        if kind == "global_number":  # every occurrence as a whole number or shape dim
            return re.sub(rf"(?<![\w.%#]){re.escape(m.group())}(?![\w.])|(?<=[<x]){re.escape(m.group())}(?=x)",
                          new, text)
        return text.replace(m.group(), new)
    if kind == "number":
        return replace(pick(lambda t: t.lstrip("-")[:1].isdigit()), new)
    if kind == "type":
        return replace(pick(lambda t: t in ("f32", "bf16", "f16") or re.fullmatch(r"\d+x\d+x?\w*|i\d+", t)), new)
    if kind == "string":
        return replace(pick(lambda t: t.startswith('"')), new)
    if kind == "swap_ssa":
        ssa = pick(lambda t: t.startswith("%"))
        other = [m for m in tokens if m.group().startswith("%")]
        return replace(ssa, other[b % len(other)].group()) if other else text
    if kind == "op_name":
        return replace(pick(lambda t: re.fullmatch(r'"(attn|tile|arith|scf|func)\.[a-z_]+"', t) is not None),
                       f'"{new}"')
    if kind == "delete_token" and tokens:
        return replace(tokens[a % len(tokens)], "")
    if kind == "dup_token" and tokens:
        m = tokens[a % len(tokens)]
        return replace(m, m.group() * 2)
    if kind == "punct" and tokens:
        return replace(tokens[a % len(tokens)], new)
    if kind == "delete_line":
        del lines[a % len(lines)]
        return "\n".join(lines)
    if kind == "dup_line":
        i = a % len(lines)
        lines.insert(b % len(lines), lines[i])
        return "\n".join(lines)
    if kind == "swap_lines":
        i, j = a % len(lines), b % len(lines)
        lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)
    if kind == "bytes":
        i = a % (len(text) + 1)
        return text[:i] + new + text[i + b % 4:]
    if kind == "truncate":
        return text[:a % (len(text) + 1)]
    if kind == "attribute":
        m = pick(lambda t: t.startswith('"') and "." in t and t[1:5] in ("attn", "tile"))
        if m is None:
            return text
        close = text.find(")", m.end())
        return text[:close + 1] + new + text[close + 1:] if close >= 0 else text
    return text


def _mutate_ir(text: str, kind: str, a: int, b: int, new: str) -> str:
    """Structured edits of the parsed module (syntax stays valid, so mutants reach the verifier and beyond):
    an integer/float/string attribute gets a new value, or an operand is replaced by another value of its type
    (defined earlier, or later: a use before its definition)."""
    from xdsl.dialects.builtin import FloatAttr, IntegerAttr, StringAttr

    from attnc.ir import IRError, parse_ir, print_ir

    try:
        module = parse_ir(text)
    except IRError:
        return text
    ops = list(module.walk())
    if kind == "ir_operand":
        uses = [(op, i) for op in ops for i in range(len(op.operands))]
        if not uses:
            return text
        op, i = uses[a % len(uses)]
        same = [v for o in ops for v in o.results if v.type == op.operands[i].type]
        if same:
            op.operands[i] = same[b % len(same)]
        return print_ir(module)
    want = {"ir_int": IntegerAttr, "ir_float": FloatAttr, "ir_string": StringAttr}[kind]
    slots = [(table, key) for op in ops for table in (op.properties, op.attributes) for key, v in table.items()
             if isinstance(v, want)]
    if not slots:
        return text
    table, key = slots[a % len(slots)]
    old = table[key]
    try:
        if kind == "ir_int":
            table[key] = IntegerAttr(int(new), old.type)
        elif kind == "ir_float":
            table[key] = FloatAttr(float(new), old.type)
        else:
            table[key] = StringAttr(new)
    except Exception:  # noqa: BLE001 - a value the attribute type cannot hold: leave it
        return text
    return print_ir(module)


def mutate(case) -> str:
    index, muts = case
    text = corpus()[index]
    for kind, a, b, new in muts:
        text = apply_mutation(text, kind, a, b, new)
    return text


# -------------------------------------------------------------------------------------------------- front end


class Hang(BaseException):  # not an Exception: no `except Exception` on the way may swallow or convert it
    pass


@dataclass
class Outcome:
    stage: str  # the furthest step reached: "parse", "memory", "interpret", "passes", "tile-interpret", "emit", "ok"
    error: str = ""  # the input error's first line, if refused
    crash: str = ""  # an exception that is not an input error (a bug), if any
    seconds: float = 0.0  # CPU seconds


def _alarm(signum, frame):
    raise Hang()


def front_end(text: str, hang_seconds: float = HANG_SECONDS) -> Outcome:
    """`_front_end` with hangs counted: a mutant that takes more than `hang_seconds` of CPU time (wall time
    means little on a shared machine) is a failure whether or not the CPU-time alarm (a safety net at 10x,
    against real infinite loops) had to interrupt it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU time = the mutant's work, not a thread pool's spinning
    try:
        out = _front_end(text, 10 * hang_seconds)
    finally:
        torch.set_num_threads(threads)
    if not out.crash and out.seconds > hang_seconds:
        out.crash = f"hang: {out.seconds:.1f} s > {hang_seconds:g} s at {out.stage}"
    return out


def _front_end(text: str, hang_seconds: float) -> Outcome:
    """Run one IR text through every stage `attnc compile/run` would: parse (with checks and verification),
    the memory estimate, the tensor-level interpreter, the pypto pipeline, the emitter and the tile-level
    interpreter. An input error in the interpreter does not stop the compile path (`attnc compile` never
    interprets); an error in parse, memory or passes stops everything after it."""
    from attnc.cli import Source, source_inputs
    from attnc.memory import check_memory
    from attnc.codegen.pypto.emit import emit_pypto
    from attnc.ir import parse_ir
    from attnc.ir.interpreter import entry_function, run_module
    from attnc.passes import DEFAULT_PIPELINES
    from attnc.passes.verify import run_pipeline

    from attnc.errors import AttncError

    expected = AttncError
    stage, first_error = "parse", ""
    t0 = time.process_time()
    old = signal.signal(signal.SIGPROF, _alarm)
    signal.setitimer(signal.ITIMER_PROF, hang_seconds)

    def soft(step, fn):  # an input error here is an answer, not the end of the compile path
        nonlocal stage, first_error
        stage = step
        try:
            return fn()
        except expected as e:
            first_error = first_error or (str(e).splitlines() or [type(e).__name__])[0]
            return None

    try:
        module = parse_ir(text, "mutant.mlir")
        stage = "memory"
        check_memory(module, "mutant", limit=MEMORY_LIMIT)
        fn = entry_function(module)
        src = Source(fn.sym_name.data, module, [a.data for a in fn.attributes["arg_names"].data],
                     [a.data for a in fn.attributes["result_names"].data], None, {})
        inputs = soft("interpret", lambda: list(source_inputs(src, 0).values()))
        if inputs is not None:
            soft("interpret", lambda: run_module(module, inputs))
        stage = "passes"
        run_pipeline(module, DEFAULT_PIPELINES["pypto"], output_names=src.output_names)
        soft("emit", lambda: emit_pypto(module))
        if inputs is not None:
            check_memory(module, "mutant", limit=MEMORY_LIMIT)
            soft("tile-interpret", lambda: run_module(module, inputs))
        stage = "ok"
        return Outcome(stage if not first_error else "partly", error=first_error, seconds=time.process_time() - t0)
    except Hang:
        return Outcome(stage, crash=f"hang: over {hang_seconds:g} s", seconds=time.process_time() - t0)
    except expected as e:
        return Outcome(stage, error=(str(e).splitlines() or [type(e).__name__])[0],
                       seconds=time.process_time() - t0)
    except Exception as e:  # noqa: BLE001 - that is what we are looking for
        return Outcome(stage, crash=f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}",
                       seconds=time.process_time() - t0)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)


@dataclass
class Stats:
    mutants: int = 0
    stages: Counter = field(default_factory=Counter)
    crashes: list = field(default_factory=list)  # (crash, stage, mutant text)
    max_seconds: float = 0.0
    total_seconds: float = 0.0
    keep_errors: bool = False
    save_dir: str | None = None  # write each crashing mutant here as soon as it is found
    progress_every: int = 0  # print a progress line every N mutants (long runs)
    errors: Counter = field(default_factory=Counter)  # input errors by message shape (keep_errors)

    def add(self, text: str, out: Outcome) -> None:
        self.mutants += 1
        self.stages[out.stage if not out.error else f"refused at {out.stage}"] += 1
        self.max_seconds = max(self.max_seconds, out.seconds)
        self.total_seconds += out.seconds
        if self.keep_errors and out.error:
            self.errors[re.sub(r"\d+", "N", out.error.split(": ", 1)[-1])[:90]] += 1
        if out.crash:
            self.crashes.append((out.crash, out.stage, text))
            if self.save_dir:
                import os

                os.makedirs(self.save_dir, exist_ok=True)
                with open(os.path.join(self.save_dir, f"crash-{len(self.crashes)}.mlir"), "w") as f:
                    f.write(f"// {out.stage}: {out.crash}\n{text}")
        if self.progress_every and self.mutants % self.progress_every == 0:
            print(f"progress: {self.mutants} mutants, {len(self.crashes)} crashes, slowest {self.max_seconds:.2f} s, "
                  f"{time.strftime('%H:%M:%S')}", flush=True)
