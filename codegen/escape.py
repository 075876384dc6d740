"""The one way a string from the IR reaches generated code or a file name.

`code_text` renders any string as printable ASCII with no line break (Python's `ascii()` escapes: `\\n`, `\\x1b`,
`\\u2028`, ...), so it is inert inside a comment and, quoted by `py_str`, a valid string literal. Names that become
identifiers or file names were validated where the IR was read (`attnc.ir.names`); `identifier` and `file_stem`
check again at the point of use and refuse rather than escape, because an escaped name would be a different
name."""
from __future__ import annotations

import re

from attnc.errors import AttncError
from attnc.ir.names import name_problem, shown

# names the generated module itself defines or imports; a parameter must not shadow them
RESERVED = frozenset({"pypto", "kernel", "json", "os", "ARG_NAMES", "OUTPUT_NAMES", "SCRATCH_NAMES",
                      "ARG_DTYPES", "ARG_SHAPES", "RESULT_SHAPES",
                      "_RUN_MODE", "_VERIFY", "float", "int", "list", "range"})
# emitter temporaries: a letter prefix and a counter (t12, mm3, r1 ...)
_TEMPORARY = re.compile(r"[a-z]{1,2}[0-9]+")


class UnsafeName(AttncError):
    """A name from the IR cannot be used as an identifier or a file name; the message names it."""


def code_text(s: str) -> str:
    """`s` as printable ASCII without line breaks: safe after `#` and inside a quoted literal."""
    return ascii(str(s))[1:-1]


def py_str(s: str) -> str:
    """A Python string literal whose value is `s`."""
    return ascii(str(s))


def comment(s: str) -> str:
    """A trailing comment holding `s`."""
    return f"  # {code_text(s)}"


def identifier(name: str, what: str = "name") -> str:
    """`name` unchanged if it is a safe Python identifier for generated code, else UnsafeName."""
    problem = name_problem(name)
    if problem is None and (name in RESERVED or _TEMPORARY.fullmatch(name)):
        problem = "reserved in generated code (module names and emitter temporaries like t1, mm2)"
    if problem:
        raise UnsafeName(f"{what} {shown(name)} is {problem}")
    return name


def file_stem(name: str) -> str:
    """`name` unchanged if it can be a file name inside an output folder (no separator, no dot-dot), else
    UnsafeName."""
    problem = name_problem(name)
    if problem:
        raise UnsafeName(f"file name {shown(name)} is {problem}")
    return name
