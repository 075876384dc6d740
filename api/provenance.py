"""How an artifact was made: a comment header for emitted `.mlir`, `.pypto.py` and `.pto` files naming attnc's
version, the source, the config with its overrides, the pipeline and a command that reproduces the file.

Every value is made printable (control characters escaped) and shell-quoted, so a file name or option cannot
end the comment and reach generated code."""
from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass, field
from importlib import metadata


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def attnc_version() -> str:
    return package_version("attnc")


def version_line() -> str:
    deps = ", ".join(f"{d} {package_version(d)}" for d in ("xdsl", "torch", "pypto"))
    return f"attnc {attnc_version()} ({deps})"


def printable(text: str) -> str:
    """`text` on one line: control and other non-printable characters as Python escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def quoted(text: str) -> str:
    return shlex.quote(printable(text))


@dataclass
class Provenance:
    """What an emitted file was compiled from. `source` is a stage name, FILE.mlir or FILE.py:NAME."""

    source: str
    config: str
    overrides: dict = field(default_factory=dict)  # key -> resolved value (never the raw text)
    pipeline: str = ""
    emit: str = "mlir"
    source_sha256: str | None = None  # for file sources: the file's content hash
    flags: tuple[str, ...] = ()  # output-changing flags without values, e.g. --print-debuginfo

    @staticmethod
    def hash_text(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    def command(self, output: str | None = None) -> str:
        words = ["attnc", "compile", quoted(self.source), "--config", quoted(self.config)]
        for key, value in self.overrides.items():
            words += ["--set", quoted(f"{key}={value}")]
        if self.pipeline:
            words += ["--pipeline", quoted(self.pipeline)]
        if self.emit != "mlir":
            words += ["--emit", quoted(self.emit)]
        words += [quoted(f) for f in self.flags]
        if output:
            words += ["-o", quoted(output)]
        return " ".join(words)

    def lines(self, output: str | None = None) -> list[str]:
        overrides = ", ".join(f"{k}={v}" for k, v in self.overrides.items()) or "none"
        out = [f"made by {version_line()}",
               f"source: {printable(self.source)}"
               + (f" (sha256 {self.source_sha256})" if self.source_sha256 else ""),
               f"config: {printable(self.config)}; overrides: {printable(overrides)}",
               f"pipeline: {printable(self.pipeline) or '(none)'}",
               f"reproduce: {self.command(output)}"]
        if self.emit == "pypto":
            name = quoted(output or "KERNEL.pypto.py")
            out.append(f"run alone: attnc inputs {quoted(self.source)} --config {quoted(self.config)}"
                       + "".join(f" --set {quoted(f'{k}={v}')}" for k, v in self.overrides.items())
                       + f" -o in.npz && python -m attnc.codegen.pypto.sim.runner {name} in.npz out.npz")
        return out

    def header(self, comment: str, output: str | None = None, extra: tuple[str, ...] = ()) -> str:
        return "".join(f"{comment} {printable(line)}\n" for line in (*self.lines(output), *extra))
