"""CLI habits (mlir-opt style), the file workflow (attnc inputs, seeded-array note, --steps), provenance headers,
progress/timing and the Python API."""
import argparse
import io
import re
import shlex
import sys

import numpy as np
import pytest
import torch

import attnc
from attnc.cli import build_parser, main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code, err, pattern):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("attnc: error: "), err
    assert re.search(pattern, lines[0]), lines[0]


# ---------------------------------------------------------------------------------------------- usage, help


def test_alone_prints_usage_and_version(capsys):
    code, out, _ = run(capsys)
    assert code == 0 and out.startswith("usage: attnc") and "compile" in out and "inputs" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and re.match(r"attnc \d+\.\d+\.\d+ \(xdsl 0\.74\.0, torch ", out)


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_every_option_has_help_with_its_default():
    for name, sub in _subparsers(build_parser()).items():
        help_text = sub.format_help()
        for action in sub._actions:
            if not action.option_strings or action.dest == "help" or action.required:
                continue
            assert action.help, f"{name} {action.option_strings} has no help"
            if action.default not in (None, False, []):  # valued options show the default
                assert f"(default: {action.default})" in help_text, (name, action.option_strings)
            elif not isinstance(action, argparse._StoreTrueAction) and action.default is None:
                assert "default" in action.help, (name, action.option_strings)  # says what happens without it


# ---------------------------------------------------------------------------------------------- sources, -o


def test_output_file_dir_and_stdout(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "compile", "qkv_proj_rope", "--pipeline", "cse", "-o", "x.mlir")[0] == 0
    assert (tmp_path / "x.mlir").is_file()  # a file, not a folder
    assert run(capsys, "compile", "qkv_proj_rope", "--pipeline", "cse", "-o", "d/")[0] == 0
    assert (tmp_path / "d" / "qkv_proj_rope.mlir").is_file()
    (tmp_path / "e").mkdir()
    assert run(capsys, "compile", "qkv_proj_rope", "--pipeline", "cse", "-o", "e")[0] == 0
    assert (tmp_path / "e" / "qkv_proj_rope.mlir").is_file()
    code, out, _ = run(capsys, "compile", "qkv_proj_rope", "--pipeline", "cse", "-o", "-")
    written = (tmp_path / "x.mlir").read_text()
    assert code == 0 and out == written.replace(" -o x.mlir\n", "\n")  # the header's command names its output


def test_stdin_source_and_module_anchored_pipeline(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(capsys, "compile", "sparse_attn_core", "--pipeline", "fuse-rmsnorm", "-o", "a.mlir")
    monkeypatch.setattr(sys, "stdin", io.StringIO((tmp_path / "a.mlir").read_text()))
    code, out, err = run(capsys, "compile", "-", "--pipeline", "builtin.module(cse,canonicalize)")
    assert code == 0, err
    body = [ln for ln in out.splitlines() if not ln.startswith("//")]
    assert body[0] == "builtin.module {" and "source: - (sha256 " in out
    monkeypatch.setattr(sys, "stdin", io.StringIO("builtin.module {\n  %0 = oops\n}\n"))
    one_error(*run(capsys, "compile", "-")[::2], r"<stdin>:\d+:\d+: ")


def test_print_ir_flags(capsys):
    code, _, err = run(capsys, "compile", "qkv_proj_rope", "--pipeline", "fuse-rmsnorm,cse,canonicalize",
                       "--print-ir-before", "fuse-rmsnorm", "--print-ir-after-change", "-o", "-")
    banners = re.findall(r"// -----// IR Dump (.*) //----- //", err)
    # cse and canonicalize change nothing after fuse-rmsnorm here: after-change prints fuse-rmsnorm only
    assert code == 0 and banners == ["Before fuse-rmsnorm", "After fuse-rmsnorm"], banners
    code, _, err = run(capsys, "compile", "qkv_proj_rope", "--pipeline", "cse,dce", "--print-ir-before-all",
                       "--print-ir-after", "dce", "-o", "-")
    assert re.findall(r"IR Dump (.*?) //", err) == ["Before cse", "Before dce", "After dce"]
    one_error(*run(capsys, "compile", "qkv_proj_rope", "--print-ir-after", "bogus")[::2], "unknown pass 'bogus'")


def test_failure_keeps_dumps_and_prints_failed_ir(capsys, tmp_path):
    dump = tmp_path / "dumps"
    code, out, err = run(capsys, "compile", "qkv_proj_rope", "--pipeline", "fuse-rmsnorm,cse,lower-to-tiles",
                         "--dump-dir", str(dump), "--print-ir-after-failure", "-o", str(tmp_path / "q.mlir"))
    assert code == 2 and "IR Dump After lower-to-tiles Failed" in err
    assert err.strip().splitlines()[-1].startswith("attnc: error: pass lower-to-tiles:")
    assert sorted(p.name for p in dump.iterdir()) == ["00-input.mlir", "01-fuse-rmsnorm.mlir", "02-cse.mlir",
                                                      "03-lower-to-tiles.failed.mlir"]
    assert not (tmp_path / "q.mlir").exists()


def test_compile_loads_no_torch(tmp_path):
    """`attnc compile` interprets nothing without --verify-each: torch and the interpreter (about half of the
    command's CPU time at tiny) are never imported for the PTO emitter or an MLIR output. A pypto program carries
    its host constants' values (pypto-legalize `host_constant`), which the interpreter computes: there they are
    imported (decode_csa at tiny: about 2 s of CPU more)."""
    import subprocess

    script = ("import sys; from attnc.cli import main; "
              "loaded = lambda: sorted(m for m in ('torch', 'attnc.ir.interpreter') if m in sys.modules); "
              f"codes = [main(['compile', s, '--emit', e, *x, '-o', {str(tmp_path)!r} + '/' + e + '/'])"
              " for s, e, x in (('decode_csa', 'mlir', []), ('decode_swa', 'pto', ['--pto-dtype', 'f16']))]; "
              "print(codes, loaded()); "
              f"print(main(['compile', 'decode_csa', '--emit', 'pypto', '-o', {str(tmp_path)!r} + '/p/']), loaded())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.stdout.split("\n")[-3:-1] == ["[0, 0] []", "0 ['attnc.ir.interpreter', 'torch']"], out.stdout + out.stderr


def test_timing_report_is_complete(capsys):
    code, _, err = run(capsys, "compile", "sparse_attn_core", "--verify-each", "--timing", "-o", "-")
    phases = [ln.split()[1:-2] for ln in err.splitlines() if ln.startswith("timing ")]
    names = [" ".join(p) for p in phases]
    for want in ("imports (torch, xdsl, attnc)", "build stage (DSL -> attn IR)", "verify: reference run of the input",
                 "pass tile-softmax", "verify after tile-softmax", "emit mlir", "write", "total"):
        assert any(n.startswith(want) for n in names), (want, names)
    total = float(err.split("timing total")[1].split()[0])
    parts = sum(float(ln.split()[-2]) for ln in err.splitlines()
                if ln.startswith("timing ") and not ln.startswith(("timing total", "timing phase")))
    assert abs(parts - total) < 1.0  # the phases (with "(other)") add up to the total


def test_progress_is_quiet_when_piped_and_shown_when_forced(capsys, monkeypatch):
    monkeypatch.delenv("ATTNC_PROGRESS", raising=False)
    _, _, quiet = run(capsys, "compile", "sparse_attn_core", "--verify-each", "-o", "-")
    assert "\r" not in quiet
    monkeypatch.setenv("ATTNC_PROGRESS", "1")
    _, _, shown = run(capsys, "compile", "sparse_attn_core", "--verify-each", "-o", "-")
    assert "sparse_attn_core: verify tile-softmax" in shown and "\r" in shown


# ---------------------------------------------------------------------------------------------- file workflow


def test_inputs_command_and_seeded_note(capsys, tmp_path):
    path = tmp_path / "in.npz"
    code, _, err = run(capsys, "inputs", "sparse_attn", "--seed", "7", "-o", str(path))
    assert code == 0
    with np.load(path) as data:
        names = list(data.files)
    assert names == attnc.build("sparse_attn").arg_names
    # a run on the whole file seeds nothing; on a partial file one line names every seeded array
    code, out_full, err = run(capsys, "run", "sparse_attn", "--inputs", str(path))
    assert code == 0 and "seeded" not in err
    with np.load(path) as data:
        np.savez(tmp_path / "part.npz", **{k: data[k] for k in names if k not in ("q", "wo_b")})
    code, out_part, err = run(capsys, "run", "sparse_attn", "--inputs", str(tmp_path / "part.npz"))
    notes = [ln for ln in err.splitlines() if "seeded" in ln]
    assert code == 0 and notes == ["attnc: note: seeded 2 of 11 inputs of sparse_attn (seed 0): q, wo_b"]
    one_error(*run(capsys, "run", "sparse_attn", "--inputs", str(tmp_path / "part.npz"), "--no-seed")[::2],
              r"--no-seed: sparse_attn needs 2 more input array\(s\): q, wo_b")
    # the inputs written are the inputs `run --seed 7` uses
    code, out_seeded, _ = run(capsys, "run", "sparse_attn", "--seed", "7")
    values = lambda out: [ln for ln in out.splitlines() if not ln.startswith("wall_s")]  # noqa: E731
    assert values(out_seeded) == values(out_full)


def _assert_one_long_step(capsys, tmp_path, one, second_step_tokens: int):
    """after.npz (a 1-token step from `one` at position 126, then a step of `second_step_tokens` seeded with
    seed 5 + 1) equals one decode_hca step over all those tokens on the same inputs, bit for bit: caches, states
    and the last step's output rows."""
    with np.load(one) as data:
        arrays = {k: data[k] for k in data.files}
    x1 = torch.randn((2, second_step_tokens, 64),
                     generator=torch.Generator().manual_seed(6)).to(torch.bfloat16).float().numpy()
    arrays["x"] = np.concatenate([arrays["x"], x1], axis=1)  # the documented seeding of step k: seed + k
    long_in = tmp_path / "long_in.npz"
    np.savez(long_in, **arrays)
    assert run(capsys, "run", "decode_hca", "--set", f"seq={1 + second_step_tokens}", "--inputs", str(long_in),
               "--out", str(tmp_path / "long.npz"))[0] == 0
    with np.load(tmp_path / "after.npz") as a, np.load(tmp_path / "long.npz") as b:
        for name in ("kv_ring", "kv_state", "score_state", "kv_cmp"):
            assert np.array_equal(a[name], b[name]), name
        assert np.array_equal(a["out"], b["out"][:, 1:])
        assert a["kv_cmp"].any()  # position 127 completed block 0 in the second step: the carried state mattered


def test_steps_carry_state_like_one_longer_step(capsys, tmp_path):
    """Two single-token steps (--steps 2, seq=1) end in the same caches and states as one 2-token step on the
    same tokens, bit for bit (the state contract), and the last output is the 2-token step's second row."""
    one = tmp_path / "one.npz"
    assert run(capsys, "inputs", "decode_hca", "--set", "seq=1", "--start-pos", "126", "-o", str(one))[0] == 0
    code, _, err = run(capsys, "run", "decode_hca", "--set", "seq=1", "--inputs", str(one), "--steps", "2",
                       "--seed", "5", "--out", str(tmp_path / "after.npz"))
    assert code == 0 and "step 2/2: start_pos=[127, 127]" in err
    _assert_one_long_step(capsys, tmp_path, one, second_step_tokens=1)


def test_steps_refusals(capsys):
    one_error(*run(capsys, "run", "sparse_attn", "--steps", "2")[::2], "carries no state")
    one_error(*run(capsys, "run", "decode_swa", "--steps", "200")[::2], r"outside the RoPE table \(max_pos 64")


def test_steps_file_steps_of_different_sizes_equal_one_long_step(capsys, tmp_path):
    """--steps-file with token counts [1, 2] (a line file, comments allowed) ends in the caches and states of one
    3-token step on the same tokens, bit for bit; each step is built for its own seq and starts where the last
    ended."""
    one = tmp_path / "one.npz"
    assert run(capsys, "inputs", "decode_hca", "--set", "seq=1", "--start-pos", "126", "-o", str(one))[0] == 0
    steps = tmp_path / "steps.txt"
    steps.write_text("1  # the first token\n\n2\n")
    code, _, err = run(capsys, "run", "decode_hca", "--inputs", str(one), "--steps-file", str(steps), "--seed", "5",
                       "--out", str(tmp_path / "after.npz"))
    assert code == 0, err
    assert "step 1/2: start_pos=[126, 126] seq=1" in err and "step 2/2: start_pos=[127, 127] seq=2" in err
    _assert_one_long_step(capsys, tmp_path, one, second_step_tokens=2)
    steps.write_text("[1, 1]")  # the JSON form
    code, _, err = run(capsys, "run", "decode_swa", "--steps-file", str(steps))
    assert code == 0 and "step 2/2: start_pos=[1, 1] seq=1" in err


@pytest.mark.parametrize("content, pattern", [
    ("2\nabc\n", r"steps.txt:2: 'abc' is not a token count"),
    ("[2, 0]", r"steps.txt: entry 1: 0 is not a token count"),
    ("[2, true]", r"entry 1: True is not a token count"),
    ("[1.5]", r"entry 0: 1.5 is not"),
    ('{"steps": [1]}', r"not a JSON list of token counts"),
    ("[1, 2", r"not a JSON list of token counts: "),
    ("# nothing\n\n", r"steps.txt: no steps"),
    ("40\n40\n", r"80 tokens per row do not fit the RoPE table \(max_pos 64"),
    (b"\xff\xfe", r"not UTF-8"),
])
def test_steps_file_refusals(capsys, tmp_path, content, pattern):
    steps = tmp_path / "steps.txt"
    (steps.write_bytes if isinstance(content, bytes) else steps.write_text)(content)
    one_error(*run(capsys, "run", "decode_swa", "--steps-file", str(steps), "--out", str(tmp_path / "o.npz"))[::2],
              pattern)
    assert not (tmp_path / "o.npz").exists()


def test_steps_file_other_refusals(capsys, tmp_path):
    steps = tmp_path / "steps.txt"
    steps.write_text("1\n")
    one_error(*run(capsys, "run", "decode_swa", "--steps-file", str(tmp_path / "missing.txt"))[::2],
              "missing.txt: cannot read the steps file")
    one_error(*run(capsys, "run", "decode_swa", "--steps-file", str(steps), "--steps", "2")[::2], "give one of them")
    one_error(*run(capsys, "run", "decode_swa", "--steps-file", str(steps), "--set", "seq=2")[::2],
              "drop --set seq")
    one_error(*run(capsys, "run", "sparse_attn", "--steps-file", str(steps))[::2], "carries no state")


def test_every_stage_runs_with_tiny_as_is(capsys):
    for name in attnc.stages():
        code, _, err = run(capsys, "run", name, "--config", "tiny")
        assert code == 0, (name, err)


# ---------------------------------------------------------------------------------------------- provenance


def test_pypto_header_reproduces_the_file(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "compile", "sparse_attn_core", "--set", "window=16", "--emit", "pypto",
                       "-o", "k.pypto.py")
    assert code == 0, err
    text = (tmp_path / "k.pypto.py").read_text()
    head = text.splitlines()[:6]
    assert head[0].startswith("# made by attnc ") and "config: tiny; overrides: window=16" in head[2]
    assert "pipeline: " + attnc.passes.__name__ and "tile-softmax{kv-tile=128}" in head[3]
    reproduce = head[4].split("reproduce: ", 1)[1]
    (tmp_path / "again").mkdir()
    monkeypatch.chdir(tmp_path / "again")
    assert main(shlex.split(reproduce)[1:]) == 0
    assert (tmp_path / "again" / "k.pypto.py").read_text() == text
    assert "python -m attnc.codegen.pypto.sim.runner k.pypto.py in.npz out.npz" in head[5]
    compile(text, "k.pypto.py", "exec")  # still valid Python


def test_header_cannot_be_escaped_by_a_file_name(capsys, tmp_path):
    run(capsys, "compile", "qkv_proj_rope", "--pipeline", "canonicalize", "-o", str(tmp_path / "a.mlir"))
    weird = tmp_path / "x\nraise SystemExit(3)\n.mlir"
    weird.write_text((tmp_path / "a.mlir").read_text())
    code, out, err = run(capsys, "compile", str(weird), "--emit", "pypto", "-o", "-")
    lines = out.splitlines()
    assert code == 0, err
    assert not any(ln.startswith("raise SystemExit") for ln in lines)
    assert "x\\nraise SystemExit(3)\\n.mlir" in lines[1]


# ---------------------------------------------------------------------------------------------- user stages, API


def test_user_stage_file(capsys, tmp_path):
    f = tmp_path / "mine.py"
    f.write_text("from attnc.ir.dsl import In, matmul, stage\n\n"
                 "@stage('twice', outputs=('y',))\n"
                 "def twice(cfg, x: In('tokens', 'dim'), w: In('dim', 'dim')):\n"
                 "    return {'y': matmul(x, w, out='bf16')}\n")
    code, out, err = run(capsys, "compile", f"{f}:twice", "--verify-each", "-o", "-")
    assert code == 0 and "func.func @twice" in out, err
    one_error(*run(capsys, "compile", f"{f}:nope")[::2], r"mine\.py: defines no stage 'nope' \(stages it registers: twice")
    one_error(*run(capsys, "compile", f"{tmp_path}/missing.py:x")[::2], r"missing\.py: no such file")
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    one_error(*run(capsys, "compile", f"{tmp_path}/broken.py:x")[::2], r"broken\.py: cannot load \(RuntimeError: boom\)")


def test_python_api_matches_the_cli(capsys, tmp_path):
    stage = attnc.build("sparse_attn", config="tiny", window=16)
    assert stage.cfg["window"] == 16 and stage.arg_names[0] == "q"
    arrays = attnc.inputs(stage, seed=3)
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    tensor_level = attnc.interpret(stage, arrays)
    report = attnc.compile(stage, verify_each=True)
    assert report.passes and not report.failed
    tile_level = attnc.interpret(stage, arrays)
    err = np.abs(tile_level["out"] - tensor_level["out"]).max() / np.abs(tensor_level["out"]).max()
    assert 0 < err < 2e-2  # tiled softmax: close, not identical
    # the same numbers as `attnc run --out`
    np.savez(tmp_path / "in.npz", **arrays)
    assert run(capsys, "run", "sparse_attn", "--set", "window=16", "--inputs", str(tmp_path / "in.npz"),
               "--out", str(tmp_path / "o.npz"))[0] == 0
    with np.load(tmp_path / "o.npz") as data:
        assert np.array_equal(data["out"], tensor_level["out"])
    with pytest.raises(attnc_input_error()):
        attnc.interpret(stage, {"q": arrays["q"]})
    assert "func.func @sparse_attn" in str(stage)


def attnc_input_error():
    from attnc.io import InputError

    return InputError


def test_sim_verify_failures_fail_unless_their_cause_is_known():
    """A record is excused by its cause (pypto error code and op), never by its pass name; an AssembleChecker
    overlap only between a padded piece's padding and a piece of the same concat (ASSEMBLED_PIECES)."""
    from types import SimpleNamespace

    from attnc.cli import CliError, _check_sim_verify

    gather = {"code": "FB200F", "op": "GATHER", "line": None, "function": "F"}
    known = SimpleNamespace(failed_records=[("F:ExpandFunction", 0, "EXCEPTION", gather)], verify=[None] * 10,
                            program="")
    _check_sim_verify(known)  # a known pypto limitation by its cause: a note, exit 0
    same_pass = SimpleNamespace(failed_records=[("F:ExpandFunction", 0, "EXCEPTION", {**gather, "op": "MATMUL"})],
                                verify=[None] * 10, program="")
    with pytest.raises(CliError, match=r"1 of 10 records FAILED with no known cause \(first: pass F:ExpandFunction"
                                       r".*code FB200F, op MATMUL"):
        _check_sim_verify(same_pass)
    def overlap(a, b):
        return ("AssembleChecker", 7, "OVERLAP", {"code": "AssembleChecker", "op": "ASSEMBLE", "tensor": 7,
                                                  "inputs": [a, b]})

    # one concat: an 8-row padded piece at row 0, a 2-row piece at row 8, a 4-row padded piece at row 10
    program = ("x = 1\nASSEMBLED_PIECES = [[[[8, 128], [0, 0], True], [[2, 128], [8, 0], False], "
               "[[4, 128], [10, 0], True]]]\n")
    harmless = [([[8, 128], [3, 0]], [[8, 128], [0, 0]]),  # a padding inside its piece, and the piece
                ([[4, 128], [0, 0]], [[4, 128], [10, 0]]),  # the padding's runtime offset read as 0, its piece
                ([[2, 128], [8, 0]], [[4, 128], [0, 0]])]  # ... and another piece of the concat
    for a, b in harmless:
        _check_sim_verify(SimpleNamespace(failed_records=[overlap(a, b)], verify=[None] * 4, program=program))
    for prog, (a, b) in (("", harmless[0]),  # no pieces stated: nothing excuses it
                         (program, ([[8, 128], [0, 0]], [[8, 128], [8, 0]])),  # not a piece of the concat
                         (program, ([[2, 128], [14, 0]], [[2, 128], [8, 0]]))):  # a write past the pool
        with pytest.raises(CliError, match="AssembleChecker: assembles into tensor 7 overlap"):
            _check_sim_verify(SimpleNamespace(failed_records=[overlap(a, b)], verify=[None] * 4, program=prog))
