"""The command line: every bad input gives one error line and exit 2, and leaves no output behind."""
import json
import subprocess
import sys

import numpy as np
import pytest

from attnc.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code, err, pattern):
    import re

    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("attnc: error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err


def test_list_has_stages_configs_passes(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    kinds = {ln.split()[0] + " " + ln.split()[1] for ln in out.splitlines()}
    for want in ("stage qkv_proj_rope", "stage sparse_attn", "stage sparse_attn_core", "config flash",
                 "config pro", "config tiny", "pass tile-softmax", "pass parallelize-tokens", "pass cse"):
        assert want in kinds


def test_show_config_with_overrides_and_derived_sizes(capsys):
    code, out, _ = run(capsys, "show-config", "flash", "--set", "compress_ratio=128", "--set", "seq=3")
    cfg = json.loads(out)
    assert code == 0 and cfg["compress_ratio"] == 128 and cfg["seq"] == 3 and cfg["tokens"] == 64 * 3
    for key in ("batch", "seq", "dim", "n_heads", "head_dim", "rope_dim", "q_lora_rank", "o_lora_rank", "o_groups",
                "window", "compress_ratio", "n_cmp", "cmp_topk", "max_pos", "norm_eps"):
        assert key in cfg


@pytest.mark.parametrize("argv, pattern", [
    (["show-config", "nope"], "unknown config 'nope'"),
    (["show-config", "tiny", "--set", "nope=1"], "unknown config key"),
    (["show-config", "tiny", "--set", "seq=two"], "expected an integer"),
    (["show-config", "tiny", "--set", "compress_ratio=5"], "compress_ratio must be 0, 4 or 128"),
    (["compile", "nope"], "unknown stage 'nope'"),
    (["compile", "qkv_proj_rope", "--pipeline", "cse,bogus"], "unknown pass 'bogus'"),
    (["compile", "qkv_proj_rope", "--pipeline", "cse{"], r"pipeline:\d+: "),
    (["compile", "qkv_proj_rope", "--pipeline", "tile-softmax{nope=3}"], "tile-softmax"),
    (["run", "qkv_proj_rope", "--target", "gpu"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments(capsys, argv, pattern):
    code, _, err = run(capsys, *argv)
    assert_one_error_line(code, err, pattern)


def test_malformed_ir_file(capsys, tmp_path):
    bad = tmp_path / "bad.mlir"
    bad.write_text('builtin.module {\n  %0 = "attn.exp"(%x) : (tensor<2xf32>) -> tensor<2xf32>\n}\n')
    code, _, err = run(capsys, "compile", str(bad), "-o", str(tmp_path / "out"))
    assert_one_error_line(code, err, r"bad\.mlir:\d+:\d+: values used but not defined")
    assert not (tmp_path / "out").exists()


def test_compile_writes_ir_that_parses_back(capsys, tmp_path):
    code, _, err = run(capsys, "compile", "sparse_attn", "--config", "tiny", "--pipeline", "canonicalize,cse",
                       "--verify-each", "-o", str(tmp_path), "--dump-dir", str(tmp_path / "dump"))
    assert code == 0, err
    text = (tmp_path / "sparse_attn.mlir").read_text()
    from attnc.ir import parse_ir, print_ir

    header = "".join(ln for ln in text.splitlines(keepends=True) if ln.startswith("//"))
    assert "reproduce: attnc compile sparse_attn --config tiny --pipeline canonicalize,cse" in header
    assert header + print_ir(parse_ir(text)) == text
    assert sorted(p.name for p in (tmp_path / "dump").iterdir()) == ["00-input.mlir", "01-canonicalize.mlir", "02-cse.mlir"]
    assert "verify cse" in err and "FAILED" not in err
    # a compiled .mlir file is itself a valid source
    body = lambda t: "".join(ln for ln in t.splitlines(keepends=True) if not ln.startswith("//"))  # noqa: E731
    code, out, err = run(capsys, "compile", str(tmp_path / "sparse_attn.mlir"), "--pipeline", "canonicalize")
    assert code == 0 and body(out) == body(text)
    # with the DSL locations printed, the file keeps them: cse then merges nothing across DSL lines, as in memory
    run(capsys, "compile", "sparse_attn", "--pipeline", "canonicalize,cse", "--print-debuginfo",
        "-o", str(tmp_path / "dbg.mlir"))
    dbg = (tmp_path / "dbg.mlir").read_text()
    assert 'loc("kernels_src/sparse_attn.py":' in dbg
    code, out, err = run(capsys, "compile", str(tmp_path / "dbg.mlir"), "--pipeline", "cse", "--print-debuginfo")
    assert code == 0 and body(out) == body(dbg)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_run_file_contract_roundtrip(capsys, tmp_path):
    out = tmp_path / "out.npz"
    code, stdout, err = run(capsys, "run", "sparse_attn_core", "--config", "tiny", "--seed", "3", "--out", str(out))
    assert code == 0, err
    with np.load(out) as data:
        first = data["core"]
    assert first.dtype == np.float32 and first.shape == (2, 2, 4, 128)
    # bf16 values travel as float32: feeding them back is lossless
    as_bf16 = np.asarray(first)
    assert np.array_equal(as_bf16.view(np.uint32) & 0xFFFF, np.zeros_like(as_bf16.view(np.uint32)))
    # explicit inputs override the seeded ones
    q = np.zeros((2, 2, 4, 128), np.float32)
    code, _, err = run(capsys, "run", "sparse_attn_core", "--config", "tiny", "--seed", "3",
                       "--inputs", _npz(tmp_path / "in.npz", q=q), "--out", str(out))
    with np.load(out) as data:
        second = data["core"]
    assert code == 0 and not np.array_equal(first, second)


@pytest.mark.parametrize("arrays, pattern", [
    (dict(q=np.zeros((2, 2, 4, 64), np.float32)), r"in\.npz: array 'q': shape \[2, 2, 4, 64\] does not match"),
    (dict(start_pos=np.zeros(2, np.float32)), r"array 'start_pos': expected an integer array"),
    (dict(wrong=np.zeros(2, np.float32)), r"array 'wrong' is not a parameter of sparse_attn_core"),
])
def test_run_rejects_bad_input_files(capsys, tmp_path, arrays, pattern):
    out = tmp_path / "out.npz"
    code, _, err = run(capsys, "run", "sparse_attn_core", "--config", "tiny",
                       "--inputs", _npz(tmp_path / "in.npz", **arrays), "--out", str(out))
    assert_one_error_line(code, err, pattern)
    assert not out.exists()


def test_run_rejects_unreadable_input_file(capsys, tmp_path):
    bad = tmp_path / "in.npz"
    bad.write_text("not a zip")
    code, _, err = run(capsys, "run", "sparse_attn_core", "--inputs", str(bad))
    assert_one_error_line(code, err, r"in\.npz: not a readable \.npz archive")


def test_console_script_exit_code():
    proc = subprocess.run([sys.executable, "-m", "attnc.cli", "compile", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("attnc: error: unknown stage")
