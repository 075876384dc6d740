"""The public `attnc run` file contract: .npz archives of arrays by parameter name.

bf16 tensors travel as float32 arrays holding bf16 values (rounded to nearest-even on load); i32 tensors as
integer arrays; f32 as float arrays. Files are written atomically (temp file + rename)."""
from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Mapping

import numpy as np
import torch

from attnc.ir.types import dtype_of, shape_of, torch_dtype


class InputError(Exception):
    """A missing, unknown or mis-shaped array in an input file; one line naming the file and the array."""


def load_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise InputError(f"{path}: not a readable .npz archive ({str(e).splitlines()[0]})") from None


def to_tensor(path: str, name: str, array: np.ndarray, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    """Convert one array to the parameter's dtype, checking shape and kind."""
    where = f"{path}: array '{name}'"
    if tuple(array.shape) != tuple(shape):
        raise InputError(f"{where}: shape {list(array.shape)} does not match the parameter's {list(shape)}")
    if dtype in ("i32", "i8", "i1"):
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
            raise InputError(f"{where}: expected an integer array for {dtype}, got {array.dtype}")
        info = np.iinfo(np.int32)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise InputError(f"{where}: values out of int32 range")
        return torch.from_numpy(np.ascontiguousarray(array).astype(np.int64)).to(torch_dtype(dtype))
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{where}: expected a float array for {dtype}, got {array.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(array).astype(np.float32))
    return t.to(torch_dtype(dtype))  # float32 -> bf16 rounds to nearest-even


def to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.detach().cpu().contiguous().numpy()


def atomic_write_bytes(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".attnc-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_npz(path: str, arrays: Mapping[str, torch.Tensor]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **{k: to_numpy(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buf.getvalue())


def seeded_tensor_for_type(tensor_type, gen: torch.Generator) -> torch.Tensor:
    """Fallback inputs for a bare .mlir file: standard normal floats, small non-negative ints."""
    shape, dtype = shape_of(tensor_type), dtype_of(tensor_type)
    if dtype in ("i32", "i8"):
        return torch.randint(0, 4, shape, generator=gen).to(torch_dtype(dtype))
    if dtype == "i1":
        return torch.randint(0, 2, shape, generator=gen).bool()
    return torch.randn(shape, generator=gen).to(torch_dtype(dtype))
