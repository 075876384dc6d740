"""Readable IR text for people: SSA names from the DSL (parameter names for the function's arguments, the
assigned variable of the DSL line for op results), DSL locations as real MLIR locations only on request
(`debuginfo`: `loc("kernels_src/x.py":12:1)`), xDSL's custom forms (or every op generic with `generic`).

Inside attnc an op's DSL location is its `loc` string attribute (passes copy it to the ops they create); this
module moves it into the op's MLIR location when printing, and `parse_ir` moves it back, so both forms parse
back to the same module and print again byte for byte. `attnc.ir.print_ir` (the attribute form) is unchanged."""
from __future__ import annotations

import io
import linecache
import os
import re

from xdsl.dialects.builtin import FileLineColLoc, IntAttr, ModuleOp, StringAttr
from xdsl.printer import Printer

from .common import LOC_ATTR

_PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ASSIGNED = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?::[^=]+)?=(?!=)")
_LOC = re.compile(r"^(.*):(\d+)$")


_SOURCE_DIRS = ("kernels_src", "ir", "passes", "codegen", "api")
_sources: dict[str, str] | None = None


def dsl_sources() -> dict[str, str]:
    """attnc's own Python files by the relative path the DSL writes into a location (`kernels_src/x.py`): the only
    files a location may name for a value name. The table is made from the package's folders, never from IR text:
    a location in an input (`loc("/dev/zero":1:1)`, a FIFO, a credentials file) is a key into it, never a path
    that is opened."""
    global _sources
    if _sources is None:
        found = {}
        for top in _SOURCE_DIRS:
            for dirpath, dirs, files in os.walk(os.path.join(_PKG_ROOT, top)):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for f in files:
                    if f.endswith(".py"):
                        path = os.path.join(dirpath, f)
                        found[os.path.relpath(path, _PKG_ROOT)] = path
        _sources = found
    return _sources


def _dsl_line(loc: str) -> str:
    m = _LOC.match(loc)
    if not m:
        return ""
    path = dsl_sources().get(m.group(1))
    return linecache.getline(path, int(m.group(2))) if path is not None else ""


def variable_name(loc: str) -> str | None:
    """The variable the DSL line at `loc` assigns (`q = rope(...)` -> q), without a `_N` suffix."""
    m = _ASSIGNED.match(_dsl_line(loc))
    if not m:
        return None
    name = re.sub(r"_\d+$", "", m.group(1)).lstrip("_")
    return name or None


def location_of(loc: str):
    m = _LOC.match(loc)
    if not m:
        return None
    return FileLineColLoc(StringAttr(m.group(1)), IntAttr(int(m.group(2))), IntAttr(1))


def loc_text(location) -> str | None:
    """`file:line` of a FileLineColLoc (what the `loc` attribute holds), else None."""
    if isinstance(location, FileLineColLoc):
        return f"{location.filename.data}:{location.line.data}"
    return None


def render_ir(module: ModuleOp, *, debuginfo: bool = False, generic: bool = False) -> str:
    from xdsl.dialects import func

    module = module.clone()
    for op in module.walk():
        if isinstance(op, func.FuncOp) and "arg_names" in op.attributes:
            for arg, name in zip(op.body.block.args, op.attributes["arg_names"].data):
                if arg.name_hint is None and re.fullmatch(r"[A-Za-z_]\w*", name.data):
                    arg.name_hint = name.data
        loc = op.attributes.get(LOC_ATTR)
        if loc is None:
            continue
        if len(op.results) == 1 and op.results[0].name_hint is None:
            name = variable_name(loc.data)
            if name:
                op.results[0].name_hint = name
        location = location_of(loc.data)
        if location is not None:
            op.location = location
            del op.attributes[LOC_ATTR]
        elif not debuginfo:
            del op.attributes[LOC_ATTR]
    out = io.StringIO()
    Printer(stream=out, print_generic_format=generic, print_debuginfo=debuginfo).print_op(module)
    return out.getvalue() + "\n"


def restore_loc_attributes(module: ModuleOp) -> None:
    """After parsing text printed with debuginfo: each op's `file:line` location back into its `loc` attribute."""
    for op in module.walk():
        if LOC_ATTR not in op.attributes:
            text = loc_text(op.location)
            if text is not None:
                op.attributes[LOC_ATTR] = StringAttr(text)
