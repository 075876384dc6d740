"""Make the PyPI `ptoas==0.1.1` binary start, and run it.

The wheel's `bin/ptoas` asks the loader for its MLIR/LLVM libraries by their plain names
(`libMLIRFoo.so.19.1`), while the wheel ships them in `site-packages/ptoas.libs/` under hashed names
(`libMLIRFoo-1a2b3c4d.so.19.1`), and ~45 more (mlir-opt main, test passes, ...) are not shipped at all; the
binary never calls into those. `python -m attnc.codegen.pto.ptoas` (run by `make setup`; needs gcc) makes a
runtime folder `<venv>/ptoas-runtime/` holding a plain-named link for every shipped library and an empty
shared library (built by gcc, with the expected soname) for every missing one. Nothing else is changed; the
folders go on LD_LIBRARY_PATH for the ptoas process only.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass

from attnc.errors import AttncError

_HASHED = re.compile(r"^(lib.+?)-[0-9a-f]{8}(\.so(?:\.[0-9.]+)?)$")


class PtoasUnavailable(AttncError):
    """ptoas cannot start here; the message says why (tests skip with it)."""


def ptoas_binary() -> str:
    path = os.path.join(sysconfig.get_path("scripts"), "ptoas")
    if not os.path.isfile(path):
        raise PtoasUnavailable(f"ptoas not installed ({path} missing; pip install ptoas==0.1.1)")
    return path


def wheel_libs() -> str:
    path = os.path.join(sysconfig.get_path("purelib"), "ptoas.libs")
    if not os.path.isdir(path):
        raise PtoasUnavailable(f"ptoas libraries missing ({path})")
    return path


def runtime_dir() -> str:
    return os.path.join(sys.prefix, "ptoas-runtime")


def _env() -> dict:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([runtime_dir(), wheel_libs(), env.get("LD_LIBRARY_PATH", "")])
    return env


def _missing_libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], env=_env(), capture_output=True, text=True, check=False).stdout
    return sorted({m.group(1) for m in re.finditer(r"^\s*(\S+) => not found", out, re.M)})


def setup(verbose: bool = True) -> str:
    """Create (or refresh) the runtime folder; returns its path. Idempotent."""
    binary, libs, rt = ptoas_binary(), wheel_libs(), runtime_dir()
    if shutil.which("gcc") is None:
        raise PtoasUnavailable("gcc not found (needed to build the empty stub libraries ptoas 0.1.1 links)")
    os.makedirs(rt, exist_ok=True)
    links = 0
    for name in sorted(os.listdir(libs)):
        m = _HASHED.match(name)
        if m:
            plain = os.path.join(rt, m.group(1) + m.group(2))
            if not os.path.lexists(plain):
                os.symlink(os.path.join(libs, name), plain)
                links += 1
    empty_c = os.path.join(rt, "empty.c")
    with open(empty_c, "w") as f:
        f.write("/* deliberately empty: ptoas 0.1.1 links this library but never calls into it */\n")
    stubs = _missing_libraries(binary)
    for soname in stubs:
        subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", os.path.join(rt, soname), empty_c],
                       check=True)
    still = _missing_libraries(binary)
    if still:
        raise PtoasUnavailable(f"ptoas still misses {len(still)} libraries after set-up, e.g. {still[0]}")
    if verbose:
        entries = os.listdir(rt)
        n_links = sum(os.path.islink(os.path.join(rt, e)) for e in entries)
        n_stubs = sum(e.endswith((".so", ".1")) and not os.path.islink(os.path.join(rt, e)) for e in entries)
        print(f"ptoas runtime: {rt} ({n_links} links, {n_stubs} stub libraries; {links + len(stubs)} made now); "
              f"{ptoas_version()}", file=sys.stderr)
    return rt


def ptoas_version() -> str:
    res = subprocess.run([ptoas_binary(), "--version"], env=_env(), capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise PtoasUnavailable(f"ptoas --version exits {res.returncode}: "
                               f"{(res.stderr.strip().splitlines() or ['?'])[-1]} (run `make setup`)")
    line = next((ln for ln in res.stdout.splitlines() if "version" in ln.lower()), res.stdout.strip())
    return line.strip()


def check_available() -> None:
    """Raise PtoasUnavailable with the reason when ptoas cannot start (e.g. `make setup` not run)."""
    ptoas_version()


@dataclass
class PtoasResult:
    returncode: int
    cpp: str
    errors: list[str]


def ptoas_command(args: list[str]) -> tuple[list[str], dict]:
    """(argv, environment) that run the wheel's ptoas on `args`; raises PtoasUnavailable when it cannot start."""
    check_available()
    return [ptoas_binary(), *args], _env()


def run_ptoas(pto_path: str, cpp_path: str, timeout: float = 60.0) -> PtoasResult:
    """Compile one `.pto` file to C++. ptoas prints its debug dumps and errors to stderr; the error lines
    (`error:` / `[Error]` / assertion) are kept."""
    res = subprocess.run([ptoas_binary(), pto_path, "-o", cpp_path], env=_env(), capture_output=True, text=True,
                         timeout=timeout, check=False)
    errors = [ln.strip() for ln in res.stderr.splitlines()
              if "error" in ln.lower() or "assertion" in ln.lower()]
    cpp = ""
    if res.returncode == 0 and os.path.exists(cpp_path):
        with open(cpp_path) as f:
            cpp = f.read()
    return PtoasResult(res.returncode, cpp, errors)


if __name__ == "__main__":
    try:
        setup()
    except (PtoasUnavailable, subprocess.CalledProcessError) as e:
        print(f"attnc: error: ptoas set-up: {e}", file=sys.stderr)
        sys.exit(2)
