"""Run a tile-level module as a pypto program: emit, run in a child process (SIM on CPU, or on an NPU when
torch_npu is present), and bring the outputs back as torch tensors of the stage's dtypes."""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import torch

from attnc.codegen.escape import file_stem
from attnc.codegen.io import to_numpy
from attnc.codegen.pypto_emit import emit_pypto, in_place_outputs, program_output_names
from attnc.codegen.pypto_options import PyptoOptions
from attnc.codegen.pypto_sim import run_in_subprocess
from attnc.ir.interpreter import entry_function
from attnc.ir.types import dtype_of, torch_dtype


# per-pass verify records pypto 0.2.0 fails on programs whose outputs are right, by the pass names that report
# them (README "Known limitations"; tests/test_pypto_target.py allows them case by case)
KNOWN_VERIFY_LIMITATIONS = {
    "a runtime valid shape inside the token loop (a key list padded to whole KV tiles, a gather of the listed "
    "prefix of a token's ids)": ("InferParamIndex", "CodegenPreproc"),
    "an index_select whose rows span several vector tiles": ("ExpandFunction", "SplitK", "L1CopyInReuseMerge"),
}


def known_limitation(record) -> str | None:
    """The documented pypto limitation a FAILED verify record (pass, index, result) comes from, or None."""
    return next((why for why, passes in KNOWN_VERIFY_LIMITATIONS.items() if any(p in record[0] for p in passes)),
                None)


@dataclass
class PyptoRun:
    outputs: dict
    aicore_us: float | None
    verify: list
    failed_records: list
    wall_s: float
    program: str
    tasks: dict | None = None


def run_pypto_sim(module, inputs: dict, *, verify: str = "default", timeout_s: float = 900,
                  npu: bool = False, options: PyptoOptions | None = None, on_phase=None,
                  trace_dir: str | None = None) -> PyptoRun:
    """Emit, run in a child process, bring the outputs back. `trace_dir`: a folder that receives the cost
    model's Perfetto trace (`perfetto.json`) and swim lanes (`swim.json`) of the run."""
    program = emit_pypto(module, options)
    fn = entry_function(module)
    out_names = [a.data for a in fn.attributes["result_names"].data]
    out_types = dict(zip(out_names, fn.function_type.outputs.data))
    param_of = dict(zip(out_names, program_output_names([a.data for a in fn.attributes["arg_names"].data], out_names,
                                                        in_place_outputs(fn))))
    with tempfile.TemporaryDirectory(prefix="attnc-prog-") as tmp:
        path = os.path.join(tmp, f"{file_stem(fn.sym_name.data)}.py")
        with open(path, "w") as f:
            f.write(program)
        res = run_in_subprocess(path, {k: to_numpy(v) for k, v in inputs.items()}, verify=verify,
                                timeout_s=timeout_s, npu=npu, on_phase=on_phase,
                                env={"ATTNC_PYPTO_TRACE_DIR": os.path.abspath(trace_dir)} if trace_dir else None)
    outs = {n: torch.from_numpy(res.outputs[param_of[n]]).to(torch_dtype(dtype_of(out_types[n]))) for n in out_names
            if param_of[n] in res.outputs}
    return PyptoRun(outs, res.aicore_us, res.verify, res.failed_records, res.wall_s, program, res.tasks)
