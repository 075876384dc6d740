"""The FileCheck pass tests (`tests/lit/*.mlir`, one or more per pass, as xDSL and MLIR write them) run by `lit`
from the test extra: `make test` covers them. Run alone: `lit -v tests/lit`."""
import subprocess
import sys
from pathlib import Path

import lit  # noqa: F401  (the test extra: pip install -e '.[test]')

from attnc.passes import pass_names

LIT_DIR = Path(__file__).resolve().parent / "lit"


def test_every_pass_has_a_lit_test():
    covered = " ".join(p.read_text() for p in LIT_DIR.glob("*.mlir"))
    missing = [p for p in pass_names() if f"-p {p}" not in covered and f"-p '{p}" not in covered
               and f",{p}" not in covered]
    assert not missing, f"passes without a lit test: {missing}"


def test_lit_suite_passes():
    lit_bin = Path(sys.executable).with_name("lit")
    res = subprocess.run([str(lit_bin), "-q", str(LIT_DIR)], capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
