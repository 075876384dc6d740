"""Imports run one way (docs/architecture.md): ir <- kernels_src, passes <- codegen <- api. Every import in every
module, including lazy ones inside functions and `importlib.import_module("attnc...")`, is read from the source;
`attnc.errors` is the one leaf every layer may import."""
import ast
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = {"ir": "attnc.ir", "kernels_src": "attnc.kernels_src", "passes": "attnc.passes", "codegen": "attnc.codegen",
           "api": "attnc"}
# what each layer may import from attnc (besides itself and attnc.errors)
ALLOWED = {"ir": set(), "kernels_src": {"ir"}, "passes": {"ir"}, "codegen": {"ir", "passes"},
           "api": {"ir", "kernels_src", "passes", "codegen"}}
LEAVES = {"attnc.errors"}


def layer_of(module: str) -> str | None:
    """The folder a dotted attnc module lives in (None: not attnc, or a leaf)."""
    if module != "attnc" and not module.startswith("attnc."):
        return None
    if any(module == leaf or module.startswith(leaf + ".") for leaf in LEAVES):
        return None
    for folder, pkg in FOLDERS.items():
        if folder != "api" and (module == pkg or module.startswith(pkg + ".")):
            return folder
    return "api"


def imports_of(path: str, package: str) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in the file at `path`, module of package `package`."""
    tree = ast.parse(open(path).read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out.append((node.lineno, mod))
            # `from attnc import cli` imports the module attnc.cli
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names if mod == "attnc"]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value))
    return out


def modules():
    for folder, pkg in FOLDERS.items():
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in sorted(files):
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), os.path.join(ROOT, folder))
                    parts = rel[:-3].split(os.sep)
                    package = ".".join([pkg, *parts[:-1]]) if parts[-1] != "__init__" else ".".join([pkg, *parts[:-1]])
                    yield folder, os.path.join(dirpath, f), package


def violations() -> list[str]:
    out = []
    for folder, path, package in modules():
        for line, mod in imports_of(path, package):
            target = layer_of(mod)
            if target is None or target == folder:
                continue
            if mod == "attnc" and folder != "api":
                out.append(f"{os.path.relpath(path, ROOT)}:{line}: imports the package facade `attnc`")
            elif target not in ALLOWED[folder]:
                out.append(f"{os.path.relpath(path, ROOT)}:{line}: {folder}/ imports {mod} ({target}/)")
    return out


def test_imports_run_one_way():
    assert violations() == []


def test_the_check_sees_a_backward_import(tmp_path, monkeypatch):
    """A planted passes -> codegen import (lazy, inside a function) is reported."""
    root = tmp_path
    for folder in FOLDERS:
        (root / folder).mkdir()
    (root / "passes" / "bad.py").write_text("def f():\n    from attnc.codegen.pto.emit import x\n")
    (root / "codegen" / "good.py").write_text("from attnc.passes import y\nfrom attnc.errors import AttncError\n")
    (root / "ir" / "bad2.py").write_text("import importlib\nimportlib.import_module('attnc.cli')\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(root))
    found = violations()
    assert len(found) == 2
    assert any("passes/bad.py:2" in v and "attnc.codegen.pto.emit" in v for v in found)
    assert any("ir/bad2.py:2" in v and "attnc.cli" in v for v in found)


@pytest.mark.parametrize("module, layer", [("attnc.cli", "api"), ("attnc.codegen.pto.emit", "codegen"),
                                           ("attnc.errors", None), ("numpy", None), ("attnc.passes", "passes")])
def test_layer_of(module, layer):
    assert layer_of(module) == layer
