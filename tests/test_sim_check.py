"""`attnc run --target pypto-sim` checks every output against the interpreter on the same compiled IR and inputs
(api/sim_check.py, the mechanism `attnc tune`'s re-check uses too): one line per output, exit 1 naming the
output on a mismatch; a planted emitter bug fails loudly."""
from __future__ import annotations

import re

import pytest
import torch

from attnc.sim_check import check_outputs
from attnc.ir.interpreter import run_module
from attnc.kernels_src import STAGES, build_stage, resolve_config
from attnc.kernels_src.inputs import make_inputs
from attnc.passes import PYPTO_PIPELINE
from attnc.passes.verify import run_pipeline
from tests.markers import needs_pypto


def _compiled(stage: str):
    cfg = resolve_config("tiny", {})
    module = build_stage(STAGES[stage], cfg)
    run_pipeline(module, PYPTO_PIPELINE)
    inputs = make_inputs(STAGES[stage], cfg, 3)
    return module, inputs, dict(zip(STAGES[stage].outputs, run_module(module, list(inputs.values()))))


def test_check_is_exact_bounded_or_a_mismatch_per_output():
    module, inputs, want = _compiled("decode_swa")
    names = list(want)
    same = check_outputs(module, inputs, want, names)
    assert same.ok and [o.verdict for o in same.outputs] == ["exact"] * len(names)
    assert all(o.line().startswith(f"check {o.name}") for o in same.outputs)
    out = want["out"]
    one_step = out.clone()
    flat = one_step.view(-1)
    i = int(flat.float().abs().argmax())
    flat[i] = (flat[i].float() * (1 - 2.0 ** -8)).to(out.dtype)  # the largest value one bf16 step towards 0
    assert flat[i] != out.view(-1)[i]
    r = check_outputs(module, inputs, {**want, "out": one_step}, names)
    by = {o.name: o for o in r.outputs}
    assert r.ok and by["out"].verdict == "bounded" and by["out"].differing == 1
    wrong = out.clone()
    wrong.view(-1)[0] += 0.5
    r = check_outputs(module, inputs, {**want, "out": wrong}, names)
    by = {o.name: o for o in r.outputs}
    assert not r.ok and by["out"].verdict == "MISMATCH" and r.failures[0].startswith("out error")
    missing = {k: v for k, v in want.items() if k != names[-1]}
    r = check_outputs(module, inputs, missing, names)
    assert not r.ok and r.failures == [f"{names[-1]} missing"]


def test_no_check_needs_a_pypto_target(capsys):
    from attnc.cli import main

    assert main(["run", "sparse_attn_core", "--no-check"]) == 2
    assert "--no-check needs a pypto target" in capsys.readouterr().err


def _plant_softmax_scale_bug(monkeypatch):
    """The emitter's first multiplication by a float constant (the softmax scale of the core) multiplied by 1.1."""
    import attnc.codegen.pypto.target as target

    real = target.emit_pypto
    planted = []

    def emit(module, options=None):
        text = real(module, options)
        m = re.search(r"pypto\.mul\((\w+), ([0-9.]+)\)", text)
        assert m, "no multiplication by a constant to perturb"
        planted.append(m.group(0))
        return text.replace(m.group(0), f"pypto.mul({m.group(1)}, {float(m.group(2)) * 1.1!r})", 1)

    monkeypatch.setattr(target, "emit_pypto", emit)
    return planted


@needs_pypto
def test_planted_emitter_bug_fails_the_run(monkeypatch, capsys):
    from attnc.cli import main

    planted = _plant_softmax_scale_bug(monkeypatch)
    code = main(["run", "sparse_attn_core", "--config", "tiny", "--target", "pypto-sim"])
    out, err = capsys.readouterr()
    assert planted and code == 1, (code, err)
    errors = [ln for ln in err.splitlines() if ln.startswith("attnc: error:")]
    assert len(errors) == 1 and "core error" in errors[0] and "vs the interpreter" in errors[0], err
    assert re.search(r"^check core +bfloat16 .* MISMATCH$", out, re.M), out


# pypto 0.2.0's log of the compressor at m=128 (tests/test_pypto_target.py's compressor-compress_ratio128 case):
# the three records KNOWN_VERIFY_LIMITATIONS excuses, and a sparse_attn_core's AssembleChecker report
PLOG = """\
[INFO ] PYPTO(1):t [flow_verifier.cpp:113][VERIFY]:TENSOR_L2_Unroll1_PATH0_hiddenfunc0_12_Pass_04_ExpandFunction Verify for 1 data view list index 0 result PASS
[ERROR] PYPTO(1):t [operation.cpp:69][VERIFY]:ErrCode: FB200F! ExecuteOperation error: op GATHER (magic=10165) input[0] tensorMagic=1019, shape=[260, 256], offset=[0, 0], dynValidShape=[260, 256], dynOffset=[]
[ERROR] PYPTO(1):t [flow_verifier.cpp:301][VERIFY]:ErrCode: FB4001! VerifyPass failed for function TENSOR_L2_Unroll1_PATH0_hiddenfunc0_12, pass ExpandFunction (passIndex: 4, captureIndex: 0): 12448602347816028663, 16592341271752107171, 10165, GATHEROpError
func: TENSOR_L2_Unroll1_PATH0_hiddenfunc0
filename: /tmp/attnc-prog-ciaj7iam/compressor.py
lineno: 3
unsupported operation: some elements of the input tensor and the written-to tensor refer to a single memory location. Please clone()
[ERROR] PYPTO(1):t [flow_verifier.cpp:301][VERIFY]:ErrCode: FB4001! VerifyPass failed for function TENSOR_L2_Unroll1_PATH0_hiddenfunc0_12, pass SplitK (passIndex: 14, captureIndex: 0): Errcode: FB200B!
, func GetValidDataView, file operation.h, line 92
[ERROR] PYPTO(1):t [assemble_checker.cpp:134][PASS]:[AssembleChecker.Tensor]:Tensor produced by assemble has overlap inputs. Overlap input1: shape:{8, 128} offset:{0, 0}.
[ERROR] PYPTO(1):t [assemble_checker.cpp:106][PASS]:[AssembleChecker.Tensor]:Overlap input2: shape:{8, 128} offset:{0, 0}; Please check the function graph; Please check Tensor[6204] and its input.
"""


def test_plog_records_name_their_cause_and_known_causes_are_excused():
    from attnc.codegen.pypto.sim.runner import parse_log_lines
    from attnc.codegen.pypto.target import describe, excuse

    records, _ = parse_log_lines(PLOG.splitlines())
    assert [r[2] for r in records] == ["PASS", "EXCEPTION", "EXCEPTION", "OVERLAP"]
    assert [(r[3]["code"], r[3]["op"]) for r in records[1:3]] == [("FB200F", "GATHER"), ("FB200B", "GATHER")]
    program = "a = 1\nb = 2\nt9 = pypto.index_select(t1, 0, i8)  # kernels_src/compressor.py:77\n"
    assert "program line 3: t9 = pypto.index_select" in describe(records[1], program)
    assert excuse(records[1])
    assert excuse(records[2])  # FB200B GATHER: reproducer the packed m = 128 compressor, one token
    assert records[3][3]["inputs"] == [[[8, 128], [0, 0]], [[8, 128], [0, 0]]]
    assert excuse(records[3], "ASSEMBLED_PIECES = [[[[8, 128], [0, 0], True], [[2, 128], [8, 0], False]]]")
    assert excuse(records[3], "") is None
    other_op = [*records[1][:3], {**records[1][3], "op": "INDEX_ADD"}]
    assert excuse(other_op) is None  # same pass, another cause: not excused


def test_emitted_assembled_pieces_are_the_assembles():
    """ASSEMBLED_PIECES lists exactly the pieces the emitter assembles into a concat's scratch, their rows
    partitioning it, and the padded ones are those followed by a zero block below their valid rows."""
    from attnc.codegen.pypto.emit import emit_pypto
    from attnc.codegen.pypto.target import assembled_pieces

    module, _, _ = _compiled("sparse_attn_core")
    text = emit_pypto(module)
    groups = assembled_pieces(text)
    assert groups and text == emit_pypto(module)
    padded = 0
    for group in groups:
        assert [o[0] for _, o, _ in group] == [sum(s[0] for s, _, _ in group[:i]) for i in range(len(group))]
        for shape, offset, pad in group:  # the piece at its offset; a padded one's zeros below its valid rows
            assert re.search(rf"pypto\.assemble\((pypto\.clone\()?\w+\)?, \[{offset[0]}, 0\], k\d+\)", text)
            found = _zero_padding(text, shape, offset[0])
            assert bool(found) == pad, (shape, offset)
            padded += pad
    assert padded == len(re.findall(r"^ *if \w+ < \d+:$", text, re.M))


def _zero_padding(text: str, shape, row: int):
    """The zeros below a padded piece of `shape` at `row` with v valid rows (pypto-legalize): under `if v < rows`,
    a zero fill of the piece's shape made with rows - v valid rows (tile.fill), assembled as it is at row + v."""
    sh = re.escape(str(list(shape)))
    m = re.search(rf"(\w+) = \({shape[0]} - (\w+)\)\n(?: *(\w+) = \({row} \+ \2\)\n)? *if \2 < {shape[0]}:\n.*\n"
                  rf" *(\w+) = pypto\.full\({sh}, 0\.0, [\w.]+, valid_shape=\[\1, {shape[1]}\]\)\n.*\n"
                  rf" *()pypto\.assemble\(\4, \[(\w+), 0\], k\d+\)", text)
    if m is None or (m.group(3) is None) != (row == 0):
        return None
    return m if m.group(6) == (m.group(3) or m.group(2)) else None


def _overlap(a, b):
    return ["AssembleChecker", 1466, "OVERLAP", {"code": "AssembleChecker", "op": "ASSEMBLE", "tensor": 1466,
                                                "inputs": [a, b]}]


# decode_csa at flash: the key pool [ring 128 | step 2 | picks 512] of each query group (ASSEMBLED_PIECES)
FLASH_CSA_PIECES = ("ASSEMBLED_PIECES = [[[[128, 512], [0, 0], True], [[2, 512], [128, 0], False], "
                    "[[512, 512], [130, 0], True]]]\n")


def test_tiles_of_a_padded_piece_reported_as_overlapping_are_excused_only_inside_the_pieces():
    """Where a piece is larger than its vector tile pypto 0.2.0's AssembleChecker reports tiles: decode_csa at flash
    (batch 64, seq 2) gave 7 such records, e.g. the picks' [128, 512] tile at row 386 against the padding's
    [32, 512] tile at row 480 (the padding's runtime offset 130 + v read as 0). A tile of a padding against a tile
    of a piece is excused; a write that is no tile of a piece or padding, or a padding against itself, is not."""
    from attnc.codegen.pypto.target import excuse

    assert excuse(_overlap([[128, 512], [386, 0]], [[32, 512], [480, 0]]), FLASH_CSA_PIECES)
    assert excuse(_overlap([[32, 512], [96, 0]], [[32, 512], [96, 0]]), FLASH_CSA_PIECES)  # ring tile, its padding's
    assert excuse(_overlap([[2, 512], [128, 0]], [[32, 512], [128, 0]]), FLASH_CSA_PIECES)  # step row, a padding
    assert excuse(_overlap([[128, 512], [386, 0]], [[32, 512], [480, 0]]), "") is None  # no pieces stated
    assert excuse(_overlap([[128, 512], [700, 0]], [[32, 512], [720, 0]]), FLASH_CSA_PIECES) is None  # past the pool
    assert excuse(_overlap([[128, 256], [386, 0]], [[32, 256], [480, 0]]), FLASH_CSA_PIECES) is None  # other columns
    assert excuse(_overlap([[64, 512], [0, 0]], [[64, 512], [0, 0]]),  # one padding against itself: no piece is that
                  "ASSEMBLED_PIECES = [[[[1, 512], [0, 0], False], [[128, 512], [1, 0], True]]]\n") is None


@needs_pypto
def test_tiles_of_a_padded_piece_are_excused_and_simulate():
    """The smallest program with the flash decode_csa reports: sparse_attn_core at tiny with 256 picks of head_dim
    128 (n_cmp 256, max_pos 1024, seq 1): the picks piece [256, 128] is larger than the padding's [128, 128] vector
    tile. With the padding printed as pypto.full(valid_shape=...) AssembleChecker reported the picks at [9, 0]
    against the padding's second tile at [128, 0]; since pypto-legalize states the padding as IR (a zero tile.full
    viewed with its valid rows, under scf.if) it reports the ring piece's padding at its runtime offset read as 0
    against the piece (the tile reports stay covered by the test above). Row 0 at start 1 sees no entry (its picks
    are all padding), row 1 at start 100 sees 25: SIM equals the interpreter bit for bit and every record is
    excused by its cause."""
    from attnc.codegen.pypto.target import describe, run_pypto_sim, unexcused

    cfg = resolve_config("tiny", {"seq": 1, "max_pos": 1024, "n_cmp": 256, "cmp_topk": 256})
    module = build_stage(STAGES["sparse_attn_core"], cfg)
    run_pipeline(module, PYPTO_PIPELINE)
    inputs = make_inputs(STAGES["sparse_attn_core"], cfg, 0, {"start_pos": torch.tensor([1, 100], dtype=torch.int32)})
    (want,) = run_module(module, list(inputs.values()))
    res = run_pypto_sim(module, inputs, timeout_s=600)
    overlaps = [r for r in res.failed_records if r[0] == "AssembleChecker"]
    assert overlaps, res.failed_records
    assert not unexcused(res), [describe(r, res.program) for r in unexcused(res)]
    assert torch.equal(res.outputs["core"], want)
