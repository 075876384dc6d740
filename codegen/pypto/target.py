"""Run a tile-level module as a pypto program: emit, run in a child process (SIM on CPU, or on an NPU when
torch_npu is present), and bring the outputs back as torch tensors of the stage's dtypes."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from attnc.codegen.escape import file_stem
from attnc.ir.types import to_numpy
from attnc.codegen.pypto.emit import emit_pypto, in_place_outputs, program_output_names
from attnc.codegen.pypto.options import PyptoOptions
from attnc.codegen.pypto.sim import held_temp_folder, run_in_subprocess
from attnc.ir.interpreter import entry_function
from attnc.ir.types import dtype_of, torch_dtype


@dataclass(frozen=True)
class KnownRecord:
    """A FAILED pypto per-pass verify record of a program whose outputs are right, excused by its cause: pypto's
    error code and the op kind the log names, and the test that produces exactly that record (it asserts the
    record is still there, so an entry cannot outlive its cause)."""

    code: str
    op: str
    reproducer: str
    why: str


# the m = 128 compressor packed (its per-token window gather; the dense one pools per row from views, schedule-compressor)
SPLIT_GATHER_REPRO = ("tests/test_pypto_target.py::test_pypto_sim_matches_interpreter[compressor-compress_ratio128-"
                      "layoutpacked-batch1-tokens1]")
# README "Known limitations"; never a pass name: a record is matched by (code, op)
KNOWN_VERIFY_LIMITATIONS = (
    KnownRecord("FB200F", "GATHER", SPLIT_GATHER_REPRO,
                "an index_select whose gathered rows span several vector tiles (HCA state rows per token; no loop "
                "or runtime valid shape needed: tests/test_pypto_emit.py SPLIT_GATHER): pypto's verify "
                "interpreter's tile gather trips torch's overlap check (ExpandFunction, InferParamIndex, "
                "CodegenPreproc, InferDynShape); outputs exact"),
    # pypto logs no op for FB200B (GetValidDataView): the parser names the op of the same function's earlier record,
    # the FB200F of the state gather above; the packed decode_hca at tiny shows the same three records
    KnownRecord("FB200B", "GATHER", "tests/test_pypto_target.py::test_pypto_sim_matches_interpreter[compressor-"
                "compress_ratio128-layoutpacked-batch1-tokens1]",
                "after the FB200F of a gathered state spanning several vector tiles inside a token loop (the m = 128 "
                "compressor, packed, one token), the cube passes' verify of that loop function (SplitK, "
                "L1CopyInReuseMerge) fails in GetValidDataView; outputs exact"),
)


def assembled_pieces(program: str) -> list:
    """The emitted program's ASSEMBLED_PIECES: per packed concat, its pieces [shape, offset, zero-padded]."""
    import ast

    for line in program.splitlines():
        if line.startswith("ASSEMBLED_PIECES = "):
            return ast.literal_eval(line.split("=", 1)[1].strip())
    return []


def _within(write, piece) -> bool:
    """Is `write` ([shape, offset], as AssembleChecker reports it) all or a tile of `piece` (its declared rows)?"""
    (s, o), (shape, offset) = write, piece[:2]
    return (len(s) == len(o) == len(shape) and s[1:] == shape[1:] and o[1:] == offset[1:]
            and offset[0] <= o[0] and o[0] + s[0] <= offset[0] + shape[0])


def _padding(write, piece) -> bool:
    """Is `write` all or a tile of a zero-padded piece's padding as AssembleChecker reports it: at most the piece's
    rows, starting at a row inside the piece (its runtime offset `row + valid` read right) or inside its first
    rows (that offset read as 0)?"""
    (s, o), (shape, offset, padded) = write, piece
    return (padded and len(s) == len(o) == len(shape) and s[1:] == shape[1:] and o[1:] == offset[1:]
            and s[0] <= shape[0] and (offset[0] <= o[0] < offset[0] + shape[0] or 0 <= o[0] < shape[0]))


def _disjoint_padding(inputs, groups) -> bool:
    """An AssembleChecker overlap of a zero-padded piece's padding with a piece of the same concat, or with another
    padding: pypto 0.2.0's checker reads the padding's runtime offset `row + valid` as 0 (seen against the piece
    itself at row 0 and row 1 and against the 1-row piece before it: tests/test_schedule_attention.py::
    test_sim_never_written_rows_hold_nan, decode_swa and hca_attn_core at batch 1; both ring blocks' paddings at
    [0, 0], decode_swa paged, batch 3, seq 16). Where a piece is larger than its vector tile the checker reports
    tiles, not pieces: a padding tile at a row inside the padded piece's first rows against a tile of another
    piece (sparse_attn_core, head_dim 128, 256 picks: the picks' [256, 128] at [9, 0] and the padding's second
    [128, 128] tile at [128, 0]; decode_csa at flash: the picks' [128, 512] tiles and the padding's [32, 512] ones:
    tests/test_sim_check.py::test_tiles_of_a_padded_piece_are_excused_and_simulate). The pieces partition the
    rows (ASSEMBLED_PIECES) and a padding writes only rows v.. of its own piece, so the writes are disjoint: a
    report is excused when one input is (a tile of) a padding and the other (a tile of) a piece or of another
    piece's padding in the same concat."""
    if len(inputs) != 2:
        return False
    for group in groups:
        for pad, other in ((inputs[0], inputs[1]), (inputs[1], inputs[0])):
            for i, p in enumerate(group):
                # a padding against its own piece's rows or any other piece's, or against another piece's padding
                # (never against itself: one padding's tiles do not overlap)
                if _padding(pad, p) and any(_within(other, q) or (j != i and _padding(other, q))
                                            for j, q in enumerate(group)):
                    return True
    return False


# pypto's per-pass verify compares a pass's values with the tensor graph's at rtol = atol = 1e-3, less than one bf16
# rounding step (2^-8..2^-7 relative): where a pass sums f32 values in another order (vector tiles of a row sum,
# cube tiles of a matmul) before a cast to bf16, a value near a rounding midpoint lands one bf16 step off -- and a
# flipped bf16 weight moves what is computed from it by up to a step of the row's largest value -- and the pass is
# reported FAILED (FB4001, no op named). The SIM outputs (tensor graph) are not affected; they are compared with the
# interpreter by the run's check, with the same bound (sim_check). Reproducer: SPLIT_SUM in
# tests/test_per_token_loop_sim.py (a row sum over 2 vector tiles cast to bf16, asserted by
# test_split_row_sum_cast_to_bf16_reports_fb4001_one_step); seen in the per-token loop of
# decode_csa at seq 5, start 60 (the loop's attention output).
BF16_STEP_WHY = ("pypto's per-pass verify tolerance (1e-3) is below one bf16 step: the pass's bf16 values differ from "
                 "the tensor graph's by at most one rounding step of the largest logged value (f32 summed in another "
                 "order, then rounded)")


def _is_bf16(x: float) -> bool:
    """Is x (as pypto logs it, 6 significant digits) a bf16 value?"""
    return abs(torch.tensor([x]).bfloat16().float().item() - x) <= 1e-5 * abs(x)


def one_bf16_step(cause: dict) -> bool:
    """An FB4001 record within one bf16 rounding step: every value it logs (up to 6 mismatches and the extremes) a
    bf16 value, and the largest absolute difference over all values at most one bf16 step of the largest logged
    |value| (a lower bound of the data's largest, so the bound is never looser than the run's check)."""
    pairs = cause.get("mismatches") or []
    if not pairs or "max_abs" not in cause or not all(_is_bf16(v) for pair in pairs for v in pair):
        return False
    top = max(abs(v) for pair in pairs for v in pair)
    step = 2.0 ** (math.floor(math.log2(top)) - 7) if top > 0 else 0.0
    return cause["max_abs"] <= step * (1 + 1e-5)


def excuse(record, program: str = "") -> str | None:
    """Why a failed record (pass, index, result, cause) is harmless, or None: a known pypto limitation matched by
    error code and op kind, an AssembleChecker overlap between a padded piece and its padding (disjoint writes,
    see the program's ASSEMBLED_PIECES), or an FB4001 within one bf16 rounding step (one_bf16_step)."""
    cause = record[3] if len(record) > 3 else {}
    if cause.get("code") == "AssembleChecker":
        if _disjoint_padding(cause.get("inputs", []), assembled_pieces(program)):
            return ("pypto's AssembleChecker reports a zero-padded piece's padding as overlapping a piece of the "
                    "same concat: declared shapes overlap, the written rows are disjoint (ASSEMBLED_PIECES)")
        return None
    if cause.get("code") == "FB4001":
        return BF16_STEP_WHY if one_bf16_step(cause) else None
    return next((k.why for k in KNOWN_VERIFY_LIMITATIONS
                 if cause.get("code") == k.code and cause.get("op") == k.op), None)


def describe(record, program: str = "") -> str:
    """One line naming a record's cause: pass, error code, op, the emitted statement it was traced to."""
    cause = record[3] if len(record) > 3 else {}
    if cause.get("code") == "AssembleChecker":
        (s1, o1), (s2, o2) = cause["inputs"]
        return (f"AssembleChecker: assembles into tensor {cause['tensor']} overlap: shape {s1} at {o1} and shape {s2} "
                f"at {o2}")
    where = ""
    if cause.get("line") and program:
        lines = program.splitlines()
        if 0 < cause["line"] <= len(lines):
            where = f", program line {cause['line']}: {lines[cause['line'] - 1].strip()[:160]}"
    return (f"pass {record[0]}, data view {record[1]}: {record[2]} (code {cause.get('code') or '?'}, op "
            f"{cause.get('op') or '?'}{where})")


def unexcused(run) -> list:
    """The failed records of a PyptoRun that no cause excuses."""
    return [r for r in run.failed_records if excuse(r, run.program) is None]


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
    with held_temp_folder("attnc-prog-") as tmp:
        path = os.path.join(tmp, f"{file_stem(fn.sym_name.data)}.py")
        with open(path, "w") as f:
            f.write(program)
        arrays = {k: to_numpy(v) for k, v in inputs.items()}  # host constants: in the program
        res = run_in_subprocess(path, arrays, verify=verify,
                                timeout_s=timeout_s, npu=npu, on_phase=on_phase,
                                env={"ATTNC_PYPTO_TRACE_DIR": os.path.abspath(trace_dir)} if trace_dir else None)
    outs = {n: torch.from_numpy(res.outputs[param_of[n]]).to(torch_dtype(dtype_of(out_types[n]))) for n in out_names
            if param_of[n] in res.outputs}
    return PyptoRun(outs, res.aicore_us, res.verify, res.failed_records, res.wall_s, program, res.tasks)
