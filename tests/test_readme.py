"""Every example in README.md runs as written, in README order, in an empty folder: the `attnc ...` lines of the
```bash blocks (through the CLI's `main`, in-process for speed), the ```python blocks (executed), and
```LANG file=NAME blocks (written to NAME first, e.g. a user's stage file or a steps file). Lines that run pypto SIM are
long: the default run skips them, `-m slow` runs everything."""
import io
import re
import shlex
import sys
from pathlib import Path

import pytest

from attnc.codegen.driver import main

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```(\w+)?(?:\s+file=(\S+))?\s*$")


def readme_examples() -> list[tuple[str, str, str | None]]:
    """(kind, text, file name) in README order: kind 'cli' (one attnc command line), 'python' or 'file'."""
    out, block, lang, fname = [], None, None, None
    for line in README.read_text().splitlines():
        m = _FENCE.match(line)
        if m and block is None:
            block, lang, fname = [], m.group(1), m.group(2)
            continue
        if line.startswith("```") and block is not None:
            if lang == "bash":
                out += [("cli", ln.strip(), None) for ln in block if ln.strip().startswith("attnc")]
            elif lang == "python" or fname:  # ```LANG file=NAME: a file the following examples use
                out.append(("file" if fname else "python", "\n".join(block) + "\n", fname))
            block = None
            continue
        if block is not None:
            block.append(line)
    return out


def _is_slow(kind: str, text: str) -> bool:
    return kind == "cli" and ("--target pypto-sim" in text or text.lstrip().startswith("attnc tune"))


def run_cli_line(line: str, monkeypatch) -> int:
    words = shlex.split(line, comments=True)
    assert words[0] == "attnc"
    argv, stdin = [], None
    it = iter(words[1:])
    for w in it:
        if w == "<":
            stdin = Path(next(it)).read_text()
        else:
            argv.append(w)
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return main(argv)


def _run_all(tmp_path, monkeypatch, capsys, include_slow: bool):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNC_PROGRESS", "0")
    examples = readme_examples()
    ran = 0
    for kind, text, fname in examples:
        if _is_slow(kind, text) and not include_slow:
            continue
        if kind == "cli":
            code = run_cli_line(text, monkeypatch)
            _, err = capsys.readouterr()
            assert code == 0, f"README example failed: {text}\n{err}"
        elif kind == "file":
            Path(fname).write_text(text)
        else:
            exec(compile(text, "README.md python block", "exec"), {"__name__": "readme_example"})
        ran += 1
    return examples, ran


def test_readme_has_examples():
    kinds = [k for k, _, _ in readme_examples()]
    assert kinds.count("cli") >= 15 and "python" in kinds


def test_readme_examples_run_in_order(tmp_path, monkeypatch, capsys):
    examples, ran = _run_all(tmp_path, monkeypatch, capsys, include_slow=False)
    assert ran == sum(1 for k, t, _ in examples if not _is_slow(k, t))
    # the file workflow produced what the README says
    assert (tmp_path / "out" / "sparse_attn.mlir").exists() and (tmp_path / "out" / "sparse_attn.pypto.py").exists()
    assert (tmp_path / "after4.npz").exists() and (tmp_path / "cse.mlir").exists()
    assert (tmp_path / "chunked.npz").exists() and (tmp_path / "errors.png").exists()


@pytest.mark.slow
def test_readme_examples_run_in_order_with_sim(tmp_path, monkeypatch, capsys):
    _run_all(tmp_path, monkeypatch, capsys, include_slow=True)
