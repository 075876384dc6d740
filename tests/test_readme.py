"""Every command in README.md and docs/*.md runs as written, in page order, in an empty folder (one per page).

Conventions of the pages (stated in README's Quickstart and here):
- ```bash blocks hold commands for an empty folder: `attnc ...` lines (run through the CLI's `main`, in-process for
  speed; `< FILE` feeds stdin) and `cat > NAME <<'EOF'` ... `EOF` (a file the following commands use). Any other
  command there fails this test. A comment containing `exits 2` marks a refusal that is the expected outcome.
- ```python blocks are executed.
- ```sh blocks are commands run from the checkout (`make`, `python benchmarks/...`, `source`, `pytest`): the
  Makefile target, script and each `--flag` must exist (running them here would be `make test` inside itself).
- A heavy command (pypto SIM, `attnc tune`) states its cost (time, memory) in its comment and runs under `-m slow`.
"""
import importlib.util
import io
import re
import shlex
import sys
from pathlib import Path

import pytest

from attnc.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w+)?\s*$")
_HEREDOC = re.compile(r"^cat > (\S+) <<'?(\w+)'?$")
_COST = re.compile(r"\b\d+(\.\d+)?\s?(s|min|minutes?|GB|MB)\b")
_SH_ALLOWED = ("make ", "python benchmarks/", "source ", "pytest ", "python -m pytest")


def blocks(page: Path) -> list[tuple[str, list[str]]]:
    """(language, lines) of every fenced block of a page, in order."""
    out, block, lang = [], None, None
    for line in page.read_text().splitlines():
        if block is None:
            m = _FENCE.match(line)
            if m:
                block, lang = [], m.group(1) or ""
            continue
        if line.startswith("```"):
            out.append((lang, block))
            block = None
        else:
            block.append(line)
    assert block is None, f"{page.name}: unclosed code block"
    return out


def examples(page: Path) -> list[tuple[str, str, str | None]]:
    """(kind, text, file name) in page order: 'cli' (one attnc line), 'file' (a heredoc), 'python', 'sh'."""
    out = []
    for lang, lines in blocks(page):
        if lang == "python":
            out.append(("python", "\n".join(lines) + "\n", None))
        elif lang == "sh":
            out += [("sh", ln.strip(), None) for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        elif lang == "bash":
            it = iter(lines)
            for ln in it:
                s = ln.strip()
                if not s or s.startswith("#"):
                    continue
                m = _HEREDOC.match(s)
                if m:
                    body = []
                    for b in it:
                        if b == m.group(2):
                            break
                        body.append(b)
                    out.append(("file", "\n".join(body) + "\n", m.group(1)))
                else:
                    out.append(("cli", s, None))
    return out


def is_slow(kind: str, text: str) -> bool:
    return kind == "cli" and ("--target pypto-sim" in text or text.startswith("attnc tune"))


def expected_code(text: str) -> int:
    return 2 if "exits 2" in text.partition("#")[2] else 0


def run_cli_line(line: str, monkeypatch) -> int:
    words = shlex.split(line, comments=True)
    assert words[0] == "attnc", f"not a command for an empty folder (use a ```sh block for the checkout): {line}"
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


def check_sh_line(line: str) -> None:
    """A checkout command: its make target, script and flags exist."""
    assert line.startswith(_SH_ALLOWED), f"unknown checkout command: {line}"
    words = shlex.split(line, comments=True)
    if words[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M)
        assert words[1] in targets, line
    elif words[0] == "python" and words[1].startswith("benchmarks/"):
        script = ROOT / words[1]
        assert script.exists(), line
        for flag in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
            assert f'"{flag}"' in script.read_text(), f"{line}: {flag} is not an option of {words[1]}"


def run_page(page: Path, tmp_path, monkeypatch, capsys, include_slow: bool) -> int:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTNC_PROGRESS", "0")
    ran = 0
    for kind, text, fname in examples(page):
        if is_slow(kind, text) and not include_slow:
            continue
        if kind == "cli":
            code = run_cli_line(text, monkeypatch)
            _, err = capsys.readouterr()
            assert code == expected_code(text), f"{page.name} example exited {code}: {text}\n{err}"
            if code == 2:
                assert err.count("attnc: error:") == 1, err
        elif kind == "file":
            Path(fname).write_text(text)
        elif kind == "sh":
            check_sh_line(text)
        else:
            exec(compile(text, f"{page.name} python block", "exec"), {"__name__": "doc_example"})
        ran += 1
    return ran


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_examples_run_in_order(page, tmp_path, monkeypatch, capsys):
    run_page(page, tmp_path, monkeypatch, capsys, include_slow=False)


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if any(is_slow(k, t) for k, t, _ in examples(p))],
                         ids=lambda p: p.name)
def test_page_examples_run_in_order_with_sim(page, tmp_path, monkeypatch, capsys):
    run_page(page, tmp_path, monkeypatch, capsys, include_slow=True)


def test_heavy_commands_state_their_cost():
    for page in PAGES:
        for kind, text, _ in examples(page):
            if is_slow(kind, text):
                assert _COST.search(text.partition("#")[2]), f"{page.name}: say the cost of: {text}"


def test_docs_examples_exist_and_pages_are_linked():
    all_examples = [e for p in PAGES for e in examples(p)]
    assert sum(k == "cli" for k, _, _ in all_examples) >= 40 and any(k == "python" for k, _, _ in all_examples)
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for page in PAGES[1:]:  # every docs page is reachable from the README
        assert f"docs/{page.name}" in readme, page.name
    for page in PAGES:  # relative links point at files that exist
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"


def test_readme_file_workflow_outputs(tmp_path, monkeypatch, capsys):
    """The quickstart and the CLI page produce the files their comments name."""
    (tmp_path / "a").mkdir()
    run_page(ROOT / "README.md", tmp_path / "a", monkeypatch, capsys, False)
    assert (tmp_path / "a" / "out" / "sparse_attn.mlir").exists()
    assert (tmp_path / "a" / "out" / "sparse_attn.pypto.py").exists() and (tmp_path / "a" / "state.npz").exists()
    (tmp_path / "b").mkdir()
    run_page(ROOT / "docs" / "cli.md", tmp_path / "b", monkeypatch, capsys, False)
    for name in ("after4.npz", "cse.mlir", "chunked.npz", "errors.png", "out/sparse_attn_core_k0.pto"):
        assert (tmp_path / "b" / name).exists(), name


def _load_main_job():
    spec = importlib.util.spec_from_file_location("main_job", ROOT / "benchmarks" / "main_job.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_main_job_table_is_what_make_run_prints():
    """docs/main-job.md is written by `make run RUN_ARGS='--markdown docs/main-job.md'`: its columns, stages and
    pass counts are the current ones (a fresh run takes minutes; the figures are regenerated by that command)."""
    from attnc.passes import DEFAULT_PIPELINE, build_pipeline

    mj = _load_main_job()
    text = (ROOT / "docs" / "main-job.md").read_text()
    assert "python benchmarks/main_job.py --config flash --markdown docs/main-job.md" in text
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in text.splitlines() if ln.startswith("|")]
    assert rows[0] == [h for _, h in mj.COLUMNS]
    body = rows[2:]
    assert [r[0] for r in body] == list(mj.STAGE_ORDER)
    n_passes = len(build_pipeline(DEFAULT_PIPELINE).passes)
    assert all(r[1] == str(n_passes) for r in body), (n_passes, [r[1] for r in body])
    assert all(r[5] == "0" for r in body)  # no --verify-each failure
    # the Markdown writer is the table printer's: same cells for the same rows
    md = mj.markdown_table("t", [["x"] * len(mj.COLUMNS)], "cmd")
    assert md.splitlines()[-1] == "| " + " | ".join(["x"] * len(mj.COLUMNS)) + " |"
