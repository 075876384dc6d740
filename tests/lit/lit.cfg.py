# lit configuration of attnc's pass tests: each .mlir file here runs `attnc` (the same venv as the test run) and
# checks its output with `filecheck` (PyPI's FileCheck). `tests/test_lit.py` runs the suite from pytest.
import os
import sys

import lit.formats

config.name = "attnc"
config.test_format = lit.formats.ShTest()
config.suffixes = [".mlir"]
config.excludes = ["inputs"]
config.test_source_root = os.path.dirname(__file__)
bindir = os.path.dirname(sys.executable)
config.environment["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
config.environment["ATTNC_PROGRESS"] = "0"
for name in ("HOME", "TMPDIR", "ATTNC_PYPTO_CALC_CACHE"):
    if name in os.environ:
        config.environment[name] = os.environ[name]
