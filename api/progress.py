"""Progress and timing for long commands.

Progress is one tqdm line on stderr, shown only when stderr is a terminal (so pipes, files and CI logs stay
clean); `ATTNC_PROGRESS=1` forces it on, `ATTNC_PROGRESS=0` off. Timing is a list of named phases printed like
mlir-opt's `--mlir-timing` report: every phase with its share of the total wall time."""
from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager


def progress_enabled(stream=None) -> bool:
    forced = os.environ.get("ATTNC_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def stderr_write(text: str) -> None:
    """Write to stderr around a live progress line: tqdm clears the line, the text goes out, the line is drawn
    again below it (a banner or a note is never glued to the bar)."""
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        with tqdm.external_write_mode(file=sys.stderr):
            sys.stderr.write(text)
            sys.stderr.flush()
    else:
        sys.stderr.write(text)


class Progress:
    """A progress bar over `total` steps (None: a spinner with elapsed time); a no-op when disabled."""

    def __init__(self, total: int | None, desc: str, *, enabled: bool | None = None):
        self._bar = None
        self._ticker = None
        if enabled if enabled is not None else progress_enabled():
            from tqdm import tqdm

            fmt = "{desc} {n_fmt}/{total_fmt} [{elapsed}]" if total else "{desc} [{elapsed}]"
            self._bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, bar_format=fmt,
                             dynamic_ncols=True)

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(text)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def tick_every(self, seconds: float = 0.5) -> None:
        """Refresh the line from a background thread (elapsed time moves while the caller blocks)."""
        if self._bar is None or self._ticker is not None:
            return
        stop = threading.Event()

        def run():
            while not stop.wait(seconds):
                self._bar.refresh()

        self._ticker = (stop, threading.Thread(target=run, daemon=True))
        self._ticker[1].start()

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker[0].set()
            self._ticker[1].join()
            self._ticker = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Timing:
    """Named wall-time phases in the order they ran; `report()` gives the `--timing` lines."""

    def __init__(self):
        self.phases: list[tuple[str, float]] = []
        self._start = time.perf_counter()

    def add(self, name: str, seconds: float) -> None:
        self.phases.append((name, seconds))

    @contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def total(self) -> float:
        return time.perf_counter() - self._start

    def report(self) -> list[str]:
        total = self.total()
        other = total - sum(s for _, s in self.phases)
        rows = [*self.phases, ("(other)", other), ("total", total)]
        width = max(44, *(len(n) for n, _ in rows))
        lines = [f"timing {'phase':<{width}} {'wall ms':>10} {'share':>6}"]
        for name, secs in rows:
            lines.append(f"timing {name:<{width}} {secs * 1e3:10.2f} {100 * secs / total if total else 0:5.1f}%")
        return lines
