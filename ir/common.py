"""Machinery shared by the tensor-level (`attn`) and tile-level (`tile`) dialects.

Both dialects have value semantics on builtin ranked tensors. Op families that exist at both levels
(elementwise, cast, compare, select, matmul, layout ops ...) are generated here once per dialect so that
verification and interpretation are one mechanism for both.
"""
from __future__ import annotations

from collections.abc import Sequence

from xdsl.dialects.builtin import (
    ArrayAttr,
    BoolAttr,
    FloatAttr,
    IntegerAttr,
    StringAttr,
    TensorType,
    i1,
    i64,
)
from xdsl.ir import Attribute, Operation, SSAValue
from xdsl.irdl import (
    IRDLOperation,
    irdl_op_definition,
    operand_def,
    opt_prop_def,
    opt_operand_def,
    prop_def,
    result_def,
    var_operand_def,
)
from xdsl.utils.exceptions import VerifyException

from .types import FLOAT_DTYPES, describe, dtype_of, shape_of

LOC_ATTR = "loc"


def op_location(op: Operation) -> str:
    loc = op.attributes.get(LOC_ATTR)
    return loc.data if isinstance(loc, StringAttr) else "<unknown>"


class AttncOp(IRDLOperation):
    """Base of every attnc op: diagnostics carry the DSL source location."""

    def fail(self, message: str):
        raise VerifyException(f"{op_location(self)}: '{self.name}': {message}")

    def expect(self, cond: bool, message: str):
        if not cond:
            self.fail(message)

    # helpers for subclasses
    # the message is built only on a failure: these run for most ops at every verify (after each pass)
    def same_shape(self, *values: SSAValue, what: str = "operands"):
        if len({shape_of(v.type) for v in values}) != 1:
            self.fail(f"{what} must have one shape, got " + ", ".join(describe(v.type) for v in values))

    def same_dtype(self, *values: SSAValue, what: str = "operands"):
        if len({dtype_of(v.type) for v in values}) != 1:
            self.fail(f"{what} must have one dtype, got " + ", ".join(describe(v.type) for v in values))


def int_array(values: Sequence[int]) -> ArrayAttr:
    return ArrayAttr([IntegerAttr(int(v), i64) for v in values])


def ints_of(attr: ArrayAttr) -> tuple[int, ...]:
    if not all(isinstance(a, IntegerAttr) for a in attr.data):  # IR from a file may hold anything
        raise VerifyException(f"expected an array of integers, got {attr}")
    return tuple(a.value.data for a in attr.data)


def float_attr(v: float) -> FloatAttr:
    from xdsl.dialects.builtin import f64

    return FloatAttr(float(v), f64)


def str_attr(s: str) -> StringAttr:
    return StringAttr(s)


def bool_attr(b: bool) -> BoolAttr:
    return BoolAttr.from_bool(bool(b))


def _make(name: str, body: dict, base=AttncOp) -> type[IRDLOperation]:
    from xdsl.irdl import traits_def
    from xdsl.traits import Pure

    body.setdefault("traits", traits_def(Pure()))  # value semantics: CSE/DCE may fold and drop them
    if name.startswith("tile."):  # the facts pypto-legalize states on tile ops have a fixed form
        body["verify_"] = _with_fact_checks(body.get("verify_"))
    cls_name = "".join(p.capitalize() for p in name.replace(".", "_").split("_")) + "Op"
    if "assembly_format" not in body and not any(k for k, v in body.items() if _is_region_def(v)):
        # readable custom form, `attn.cmp %a, %b {predicate = "ge"} : (tensor<..>, tensor<..>) -> tensor<..>`
        # (properties printed with the attributes), for every op without regions; an op whose operands this
        # form cannot delimit keeps the generic form
        from xdsl.irdl import ParsePropInAttrDict

        for fmt in _CUSTOM_FORMATS:
            try:
                options = (*body.get("irdl_options", ()), ParsePropInAttrDict())
                cls = type(cls_name, (base,), {"name": name, **body, "assembly_format": fmt,
                                               "irdl_options": options})
                cls.__module__ = __name__
                return irdl_op_definition(cls)
            except Exception:  # noqa: BLE001, S112 - xDSL refuses a format that does not fit the op's operands
                continue
    cls = type(cls_name, (base,), {"name": name, **body})
    cls.__module__ = __name__
    return irdl_op_definition(cls)


def _with_fact_checks(verify):
    def verify_(self):
        if verify is not None:
            verify(self)
        pypto_facts_verify(self)

    return verify_


_FACT_FLAGS = ("splat", "packed", "clone", "inplace", "prefix", "scalar_ids", "valid_tile")


def pypto_facts_verify(op) -> None:
    """The form of pypto-legalize's facts on a tile op (codegen/pypto/legalize.py): bool flags on the ops they
    describe; `buffer` on a tile.full (`output` = its result index); `padded` one bool per concat input;
    `scalar_id` the steps of a scatter's id, `rows_per_trip` a divisor of its rows."""
    attrs = op.attributes
    for name in _FACT_FLAGS:
        if name in attrs:
            op.expect(isinstance(attrs[name], IntegerAttr) and attrs[name].type == i1, f"{name} must be a bool")
    kind = op.name.split(".", 1)[1]
    if "buffer" in attrs:
        buffer = attrs["buffer"]
        op.expect(kind == "full" and isinstance(buffer, StringAttr) and buffer.data in ("output", "scratch", "local"),
                  "buffer must be \"output\", \"scratch\" or \"local\", on a tile.full")
        op.expect((buffer.data == "output") == isinstance(attrs.get("output"), IntegerAttr),
                  "an output buffer names its result index (output = i), a scratch one none")
    if "splat" in attrs:
        op.expect(kind == "full", "splat is a tile.full fact")
    if "valid_tile" in attrs:
        op.expect(kind == "assemble", "valid_tile is a tile.assemble fact")
    if "pieces" in attrs:  # a packed concat's local buffer: [rows, row offset, zero-padded] per piece
        pieces = attrs["pieces"]
        op.expect(kind == "full" and attrs.get("buffer") == StringAttr("local") and isinstance(pieces, ArrayAttr)
                  and all(isinstance(p, ArrayAttr) and len(p.data) == 3
                          and all(isinstance(x, IntegerAttr) for x in p.data) for p in pieces.data),
                  "pieces must list [rows, row offset, zero-padded] per piece, on a local tile.full buffer")
    for name in ("padded",):
        if name in attrs:
            per = attrs[name]
            op.expect(kind == "concat" and isinstance(per, ArrayAttr) and len(per.data) == len(op.operands),
                      f"{name} must list one bool per concat input")
    if "inplace" in attrs:
        op.expect(kind == "reshape", "inplace is a tile.reshape fact")
    if "vec_tile" in attrs:  # the per-op vector tile (codegen/pypto/tiles.py): one positive dim per result dim
        tile, res = attrs["vec_tile"], op.results[0].type if op.results else None
        op.expect(isinstance(tile, ArrayAttr) and all(isinstance(x, IntegerAttr) and x.value.data > 0
                                                      for x in tile.data) and hasattr(res, "get_shape")
                  and len(tile.data) in (len(res.get_shape()), len(getattr(op.operands[0].type, "get_shape", tuple)())),
                  "vec_tile must list one positive tile dim per dim of the tensor it tiles")
    if "one_trip" in attrs:
        op.expect(kind == "parallel" and isinstance(attrs["one_trip"], IntegerAttr),
                  "one_trip must be an integer (the one iteration's index), on a loop")
    if "body_l1_reuse" in attrs:
        op.expect(kind == "parallel" and isinstance(attrs["body_l1_reuse"], IntegerAttr),
                  "body_l1_reuse must be an integer (its body's cube_l1_reuse_setting), on a loop")
    if "body_nbuffer" in attrs:
        op.expect(kind == "parallel" and isinstance(attrs["body_nbuffer"], IntegerAttr),
                  "body_nbuffer must be an integer (its body's cube_nbuffer_setting), on a loop")
    if "nbuffer" in attrs:  # tile-matmul: the N tiles the target's n-buffering runs as one task (1: each its own)
        op.expect(kind in ("matmul", "matmul_acc") and isinstance(attrs["nbuffer"], IntegerAttr)
                  and attrs["nbuffer"].value.data >= 1, "nbuffer must be a positive integer, on a matmul")
    if "m_tile" in attrs:  # pypto-legalize: a matmul's cube M tile, a positive multiple of 16 (the fractal)
        m = attrs["m_tile"]
        op.expect(kind in ("matmul", "matmul_acc") and isinstance(m, IntegerAttr) and m.value.data >= 16
                  and m.value.data % 16 == 0, "m_tile must be a positive multiple of 16, on a matmul")
    if "sort_rows" in attrs:  # pypto-legalize: the rows of a top-k's vector tile
        op.expect(kind == "topk_pairs" and isinstance(attrs["sort_rows"], IntegerAttr)
                  and attrs["sort_rows"].value.data >= 1, "sort_rows must be a positive integer, on a tile.topk_pairs")
    if "rows_per_trip" in attrs:  # rows a scatter's loop writes per iteration: a divisor of its rows
        per = attrs["rows_per_trip"]
        op.expect(kind == "scatter_rows" and isinstance(per, IntegerAttr) and per.value.data >= 1
                  and shape_of(op.rows.type)[0] % per.value.data == 0,
                  "rows_per_trip must be a positive integer dividing the rows, on a tile.scatter_rows")
    if "rows_together" in attrs or "together_rows" in attrs:  # a trip's groups of rows written as one block
        n = attrs.get("together_rows")
        op.expect(kind == "scatter_rows" and isinstance(attrs.get("rows_together"), StringAttr)
                  and isinstance(n, IntegerAttr) and "rows_per_trip" in attrs and n.value.data > 1
                  and attrs["rows_per_trip"].value.data % n.value.data == 0,
                  "rows_together must be a condition string and together_rows a divisor > 1 of rows_per_trip, "
                  "on a tile.scatter_rows")
    if "scalar_id" in attrs:
        steps = attrs["scalar_id"]
        op.expect(kind == "scatter_rows" and isinstance(steps, ArrayAttr) and len(steps.data) >= 1
                  and all(isinstance(s, StringAttr) for s in steps.data),
                  "scalar_id must list the id's steps as strings, on a tile.scatter_rows")


_CUSTOM_FORMATS = ("operands attr-dict `:` functional-type(operands, results)",  # ops with operands
                   "attr-dict `:` type(results)")  # ops without (iota, full)


def _is_region_def(value) -> bool:
    from xdsl.irdl import RegionDef

    return isinstance(value, RegionDef)


# --------------------------------------------------------------------------------------------------
# Op families. Each family is a verifier shared by every member; the interpreter dispatches on the
# member's mnemonic suffix.

BINARY = ("add", "sub", "mul", "div", "max", "min", "rem", "floordiv", "and", "or")
UNARY = ("neg", "exp", "sqrt", "rsqrt", "recip", "relu", "abs")
CMP_PREDICATES = ("lt", "le", "gt", "ge", "eq", "ne")
ROUNDING_MODES = ("rint", "round", "trunc")
_FLOAT_ONLY_UNARY = ("exp", "sqrt", "rsqrt", "recip")


def _binary_verify(self):
    self.same_shape(self.lhs, self.rhs, self.result)
    self.same_dtype(self.lhs, self.rhs, self.result)
    kind = self.name.split(".")[1]
    dt = dtype_of(self.lhs.type)
    if kind in ("and", "or"):
        self.expect(dt == "i1", f"operands must be i1, got {dt}")
    if kind in ("rem", "floordiv"):
        self.expect(dt in ("i32", "i8"), f"operands must be integers, got {dt}")


def _unary_verify(self):
    self.same_shape(self.input, self.result)
    self.same_dtype(self.input, self.result)
    kind = self.name.split(".")[1]
    if kind in _FLOAT_ONLY_UNARY:
        self.expect(dtype_of(self.input.type) in FLOAT_DTYPES,
                    f"operand must be a float tensor, got {describe(self.input.type)}")


def _cmp_verify(self):
    self.same_shape(self.lhs, self.rhs, self.result)
    self.same_dtype(self.lhs, self.rhs)
    self.expect(dtype_of(self.result.type) == "i1", "result must be i1")
    self.expect(self.predicate.data in CMP_PREDICATES, f"unknown predicate '{self.predicate.data}'")


def _select_verify(self):
    self.same_shape(self.cond, self.on_true, self.on_false, self.result)
    self.same_dtype(self.on_true, self.on_false, self.result)
    self.expect(dtype_of(self.cond.type) == "i1", "condition must be i1")


def _cast_verify(self):
    self.same_shape(self.input, self.result)
    self.expect(self.rounding.data in ROUNDING_MODES,
                f"rounding must be one of {', '.join(ROUNDING_MODES)}, got '{self.rounding.data}'")
    # a float -> i8 cast (quantisation) states its overflow behaviour: saturation to [-128, 127] is the one mode
    # attnc implements (interpreter: clamp; pypto: SaturationMode.ON), so the attribute must say so
    if dtype_of(self.result.type) == "i8" and dtype_of(self.input.type) in FLOAT_DTYPES:
        sat = self.saturate
        self.expect(sat is not None and sat.value.data, "a float -> i8 cast must state saturate = true")


def _matmul_shapes(self, a, b, transpose_b: bool) -> tuple[int, ...]:
    sa, sb = shape_of(a.type), shape_of(b.type)
    self.expect(len(sa) >= 2 and len(sb) >= 2, f"operands must have rank >= 2, got {describe(a.type)}, {describe(b.type)}")
    k_b, n = (sb[-1], sb[-2]) if transpose_b else (sb[-2], sb[-1])
    self.expect(sa[-1] == k_b, f"contraction mismatch: {describe(a.type)} x {describe(b.type)}"
                + (" (transpose_b)" if transpose_b else ""))
    if len(sb) > 2:
        self.expect(sa[:-2] == sb[:-2], f"batch dims differ: {describe(a.type)} x {describe(b.type)}")
    self.same_dtype(a, b)
    return (*sa[:-1], n)


def _matmul_verify(self):
    out = _matmul_shapes(self, self.lhs, self.rhs, self.transpose_b.value.data)
    self.expect(shape_of(self.result.type) == out, f"result must be {list(out)}, got {describe(self.result.type)}")


def _broadcast_verify(self):
    si, so = shape_of(self.input.type), shape_of(self.result.type)
    self.same_dtype(self.input, self.result)
    self.expect(len(si) == len(so) and all(a in (1, b) for a, b in zip(si, so)),
                f"cannot broadcast {describe(self.input.type)} to {describe(self.result.type)}")


def _reshape_verify(self):
    import math

    self.same_dtype(self.input, self.result)
    self.expect(math.prod(shape_of(self.input.type)) == math.prod(shape_of(self.result.type)),
                f"cannot reshape {describe(self.input.type)} to {describe(self.result.type)}")


def _transpose_verify(self):
    perm = ints_of(self.perm)
    si = shape_of(self.input.type)
    self.expect(sorted(perm) == list(range(len(si))), f"perm {list(perm)} is not a permutation of rank {len(si)}")
    self.expect(shape_of(self.result.type) == tuple(si[p] for p in perm), "result shape does not match perm")
    self.same_dtype(self.input, self.result)


def _concat_verify(self):
    axis = self.axis.value.data
    shapes = [shape_of(v.type) for v in self.inputs]
    self.expect(len(shapes) >= 1, "needs at least one input")
    self.same_dtype(*self.inputs, self.result)
    rank = len(shapes[0])
    self.expect(0 <= axis < rank, f"axis {axis} out of range for rank {rank}")
    for s in shapes:
        self.expect(len(s) == rank and all(a == b for i, (a, b) in enumerate(zip(s, shapes[0])) if i != axis),
                    "inputs differ outside the concat axis: " + ", ".join(describe(v.type) for v in self.inputs))
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    self.expect(shape_of(self.result.type) == tuple(out), f"result must be {out}")


def _topk_verify(self):
    ss, sv, so = shape_of(self.scores.type), shape_of(self.valid.type), shape_of(self.result.type)
    self.expect(ss == sv, "scores and valid must have one shape")
    self.expect(so == (*ss[:-1], self.k.value.data), f"result must be [..., {self.k.value.data}]")
    self.expect(dtype_of(self.result.type) == "i32", "result must be i32")


def _gather_rows_verify(self):
    st, si, so = shape_of(self.table.type), shape_of(self.indices.type), shape_of(self.result.type)
    self.expect(dtype_of(self.indices.type) == "i32", "indices must be i32")
    self.same_dtype(self.table, self.result)
    self.expect(so == (*si, *st[1:]), f"result must be {[*si, *st[1:]]}, got {describe(self.result.type)}")


def _scatter_rows_verify(self):
    st, sr, si = shape_of(self.table.type), shape_of(self.rows.type), shape_of(self.ids.type)
    row = sr[1:]
    self.expect(len(sr) >= 1 and len(st) > len(row) and st[len(st) - len(row):] == row,
                f"rows {describe(self.rows.type)} must be [M, ...] rows ending the table {describe(self.table.type)}")
    self.expect(dtype_of(self.ids.type) == "i32" and si == sr[:1], f"ids must be i32[{sr[0]}], got {describe(self.ids.type)}")
    self.same_dtype(self.table, self.rows, self.result)
    self.expect(shape_of(self.result.type) == st, "result must have the table's type")
    flag = self.attributes.get("in_place")
    self.expect(flag is None or (isinstance(flag, IntegerAttr) and flag.type == i1), "in_place must be a bool")


def _iota_verify(self):
    so = shape_of(self.result.type)
    self.expect(0 <= self.axis.value.data < len(so), "axis out of range")
    self.expect(dtype_of(self.result.type) == "i32", "result must be i32")


def _no_verify(self):
    pass


_INT_RANGE = {"i32": (-2**31, 2**31 - 1), "i8": (-128, 127), "i1": (0, 1)}


def _full_verify(self):
    import math

    dt, value = dtype_of(self.result.type), self.value.value.data
    if dt in _INT_RANGE:
        lo, hi = _INT_RANGE[dt]
        self.expect(math.isfinite(value) and lo <= value <= hi and value == int(value),
                    f"value {value} is not a {dt} value")


def define_shared_ops(prefix: str) -> list[type[IRDLOperation]]:
    """Op families present in both dialects."""
    ops = []
    for kind in BINARY:
        ops.append(_make(f"{prefix}.{kind}", dict(lhs=operand_def(TensorType), rhs=operand_def(TensorType),
                                                  result=result_def(TensorType), verify_=_binary_verify)))
    for kind in UNARY:
        ops.append(_make(f"{prefix}.{kind}", dict(input=operand_def(TensorType), result=result_def(TensorType),
                                                  verify_=_unary_verify)))
    ops.append(_make(f"{prefix}.cmp", dict(lhs=operand_def(TensorType), rhs=operand_def(TensorType),
                                           predicate=prop_def(StringAttr), result=result_def(TensorType),
                                           verify_=_cmp_verify)))
    ops.append(_make(f"{prefix}.select", dict(cond=operand_def(TensorType), on_true=operand_def(TensorType),
                                              on_false=operand_def(TensorType), result=result_def(TensorType),
                                              verify_=_select_verify)))
    ops.append(_make(f"{prefix}.cast", dict(input=operand_def(TensorType), rounding=prop_def(StringAttr),
                                            saturate=opt_prop_def(BoolAttr),
                                            result=result_def(TensorType), verify_=_cast_verify)))
    ops.append(_make(f"{prefix}.matmul", dict(lhs=operand_def(TensorType), rhs=operand_def(TensorType),
                                              transpose_b=prop_def(BoolAttr), result=result_def(TensorType),
                                              verify_=_matmul_verify)))
    ops.append(_make(f"{prefix}.broadcast", dict(input=operand_def(TensorType), result=result_def(TensorType),
                                                 verify_=_broadcast_verify)))
    ops.append(_make(f"{prefix}.reshape", dict(input=operand_def(TensorType), result=result_def(TensorType),
                                               verify_=_reshape_verify)))
    ops.append(_make(f"{prefix}.transpose", dict(input=operand_def(TensorType), perm=prop_def(ArrayAttr),
                                                 result=result_def(TensorType), verify_=_transpose_verify)))
    ops.append(_make(f"{prefix}.concat", dict(inputs=var_operand_def(TensorType), axis=prop_def(IntegerAttr),
                                              result=result_def(TensorType), verify_=_concat_verify)))
    ops.append(_make(f"{prefix}.gather_rows", dict(table=operand_def(TensorType), indices=operand_def(TensorType),
                                                   result=result_def(TensorType), verify_=_gather_rows_verify)))
    # the table [*P, *E] with rows[m] ([M, *E]) stored at row ids[m] of its [prod(P), *E] flattening (ids < 0 store
    # nothing; two equal ids >= 0 are an error). Value semantics; at the tile level the attribute in_place = true
    # (set by update-in-place) states that the result is the table's own buffer, updated (the table is dead after)
    ops.append(_make(f"{prefix}.scatter_rows", dict(table=operand_def(TensorType), rows=operand_def(TensorType),
                                                    ids=operand_def(TensorType), result=result_def(TensorType),
                                                    verify_=_scatter_rows_verify)))
    # top-k ids of the valid entries of each row, descending score, ties to the lower id, -1 padding
    ops.append(_make(f"{prefix}.topk", dict(scores=operand_def(TensorType), valid=operand_def(TensorType),
                                            k=prop_def(IntegerAttr), result=result_def(TensorType),
                                            verify_=_topk_verify)))
    ops.append(_make(f"{prefix}.iota", dict(axis=prop_def(IntegerAttr), result=result_def(TensorType),
                                            verify_=_iota_verify)))
    ops.append(_make(f"{prefix}.full", dict(value=prop_def(FloatAttr), result=result_def(TensorType),
                                            verify_=_full_verify)))
    return ops


__all__ = [
    "AttncOp", "define_shared_ops", "int_array", "ints_of", "float_attr", "str_attr", "bool_attr",
    "op_location", "LOC_ATTR", "BINARY", "UNARY", "CMP_PREDICATES", "ROUNDING_MODES", "_make",
    "operand_def", "opt_operand_def", "prop_def", "result_def", "var_operand_def",
]
