"""Checks on IR read from a file, before anything else sees it.

Names that become Python identifiers or file names (the function symbol, `arg_names`, `result_names`) must be
plain ASCII identifiers; element types and shapes must be ones the interpreter and emitters handle; every value
must be defined before it is used; string literals must be well formed (xDSL 0.74's string lexer backtracks
exponentially on an unterminated literal, so the text is scanned here first, in linear time)."""
from __future__ import annotations

import keyword
import math
import re

from xdsl.dialects import func
from xdsl.dialects.builtin import ArrayAttr, IntegerAttr, ModuleOp, StringAttr, TensorType
from xdsl.ir import Attribute, Operation

from .types import DTYPES

# ASCII only (no Unicode normalisation surprises), at most 64 characters
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_RANK = 8
MAX_DIM = 2**31 - 1
MAX_ELEMENTS = 2**40  # per tensor type; what a command may allocate is checked separately (memory estimate)


def is_safe_name(name: object) -> bool:
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None and not keyword.iskeyword(name)


def name_problem(name: str) -> str | None:
    """Why `name` cannot be an identifier / file name, or None."""
    if not isinstance(name, str):
        return "not a string"
    if keyword.iskeyword(name):
        return "a Python keyword"
    if NAME_PATTERN.fullmatch(name) is None:
        return "not an ASCII identifier of at most 64 characters ([A-Za-z_][A-Za-z0-9_]*)"
    return None


def shown(s: str, limit: int = 60) -> str:
    """A string as it may appear in a one-line diagnostic: quoted, control and non-ASCII characters escaped."""
    text = ascii(s)
    return text if len(text) <= limit else text[:limit] + "...'"


# -------------------------------------------------------------------------------------------------- strings

# one MLIR string literal, as xDSL 0.74 accepts it, with possessive quantifiers (linear time)
_STRING_LITERAL = re.compile(r'"(?:[^"\\\n\v\f]++|\\(?:["nt\\]|[0-9A-Fa-f]{2}))*+"')
_COMMENT_OR_QUOTE = re.compile(r'//[^\n]*|"')


def bad_string_literal(text: str) -> int | None:
    """Offset of the first string literal that is not terminated on its line or has an invalid escape."""
    pos = 0
    while True:
        m = _COMMENT_OR_QUOTE.search(text, pos)
        if m is None:
            return None
        if m.group() != '"':
            pos = m.end()
            continue
        lit = _STRING_LITERAL.match(text, m.start())
        if lit is None:
            return m.start()
        pos = lit.end()


def line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


# -------------------------------------------------------------------------------------------------- module


def _type_problem(t: Attribute) -> str | None:
    if not isinstance(t, TensorType):
        return None
    if t.get_element_type() not in DTYPES.values():
        return f"element type {t.get_element_type()} is not supported (supported: {', '.join(DTYPES)})"
    shape = t.get_shape()
    if len(shape) > MAX_RANK:
        return f"rank {len(shape)} exceeds {MAX_RANK}"
    if any(d < 0 for d in shape):
        return f"dynamic or negative dims are not supported: {t}"
    if any(d > MAX_DIM for d in shape) or math.prod(shape) > MAX_ELEMENTS:
        return f"tensor of {math.prod(shape)} elements is too large"
    return None


def _names(fn: func.FuncOp, attr: str, n: int, prefix: str, where: str) -> list[str]:
    a = fn.attributes.get(attr)
    if a is None:
        return [f"{prefix}{i}" for i in range(n)]
    if not isinstance(a, ArrayAttr) or not all(isinstance(x, StringAttr) for x in a.data):
        raise _error(where, f"{attr} must be an array of strings")
    names = [x.data for x in a.data]
    if len(names) != n:
        raise _error(where, f"{attr} has {len(names)} names for {n} {'arguments' if prefix == 'arg' else 'results'}")
    return names


def _error(where: str, msg: str):
    from . import IRError

    return IRError(f"{where}: {msg}")


def check_module(module: ModuleOp, where: str) -> None:
    """Names, types and def-before-use of a module read from `where`. Missing `arg_names`/`result_names` become
    arg0.../out0... on the function, so every later stage sees validated names."""
    if len(module.body.blocks) != 1:
        raise _error(where, f"builtin.module must hold exactly one block, found {len(module.body.blocks)}")
    funcs = [op for op in module.ops if isinstance(op, func.FuncOp)]
    if len(funcs) != 1:
        raise _error(where, f"expected exactly one func.func in the module, found {len(funcs)}")
    fn = funcs[0]
    problem = name_problem(fn.sym_name.data)
    if problem:
        raise _error(where, f"function name {shown(fn.sym_name.data)} is {problem}")
    args = _names(fn, "arg_names", len(fn.function_type.inputs.data), "arg", where)
    outs = _names(fn, "result_names", len(fn.function_type.outputs.data), "out", where)
    for kind, names in (("arg_names", args), ("result_names", outs)):
        for name in names:
            problem = name_problem(name)
            if problem:
                raise _error(where, f"{kind} entry {shown(name)} is {problem}")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise _error(where, f"{kind} entry '{dup[0]}' appears twice")
    fn.attributes["arg_names"] = ArrayAttr([StringAttr(n) for n in args])
    fn.attributes["result_names"] = ArrayAttr([StringAttr(n) for n in outs])
    dims = fn.attributes.get("token_dims")  # [batch, seq], read by parallelize-tokens
    if dims is not None and not (isinstance(dims, ArrayAttr) and len(dims.data) == 2
                                 and all(isinstance(d, IntegerAttr) and 1 <= d.value.data <= MAX_DIM
                                         for d in dims.data)):
        raise _error(where, f"token_dims must be [batch, seq], two positive integers, got {shown(str(dims))}")
    for t in (*fn.function_type.inputs.data, *fn.function_type.outputs.data):
        problem = _type_problem(t)
        if problem:
            raise _error(where, f"@{fn.sym_name.data}: {problem}")
    _check_ops(module, where)


# ops of other loaded dialects that attnc's interpreter, passes and emitter handle; anything else (func.call,
# scf.while, scf.execute_region, arith.divsi, func declarations ...) is refused where the IR is read
_OTHER_OPS = frozenset({"builtin.module", "func.func", "func.return", "scf.for", "scf.if", "scf.yield",
                        "arith.constant", "arith.addi", "arith.subi", "arith.muli", "arith.minsi", "arith.maxsi",
                        "arith.ceildivsi", "arith.cmpi"})


_HOST_CONSTANT = re.compile(r"hc[0-9]{1,6}")


def _check_ops(module: ModuleOp, where: str) -> None:
    from .common import op_location

    for op in module.walk():
        if op.name not in _OTHER_OPS and not op.name.startswith(("attn.", "tile.")):
            raise _error(where, f"{op_location(op)}: '{op.name}' is not an op of attnc's IR (attn.*, tile.*, "
                                f"{', '.join(sorted(_OTHER_OPS))})")
        host = op.attributes.get("host_constant")  # a kernel parameter's name in the emitted program
        if host is not None and not (isinstance(host, StringAttr) and _HOST_CONSTANT.fullmatch(host.data)):
            raise _error(where, f"{op_location(op)}: host_constant {shown(str(host))} is not a name hcN "
                                "(pypto-legalize names the host-computed constants)")
        if isinstance(op, func.FuncOp) and (len(op.regions) != 1 or not op.regions[0].blocks):
            raise _error(where, f"@{op.sym_name.data} is a declaration without a body")
        if isinstance(op, func.FuncOp) and len(op.regions[0].blocks) != 1:
            raise _error(where, f"@{op.sym_name.data}: a body of {len(op.regions[0].blocks)} blocks (one is "
                                "supported)")
    _check_scoped(module, set(), where)
    for op in module.walk():
        for v in (*op.results, *op.operands):
            problem = _type_problem(v.type)
            if problem:
                raise _error(where, f"{op_location(op)}: '{op.name}': {problem}")


def _check_scoped(op: Operation, visible: set, where: str) -> None:
    """Every operand is defined earlier in its block or in an enclosing one (xDSL 0.74's verifier lets a use
    before the definition through)."""
    from .common import op_location

    for region in op.regions:
        for block in region.blocks:
            scope = visible | set(block.args)
            for inner in block.ops:
                if any(v not in scope for v in inner.operands):
                    raise _error(where, f"{op_location(inner)}: '{inner.name}': an operand is used before its "
                                        "definition or outside its region")
                _check_scoped(inner, scope, where)
                scope.update(inner.results)
