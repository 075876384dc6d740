"""attnc IR: the `attn` (tensor-level) and `tile` (tile-level) MLIR dialects on xDSL, and their interpreter."""
from __future__ import annotations

import io

from xdsl.context import Context
from xdsl.dialects.arith import Arith
from xdsl.dialects.builtin import Builtin, ModuleOp
from xdsl.dialects.func import Func, FuncOp
from xdsl.dialects.scf import Scf
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.utils.exceptions import ParseError, VerifyException

from .tensor_dialect import Attn
from .tile_dialect import Tile

from attnc.errors import AttncError


class IRError(AttncError):
    """Malformed or invalid IR; the message is one line that starts with its location."""


def make_context() -> Context:
    ctx = Context()
    for dialect in (Builtin, Func, Arith, Scf, Attn, Tile):
        ctx.load_dialect(dialect)
    return ctx


def entry_function(module: ModuleOp) -> FuncOp:
    """The module's one func.func (here, not in the interpreter, so that compiling loads no torch)."""
    funcs = [op for op in module.ops if isinstance(op, FuncOp)]
    if len(funcs) != 1:
        raise IRError(f"expected exactly one func.func in the module, found {len(funcs)}")
    return funcs[0]


def print_ir(module: ModuleOp) -> str:
    out = io.StringIO()
    Printer(stream=out).print_op(module)
    return out.getvalue() + "\n"


def _first_line(e: Exception) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def parse_ir(text: str, source_name: str = "<input>") -> ModuleOp:
    """Parse and verify MLIR text; errors become one-line IRError messages with file:line:col. Names, types and
    def-before-use are checked too (ir/names.py), so nothing later sees an unchecked string from the file."""
    from .names import bad_string_literal, check_module, line_col

    bad = bad_string_literal(text)
    if bad is not None:  # before xDSL's lexer, which backtracks exponentially on it
        line, col = line_col(text, bad)
        raise IRError(f"{source_name}:{line}:{col}: unterminated string literal or invalid escape "
                      "(valid: \\n \\t \\\\ \\\" \\XX)")
    try:
        module = Parser(make_context(), text, source_name).parse_module()
    except ParseError as e:
        loc = e.span.get_location()
        raise IRError(f"{source_name}:{loc.line}:{loc.col}: {str(e.msg).splitlines()[0]}") from None
    except RecursionError:
        raise IRError(f"{source_name}: nested too deeply") from None
    except Exception as e:  # unknown dialect/op and similar
        raise IRError(f"{source_name}: {_first_line(e)}") from None
    from .printing import restore_loc_attributes

    restore_loc_attributes(module)  # text printed with --print-debuginfo: DSL locations back into `loc`
    try:
        check_module(module, source_name)
    except RecursionError:
        raise IRError(f"{source_name}: nested too deeply") from None
    verify_ir(module, source_name)
    return module


def verify_ir(module: ModuleOp, source_name: str = "<ir>") -> None:
    try:
        module.verify()
    except VerifyException as e:
        raise IRError(f"{source_name}: {_first_line(e)}") from None
    except Exception as e:  # a verifier tripping over a malformed attribute is still invalid IR
        raise IRError(f"{source_name}: invalid IR ({type(e).__name__}: {_first_line(e)})") from None
