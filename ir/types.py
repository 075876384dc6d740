"""Element types shared by both dialects, and their torch equivalents."""
from __future__ import annotations

from xdsl.dialects.builtin import (
    BFloat16Type,
    Float16Type,
    Float32Type,
    IndexType,
    IntegerType,
    TensorType,
)
from xdsl.ir import Attribute

# Short names used by the DSL, the CLI and error messages.
DTYPES: dict[str, Attribute] = {
    "bf16": BFloat16Type(),
    "f16": Float16Type(),
    "f32": Float32Type(),
    "i32": IntegerType(32),
    "i8": IntegerType(8),
    "i1": IntegerType(1),
}
FLOAT_DTYPES = ("bf16", "f16", "f32")
INT_DTYPES = ("i32", "i8")


def dtype_name(elem: Attribute) -> str:
    for name, attr in DTYPES.items():
        if attr == elem:
            return name
    if isinstance(elem, IndexType):
        return "index"
    raise ValueError(f"unsupported element type {elem}")


def tensor_type(shape, dtype: str) -> TensorType:
    return TensorType(DTYPES[dtype], list(shape))


def shape_of(t: Attribute) -> tuple[int, ...]:
    assert isinstance(t, TensorType), t
    return tuple(t.get_shape())


def dtype_of(t: Attribute) -> str:
    assert isinstance(t, TensorType), t
    return dtype_name(t.get_element_type())


def describe(t: Attribute) -> str:
    """`bf16[2, 3]`-style rendering used in diagnostics."""
    if isinstance(t, TensorType):
        return f"{dtype_of(t)}{list(shape_of(t))}"
    return str(t)


def torch_dtype(name: str):
    import torch

    return {
        "bf16": torch.bfloat16,
        "f16": torch.float16,
        "f32": torch.float32,
        "i32": torch.int32,
        "i8": torch.int8,
        "i1": torch.bool,
    }[name]


def to_numpy(t):
    """A tensor as the `.npz` contract holds it: bf16/f16 as float32 holding the same values, else its own dtype."""
    import torch

    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.detach().cpu().contiguous().numpy()
