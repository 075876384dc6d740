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

from attnc.errors import AttncError
from attnc.ir.types import dtype_of, shape_of, torch_dtype


class InputError(AttncError):
    """A missing, unknown or mis-shaped array in an input file; one line naming the file and the array."""


class OutputError(AttncError):
    """An output path that cannot be written; one line naming the path. Nothing of the command is left behind."""


MAX_NPY_HEADER = 10_000  # numpy's own default limit for a trusted header


def _npy_header(f, where: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header bytes) of one .npy member, reading the header only."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f, max_header_size=MAX_NPY_HEADER)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = fmt.read_array_header_2_0(f, max_header_size=MAX_NPY_HEADER)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as e:  # a hostile header: any failure to read it is the file's fault
        raise InputError(f"{where}: not a valid .npy header ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise InputError(f"{where}: dtype {dtype} is not a plain numeric dtype")
    header_len = f.tell() if hasattr(f, "tell") else 0
    return tuple(int(d) for d in shape), dtype, header_len


def load_npz(path: str, expected: Mapping[str, tuple[int, ...]] | None = None, owner: str = "") -> dict[str, np.ndarray]:
    """Arrays of an .npz archive by name. Before any data is read, every member must be `NAME.npy`, NAME one of
    `expected` (name -> shape) when given, with that shape, and a header that declares exactly the bytes the
    member holds: a hostile archive (bomb, huge header, pickles) is refused by its metadata alone."""
    import math

    from attnc.ir.names import shown

    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise InputError(f"{path}: not a readable .npz archive ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    with zf:
        plan = []
        seen = set()
        for info in zf.infolist():
            member = info.filename
            if not member.endswith(".npy") or info.is_dir():
                raise InputError(f"{path}: member {shown(member)} is not an .npy array")
            name = member[:-4]
            where = f"{path}: array {shown(name)}"
            if name in seen:
                raise InputError(f"{where}: appears twice")
            seen.add(name)
            if expected is not None and name not in expected:
                raise InputError(f"{where} is not a parameter of {owner or 'the stage'} "
                                 f"(parameters: {', '.join(expected)})")
            try:
                with zf.open(info) as f:
                    shape, dtype, header_len = _npy_header(f, where)
            except InputError:
                raise
            except Exception as e:  # noqa: BLE001 - encrypted, bad compression method, truncated ...
                raise InputError(f"{where}: cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
            if expected is not None and shape != tuple(expected[name]):
                raise InputError(f"{where}: shape {list(shape)} does not match the parameter's {list(expected[name])}")
            nbytes = math.prod(shape) * dtype.itemsize
            if info.file_size != header_len + nbytes:
                raise InputError(f"{where}: header declares {nbytes} data bytes but the member holds "
                                 f"{info.file_size - header_len}")
            plan.append((name, info))
        arrays = {}
        for name, info in plan:
            try:
                with zf.open(info) as f:
                    arrays[name] = np.lib.format.read_array(f, allow_pickle=False,
                                                            max_header_size=MAX_NPY_HEADER)
            except Exception as e:  # noqa: BLE001 - CRC error, truncated data
                raise InputError(f"{path}: array {shown(name)}: cannot be read "
                                 f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        return arrays


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


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


class Outputs:
    """The files one command writes, all or none. Each is staged as a temp file in its target's folder (mode
    0666 less the umask, like any new file), then all are renamed into place; if staging or a rename fails,
    staged files, replaced files (restored from hard-link backups) and folders created on the way are undone."""

    def __init__(self):
        self.files: list[tuple[str, bytes]] = []

    def add(self, path: str, data: bytes | str) -> None:
        self.files.append((path, data.encode() if isinstance(data, str) else data))

    def commit(self) -> None:
        created: list[str] = []  # folders made here, parents first
        staged: list[tuple[str, str, str | None]] = []  # (path, temp, backup of the file it replaces)
        renamed: list[tuple[str, str | None]] = []
        path = ""
        try:
            mode = 0o666 & ~_umask()
            for path, data in self.files:
                if os.path.isdir(path):
                    raise IsADirectoryError(21, "is a directory")
                directory = os.path.dirname(os.path.abspath(path))
                _make_dirs(directory, created)
                fd, tmp = tempfile.mkstemp(dir=directory, prefix=".attnc-", suffix=".tmp")
                staged.append((path, tmp, None))
                with os.fdopen(fd, "wb") as f:
                    os.fchmod(f.fileno(), mode)
                    f.write(data)
                if os.path.lexists(path):
                    backup = tmp[:-4] + ".bak"
                    os.link(path, backup)
                    staged[-1] = (path, tmp, backup)
            for path, tmp, backup in staged:
                os.replace(tmp, path)
                renamed.append((path, backup))
        except OSError as e:
            for done, backup in reversed(renamed):
                _quietly(os.replace, backup, done) if backup else _quietly(os.unlink, done)
            restored = {b for _, b in renamed}
            for _, tmp, backup in staged:
                _quietly(os.unlink, tmp)  # gone already if it was renamed
                if backup and backup not in restored:
                    _quietly(os.unlink, backup)
            for d in reversed(created):
                _quietly(os.rmdir, d)
            raise OutputError(f"{path}: cannot write ({e.strerror or type(e).__name__})") from None
        for _, backup in renamed:
            if backup:
                _quietly(os.unlink, backup)
        self.files = []


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except OSError:
        pass


def _make_dirs(directory: str, created: list[str]) -> None:
    missing = []
    d = directory
    while not os.path.isdir(d):
        if os.path.lexists(d):
            raise NotADirectoryError(20, f"{d} is not a directory")
        missing.append(d)
        d = os.path.dirname(d)
    for d in reversed(missing):
        os.mkdir(d)
        created.append(d)


def check_output_path(path: str, *, folder: bool = False) -> None:
    """Refuse early an output path that cannot be written (before any work is done): a file where a folder is
    needed, a folder where a file is needed, no writable existing ancestor."""
    p = os.path.abspath(path)
    if folder and os.path.lexists(p) and not os.path.isdir(p):
        raise OutputError(f"{path}: cannot write (exists and is not a directory)")
    if not folder and os.path.isdir(p):
        raise OutputError(f"{path}: cannot write (is a directory)")
    d = p if folder else os.path.dirname(p)
    while not os.path.isdir(d):
        if os.path.lexists(d):
            raise OutputError(f"{path}: cannot write ({d} is not a directory)")
        d = os.path.dirname(d)
    if not os.access(d, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write ({d} is not writable)")


def atomic_write_bytes(path: str, data: bytes) -> None:
    out = Outputs()
    out.add(path, data)
    out.commit()


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def npz_bytes(arrays: Mapping[str, torch.Tensor]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **{k: to_numpy(v) for k, v in arrays.items()})
    return buf.getvalue()


def save_npz(path: str, arrays: Mapping[str, torch.Tensor]) -> None:
    atomic_write_bytes(path, npz_bytes(arrays))


def seeded_tensor_for_type(tensor_type, gen: torch.Generator) -> torch.Tensor:
    """Fallback inputs for a bare .mlir file: standard normal floats, small non-negative ints."""
    shape, dtype = shape_of(tensor_type), dtype_of(tensor_type)
    if dtype in ("i32", "i8"):
        return torch.randint(0, 4, shape, generator=gen).to(torch_dtype(dtype))
    if dtype == "i1":
        return torch.randint(0, 2, shape, generator=gen).bool()
    return torch.randn(shape, generator=gen).to(torch_dtype(dtype))
