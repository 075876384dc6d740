"""Executable check of the PTO path on CPU: emitted `.pto` -> ptoas 0.1.1 -> C++ -> g++ against attnc's CPU
model of the tile ISA (`pto_model/include/common/pto_instr.hpp`) -> run every token's kernel instance on the
host-prepared inputs -> compare the output with the interpreter of the same (f16) tile IR, and count pipe
hazards and model errors.

The host-prepared inputs and the golden come from one interpreter run of the module in which the function
returns, instead of its outputs, the values the token loop takes from outside and the loop's results."""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch

from attnc.errors import AttncError
from attnc.ir.interpreter import entry_function, run_module

from .emit import KernelPlan, token_loops
from .ptoas import run_ptoas

MODEL_INCLUDE = os.path.join(os.path.dirname(__file__), "model", "include")
_NP = {"f16": np.float16, "f32": np.float32, "i32": np.int32}
_CXX = {"f16": "half", "f32": "float", "i32": "int32_t"}


class PtoCheckError(AttncError):
    pass


def fix_cpp_literals(cpp: str) -> str:
    """ptoas 0.1.1 prints integral floats as `1f` and infinities as `+Inff`/`-Inff`, which are not C++."""
    cpp = re.sub(r"(?<![\w.+-])(-?\d+)f\b", r"\1.0f", cpp)
    return re.sub(r"([+-]?)Inff\b", lambda m: f"{m.group(1) or '+'}INFINITY", cpp)


def normalise_cpp(cpp: str) -> str:
    """ptoas's C++ names GlobalTensor types after pointer values (`GTShape_952419984`): renumber them."""
    names: dict[str, str] = {}

    def sub(m):
        return m.group(1) + names.setdefault(m.group(2), str(len(names)))

    return re.sub(r"\b(GT(?:Shape|Stride)?_)(\d+)\b", sub, cpp)


def instruction_stream(cpp: str) -> list[str]:
    """The tile-API calls and sync instructions in order, with their pipe/event arguments but without variable
    names. ptoas 0.1.1's memory plan (TASSIGN offsets, and so its constants and variable numbering) differs
    between runs on the same input; the instructions do not."""
    out = []
    for m in re.finditer(r"^\s*(T[A-Z_]+|set_flag|wait_flag|pipe_barrier)\(([^;]*)\);", cpp, re.M):
        args = ", ".join(a.strip() for a in m.group(2).split(",") if a.strip().startswith(("PIPE_", "EVENT_")))
        out.append(f"{m.group(1)}({args})")
    return [x for x in out if not x.startswith("TASSIGN")]


def host_values(module, inputs: list, loop_index: int, plan: KernelPlan, rows: int | None = None) -> tuple[list, list]:
    """(outside values the loop uses, loop results) from one interpreter run; with `rows`, the loop runs only its
    first `rows` token rows (the others keep their initial value): the golden of a flash kernel's first instances."""
    from xdsl.dialects import func
    from xdsl.dialects.builtin import FunctionType

    mapper: dict = {}
    clone = module.clone(value_mapper=mapper)
    fn = entry_function(clone)
    loop = token_loops(clone)[loop_index]
    if rows is not None:
        from attnc.passes._build import before, const

        with before(loop):
            operands = list(loop.operands)
            operands[1] = const(rows)
            loop.operands = operands
    wanted = [mapper[v] for v in plan.outside] + list(loop.results)
    ret = fn.body.block.last_op
    assert isinstance(ret, func.ReturnOp)
    new_ret = func.ReturnOp(*wanted)
    fn.body.block.insert_op_before(new_ret, ret)
    fn.body.block.erase_op(ret)
    fn.function_type = FunctionType.from_lists(list(fn.function_type.inputs.data), [v.type for v in wanted])
    for op in reversed(list(fn.body.block.ops)):  # ops are pure: the later loops' work is not run (a flash layer)
        if op.results and all(not r.uses for r in op.results):
            fn.body.block.erase_op(op, safe_erase=False)
    vals = run_module(clone, inputs)
    return list(vals[:len(plan.outside)]), list(vals[len(plan.outside):])


def _harness(plan: KernelPlan, cpp_name: str, blocks: list[int] | None = None) -> str:
    lines = ['#include "common/pto_instr.hpp"', f'#include "{cpp_name}"', "#include <string>",
             "int main(int argc, char** argv) {", "  std::string dir = argv[1];"]
    call = []
    for a in plan.args:
        n = a.rows * a.cols
        v = a.name[1:]
        t = _CXX[a.dtype]
        if a.role == "ws":
            lines.append(f"  std::vector<{t}> {v}({n}, ({t})-7777.0f);")  # garbage: a read before write shows
        else:
            lines.append(f'  auto {v} = pto_model::read_array<{t}>(dir + "/{v}.bin", {n});')
            if a.role == "in":
                lines.append(f"  pto_model::model().input({v}.data(), sizeof({t}) * {n});")
        call.append(f"{v}.data()")
    ids = list(range(plan.blocks)) if blocks is None else blocks
    lines += [f"  for (int b : {{{', '.join(map(str, ids))}}}) {{",
              "    pto_model::model().reset(); pto_model::model().block = b;",
              f"    {plan.name}({', '.join(call)});",
              "    pto_model::model().end_block();", "  }"]
    for a in plan.args:
        if a.role == "out":
            lines.append(f'  pto_model::write_array(dir + "/{a.name[1:]}.out.bin", {a.name[1:]});')
    lines += ["  pto_model::report();", "  return 0;", "}"]
    return "\n".join(lines) + "\n"


def _f16c() -> list[str]:
    """-mf16c where the CPU has it: g++ then converts f16 <-> f32 in hardware (round to nearest even, as libgcc's
    soft conversion it replaces; f64 -> f16 stays a libgcc call), the model's largest cost after its hazard state."""
    try:
        with open("/proc/cpuinfo") as f:
            return ["-mf16c"] if re.search(r"^flags\s*:.*\bf16c\b", f.read(), re.M) else []
    except OSError:
        return []


@dataclass
class KernelCheck:
    name: str
    ptoas_rc: int
    ptoas_errors: list[str]
    cpp_lines: int = 0
    max_error: float = float("inf")
    hazards: int = -1
    model_errors: int = -1
    notes: list[str] = field(default_factory=list)
    build_error: str = ""

    @property
    def ok(self) -> bool:
        return (self.ptoas_rc == 0 and not self.build_error and self.hazards == 0 and self.model_errors == 0
                and self.max_error <= CHECK_TOLERANCE)

    def line(self) -> str:
        if self.ptoas_rc != 0:
            return f"{self.name}: ptoas exit {self.ptoas_rc}: {(self.ptoas_errors or ['?'])[0]}"
        if self.build_error:
            return f"{self.name}: g++: {self.build_error}"
        return (f"{self.name}: ptoas ok ({self.cpp_lines} C++ lines), max_err={self.max_error:.3e}, "
                f"hazards={self.hazards}, model_errors={self.model_errors}")


CHECK_TOLERANCE = 1e-3  # normalised error vs the interpreter: f16 outputs, float exp/sum order may flip an ulp


def check_kernel(module, inputs: list, loop_index: int, plan: KernelPlan, workdir: str | None = None,
                 host: tuple | None = None, blocks: list[int] | None = None, opt: str = "-O0") -> KernelCheck:
    """`blocks`: the kernel instances (token rows) to run and compare (default: all); `opt`: g++ optimisation
    (the model's arithmetic is IEEE at any level; -O2 for flash-size kernels)."""
    from attnc.passes.verify import normalised_error

    tmp = tempfile.TemporaryDirectory(prefix="attnc-pto-") if workdir is None else None
    d = workdir or tmp.name
    try:
        pto_path, cpp_path = os.path.join(d, plan.name + ".pto"), os.path.join(d, plan.name + ".cpp")
        with open(pto_path, "w") as f:
            f.write(plan.text)
        res = run_ptoas(pto_path, cpp_path)
        chk = KernelCheck(plan.name, res.returncode, res.errors)
        if res.returncode != 0:
            return chk
        cpp = fix_cpp_literals(res.cpp)
        chk.cpp_lines = cpp.count("\n")
        with open(cpp_path, "w") as f:
            f.write(cpp)
        with open(os.path.join(d, "main.cpp"), "w") as f:
            f.write(_harness(plan, os.path.basename(cpp_path), blocks))
        exe = os.path.join(d, "kernel")
        b = subprocess.run(["g++", "-std=c++17", opt, *_f16c(), "-w", f"-I{MODEL_INCLUDE}", "-o", exe,
                            os.path.join(d, "main.cpp")], capture_output=True, text=True, check=False)
        if b.returncode != 0:
            chk.build_error = next((ln for ln in b.stderr.splitlines() if "error" in ln), b.stderr[:200])
            return chk
        if blocks is not None and blocks != list(range(len(blocks))):
            raise PtoCheckError("blocks must be the first n token rows")
        outside, golden = host if host is not None else host_values(module, inputs, loop_index, plan,
                                                                    None if blocks is None else len(blocks))
        for a in plan.args:
            if a.role == "in":
                t = outside[a.value_index]
            elif a.role == "out":
                t = plan_init(plan, a)
            else:
                continue
            arr = t.detach().numpy() if a.dtype == "i32" else t.detach().to(torch.float32).numpy()
            np.ascontiguousarray(arr.astype(_NP[a.dtype])).tofile(
                os.path.join(d, a.name[1:] + ".bin"))
        r = subprocess.run([exe, d], capture_output=True, text=True, check=False, timeout=1800)
        if r.returncode != 0:
            chk.build_error = f"kernel run exits {r.returncode}: {r.stderr.strip()[:200]}"
            return chk
        for ln in r.stdout.splitlines():
            k, _, v = ln.partition(" ")
            if k == "hazards":
                chk.hazards = int(v)
            elif k == "errors":
                chk.model_errors = int(v)
            elif k == "note":
                chk.notes.append(v)
        errs = []
        for a in plan.args:
            if a.role == "out":
                got = np.fromfile(os.path.join(d, a.name[1:] + ".out.bin"), dtype=_NP[a.dtype])
                want = golden[a.value_index]
                got_t = torch.from_numpy(got.astype(np.float64)).reshape(want.shape)
                if blocks is not None:  # only the rows of the instances that ran (token rows = axis 0)
                    got_t, want = got_t[blocks], want[blocks]
                errs.append(normalised_error(got_t.to(want.dtype), want))
        chk.max_error = max(errs) if errs else float("inf")
        return chk
    finally:
        if tmp is not None:
            tmp.cleanup()


def plan_init(plan: KernelPlan, arg) -> torch.Tensor:
    """What a loop output holds before the kernels run: a poison value, so that a row no kernel instance
    writes shows as an error (the golden's loop writes every row)."""
    from attnc.ir.types import dtype_of, shape_of, torch_dtype

    init = plan.carried[arg.value_index]
    return torch.full(shape_of(init.type), -9999, dtype=torch_dtype(dtype_of(init.type)))
