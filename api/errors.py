"""The one base of every error attnc reports to its user (`attnc.AttncError`), and the "did you mean" helper.

Imports nothing heavy: the CLI catches `AttncError` without importing torch or xDSL, so a typo costs no more
than parsing the command line."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class AttncError(Exception):
    """Bad input to attnc (a name, a file, an array, a pipeline, IR text, a pass refusing, a failed check):
    `str(e)` is one line that names where and what. The CLI prints it as `attnc: error: ...` and exits 2."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the closest of `choices` (difflib), or '' when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
