"""Skip markers shared by the test modules (each names its reason)."""
import pytest

from attnc.codegen.pypto.sim import pypto_available

needs_pypto = pytest.mark.skipif(not pypto_available(), reason="pypto 0.2.0 is not importable here")
