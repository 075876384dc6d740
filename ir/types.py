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


_DTYPE_NAMES = {attr: name for name, attr in DTYPES.items()}


def dtype_name(elem: Attribute) -> str:
    try:
        name = _DTYPE_NAMES.get(elem)  # a dict lookup: this runs for most values at every verify
    except TypeError:  # an unhashable attribute from a file: not one of ours
        name = None
    if name is not None:
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


def round_scalar(value: float, dtype: str) -> float:
    """`value` as a float dtype holds it, rounded as torch rounds a float64 tensor to that dtype: to f32 first, then
    to nearest-even (bf16 by torch's bit rule). Plain numpy, so compiling loads no torch."""
    import numpy as np

    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN convert as torch converts them
        f32 = np.float64(value).astype(np.float32)
        if dtype == "f32":
            return float(f32)
        if dtype == "f16":
            return float(f32.astype(np.float16))
    if dtype != "bf16":
        raise ValueError(f"not a float dtype: {dtype}")
    if np.isnan(f32):
        return float("nan")
    bits = int(f32.view(np.uint32))
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return float(np.uint32(bits).view(np.float32))


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
