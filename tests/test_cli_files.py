"""File arguments: `-` is stdin/stdout where the data is text (and `run --out -`), refused elsewhere; an output's folder must exist
unless the path ends in `/`; `attnc list passes`; `-p`; notes and dumps around a live progress line."""
import io
import sys

import pytest

from attnc.cli import main

DASH_REFUSED = [
    ["inputs", "sparse_attn", "-o", "-"],
    ["run", "sparse_attn", "--inputs", "-"],
    ["run", "decode_hca", "--steps-file", "-"],
    ["run", "decode_hca", "--state", "-"],
    ["compile", "sparse_attn", "--tuning", "-"],
    ["plot", "errors", "sparse_attn", "-o", "-"],
    ["plot", "visibility", "decode_csa", "--inputs", "-", "-o", "v.png"],
    ["tune", "sparse_attn_core", "-o", "-"],
]


@pytest.mark.parametrize("argv", DASH_REFUSED, ids=[" ".join(a) for a in DASH_REFUSED])
def test_dash_is_refused_where_it_cannot_be_stdin_or_stdout(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'-' (std" in err, err
    assert not list(tmp_path.iterdir())  # no file named '-'


def test_dash_is_stdin_and_stdout_for_mlir_text(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "sparse_attn", "--config", "tiny", "-o", "-"]) == 0
    text = capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    assert main(["compile", "-", "-p", "cse", "-o", "-"]) == 0
    assert "func.func @sparse_attn" in capsys.readouterr().out and not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv", [
    ["compile", "sparse_attn", "-o", "nope/a.mlir"],
    ["inputs", "sparse_attn", "-o", "nope/in.npz"],
    ["run", "sparse_attn", "--out", "nope/out.npz"],
    ["plot", "errors", "sparse_attn", "-o", "nope/e.png"],
])
def test_a_missing_output_folder_is_an_error(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "folder nope/ does not exist" in err
    assert not (tmp_path / "nope").exists()


def test_a_trailing_slash_creates_the_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "sparse_attn", "--config", "tiny", "-o", "new/deeper/"]) == 0
    assert (tmp_path / "new" / "deeper" / "sparse_attn.mlir").exists()


def test_list_passes_shows_options_types_defaults_and_tolerance(capsys):
    assert main(["list", "passes"]) == 0
    out = capsys.readouterr().out
    assert "tile-softmax  (tolerance 0.02):" in out and "    kv-tile: int = 32" in out
    assert "    schedule: auto|batch|token = auto" in out and "    sink: auto|key|term = auto" in out
    assert "tile-matmul  (tolerance 0.01):" in out and "    k: int = 512" in out
    assert "fuse-rmsnorm  (tolerance 0):" in out and "stage " not in out
    assert main(["list", "configs"]) == 0
    assert capsys.readouterr().out.startswith("config  flash")


def test_p_is_the_pipeline(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "qkv_proj_rope", "-p", "fuse-rmsnorm", "-o", "a.mlir"]) == 0
    assert main(["compile", "qkv_proj_rope", "--pipeline", "fuse-rmsnorm", "-o", "b.mlir"]) == 0
    def body(name):
        return [ln for ln in (tmp_path / name).read_text().splitlines() if not ln.startswith("//")]

    assert body("a.mlir") == body("b.mlir")
    assert "attn.rope" in "\n".join(body("a.mlir")) and "attn.rmsnorm" not in "\n".join(body("a.mlir"))


def test_notes_and_dumps_print_around_a_live_progress_line(monkeypatch):
    """With a bar on screen, a dump banner starts on a line of its own and the bar is drawn again after it."""
    from attnc.progress import Progress, stderr_write

    fake = io.StringIO()
    monkeypatch.setattr(sys, "stderr", fake)
    with Progress(3, "compile", enabled=True) as bar:
        bar.describe("compile: cse")
        stderr_write("// -----// IR Dump After cse //----- //\nbuiltin.module {}\n")
        drawn_before = fake.getvalue().split("// -----//")[0]
        after = fake.getvalue().split("builtin.module {}\n", 1)[1]
    assert drawn_before.rstrip(" ").endswith("\r")  # the bar line was cleared before the banner
    assert "compile: cse" in after  # and drawn again below it
