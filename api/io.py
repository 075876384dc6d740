"""The public `attnc run` file contract: .npz archives of arrays by parameter name.

bf16 tensors travel as float32 arrays holding bf16 values (rounded to nearest-even on load); i32 tensors as
integer arrays; f32 as float arrays. Files are written atomically (temp file + rename)."""
from __future__ import annotations

import errno
import os
import re
import stat
import sys
import tempfile
import zipfile
from collections.abc import Mapping

from typing import TYPE_CHECKING

import numpy as np

from attnc.errors import AttncError
from attnc.ir.types import dtype_of, shape_of, to_numpy, torch_dtype

if TYPE_CHECKING:  # torch loads where tensors are made: `attnc compile` writes its outputs here without it
    import torch


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


def read_bounded(path: str, cap: int, what: str) -> bytes:
    """The bytes of an input file, at most `cap`: counted while reading (a device or FIFO has no size), so
    `/dev/zero` is refused after cap + 1 bytes instead of filling memory. InputError names the file."""
    chunks, total = [], 0
    try:
        with open(path, "rb") as f:
            while total <= cap:
                chunk = f.read(min(1 << 20, cap + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
    except OSError as e:
        raise InputError(f"{path}: cannot read {what} ({e.strerror or type(e).__name__})") from None
    if total > cap:
        raise InputError(f"{path}: {what} is larger than {cap} bytes")
    return b"".join(chunks)


MAX_JSON_DEPTH = 32
_JSON_MARK = re.compile(r'[\[\]{}"]')
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"')


def parse_json(text: str, where: str, max_depth: int = MAX_JSON_DEPTH):
    """json.loads with the nesting depth checked first (in linear time, strings skipped): deep nesting is one error
    line, not a RecursionError."""
    import json

    depth, pos = 0, 0
    while (m := _JSON_MARK.search(text, pos)) is not None:
        tok = m.group()
        if tok == '"':
            string = _JSON_STRING.match(text, m.start())
            if string is None:
                break  # unterminated: json.loads says where
            pos = string.end()
            continue
        pos = m.end()
        if tok in "[{":
            depth += 1
            if depth > max_depth:
                raise InputError(f"{where}: JSON nested deeper than {max_depth} levels")
        else:
            depth -= 1
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        raise InputError(f"{where}: not valid JSON ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None


def load_npz(path: str, expected: Mapping[str, tuple[int, ...]] | None = None, owner: str = "",
             only: set[str] | None = None) -> dict[str, np.ndarray]:
    """Arrays of an .npz archive by name. Before any data is read, every member must be `NAME.npy`, NAME one of
    `expected` (name -> shape) when given, with that shape, and a header that declares exactly the bytes the
    member holds: a hostile archive (bomb, huge header, pickles) is refused by its metadata alone. `only`: read
    just these members (the others are not decompressed at all; their names must still be .npy members)."""
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
            if only is not None and name not in only:
                continue
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
    import torch

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


STDOUT = "-"


def resolve_output(path: str) -> tuple[str, str, int | None]:
    """How an output path is written: ("stdout", "-", None); ("stream", path, None) for an existing character
    device or FIFO, opened and written in place like a shell's `>` (never replaced: `-o /dev/null` leaves
    /dev/null a device); ("file", target, mode) for a regular file, written atomically, `target` the path with a
    symbolic link resolved (a link must stay inside the folder it was requested in) and `mode` the permission
    bits of the file it replaces (None: a new file). OutputError for anything else."""
    if path == STDOUT:
        return "stdout", STDOUT, None
    if not path:
        raise OutputError("'': cannot write (empty output path)")
    try:
        st = os.stat(path)  # follows links
    except (FileNotFoundError, NotADirectoryError):  # a new file (check_output_path names a bad ancestor)
        st = None
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or type(e).__name__})") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{path}: cannot write (is a directory)")
    if st is not None and (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        return "stream", path, None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputError(f"{path}: cannot write (not a regular file, character device or FIFO)")
    target = path
    if os.path.islink(path):
        target = os.path.realpath(path)
        folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
        if os.path.commonpath([target, folder]) != folder:
            raise OutputError(f"{path}: cannot write (a symbolic link that leaves its folder, to {target})")
    return "file", target, None if st is None else stat.S_IMODE(st.st_mode)


def _stream(path: str, data: bytes) -> None:
    """Write `data` into stdout, a device or a FIFO, in place (no create, no rename)."""
    if path == STDOUT:
        out = sys.stdout
        if out is None:
            raise OSError(errno.EBADF, "stdout is closed")
        out.flush()
        buf = getattr(out, "buffer", None)
        if buf is None:  # a text stream without bytes (tests)
            out.write(data.decode("utf-8", "replace"))
            out.flush()
        else:
            buf.write(data)
            buf.flush()
        return
    fd = os.open(path, os.O_WRONLY | os.O_NOCTTY)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


class Outputs:
    """The files one command writes, all or none. Every path is resolved first (`resolve_output`); regular files
    are staged as temp files in their target's folder (the replaced file's mode, or 0666 less the umask for a new
    one), streams (stdout, devices, FIFOs) are written next, then the staged files are renamed into place; if
    staging, a stream or a rename fails, staged files, replaced files (restored from hard-link backups) and
    folders created on the way are undone (bytes already written into a stream cannot be taken back)."""

    def __init__(self):
        self.files: list[tuple[str, bytes]] = []

    def add(self, path: str, data: bytes | str) -> None:
        self.files.append((path, data.encode() if isinstance(data, str) else data))

    def commit(self) -> None:
        plan = [(path, *resolve_output(path), data) for path, data in self.files]
        created: list[str] = []  # folders made here, parents first
        staged: list[tuple[str, str, str | None]] = []  # (target, temp, backup of the file it replaces)
        renamed: list[tuple[str, str | None]] = []
        path = ""
        try:
            new_mode = 0o666 & ~_umask()
            for path, kind, target, mode, data in plan:
                if kind != "file":
                    continue
                if mode is not None and not os.access(target, os.W_OK):
                    raise PermissionError(errno.EACCES, "Permission denied")
                directory = os.path.dirname(os.path.abspath(target))
                _make_dirs(directory, created)
                fd, tmp = tempfile.mkstemp(dir=directory, prefix=".attnc-", suffix=".tmp")
                staged.append((target, tmp, None))
                with os.fdopen(fd, "wb") as f:
                    os.fchmod(f.fileno(), new_mode if mode is None else mode)
                    f.write(data)
                if os.path.lexists(target):
                    backup = tmp[:-4] + ".bak"
                    os.link(target, backup)
                    staged[-1] = (target, tmp, backup)
            for path, kind, target, _, data in plan:
                if kind != "file":
                    _stream(target, data)
            for target, tmp, backup in staged:
                path = target
                os.replace(tmp, target)
                renamed.append((target, backup))
        except (OSError, ValueError) as e:  # ValueError: a closed stdout
            for done, backup in reversed(renamed):
                _quietly(os.replace, backup, done) if backup else _quietly(os.unlink, done)
            restored = {b for _, b in renamed}
            for _, tmp, backup in staged:
                _quietly(os.unlink, tmp)  # gone already if it was renamed
                if backup and backup not in restored:
                    _quietly(os.unlink, backup)
            for d in reversed(created):
                _quietly(os.rmdir, d)
            why = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise OutputError(f"{path or STDOUT}: cannot write ({why})") from None
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
    """Refuse early an output path that cannot be written (before any work is done): an empty path, a file where a
    folder is needed, a folder where a file is needed, a symbolic link leaving its folder, a device that is not a
    character device or FIFO, no writable existing ancestor."""
    if not path:
        raise OutputError("'': cannot write (empty output path)")
    if path == STDOUT and not folder:
        return
    p = os.path.abspath(path)
    if folder:
        if os.path.lexists(p) and not os.path.isdir(p):
            raise OutputError(f"{path}: cannot write (exists and is not a directory)")
        d = p
    else:
        kind, target, mode = resolve_output(path)
        if kind == "stream":
            if not os.access(target, os.W_OK):
                raise OutputError(f"{path}: cannot write (Permission denied)")
            return
        if mode is not None and not os.access(target, os.W_OK):
            raise OutputError(f"{path}: cannot write (Permission denied)")
        d = os.path.dirname(os.path.abspath(target))
    while not os.path.isdir(d):
        if os.path.lexists(d):
            raise OutputError(f"{path}: cannot write ({d} is not a directory)")
        d = os.path.dirname(d)
    if not os.access(d, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write ({d} is not writable)")
    try:  # access() says yes to root on a read-only mount or /proc: make (and remove) a file there
        fd, probe = tempfile.mkstemp(dir=d, prefix=".attnc-", suffix=".probe")
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({d}: {e.strerror or type(e).__name__})") from None
    os.close(fd)
    os.unlink(probe)


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
    import torch

    shape, dtype = shape_of(tensor_type), dtype_of(tensor_type)
    if dtype in ("i32", "i8"):
        return torch.randint(0, 4, shape, generator=gen).to(torch_dtype(dtype))
    if dtype == "i1":
        return torch.randint(0, 2, shape, generator=gen).bool()
    return torch.randn(shape, generator=gen).to(torch_dtype(dtype))
