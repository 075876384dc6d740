"""One error base for every user-facing error (`attnc.AttncError`), "did you mean", and a cheap error path."""
import subprocess
import sys

import numpy as np
import pytest

import attnc
from attnc.cli import main


def test_every_user_facing_error_is_an_attnc_error():
    from attnc.cli import CliError
    from attnc.codegen.escape import UnsafeName
    from attnc.io import InputError, OutputError
    from attnc.memory import MemoryLimitError
    from attnc.codegen.pto.emit import PtoEmitError
    from attnc.codegen.pypto.emit import EmitError
    from attnc.codegen.pypto.options import OptionError
    from attnc.codegen.pypto.sim import PyptoSimError
    from attnc.tune import TuneError
    from attnc.ir import IRError
    from attnc.ir.dsl import DSLError
    from attnc.ir.interpreter import InterpretError
    from attnc.kernels_src.configs import ConfigError
    from attnc.kernels_src.inputs import IndexInputError
    from attnc.passes import PassError, PipelineError
    from attnc.passes.verify import VerificationFailed

    for cls in (CliError, UnsafeName, InputError, OutputError, MemoryLimitError, PtoEmitError, EmitError,
                OptionError, PyptoSimError, TuneError, IRError, DSLError, InterpretError, ConfigError,
                IndexInputError, PassError, PipelineError, VerificationFailed):
        assert issubclass(cls, attnc.AttncError), cls
    assert attnc.AttncError is __import__("attnc.errors").errors.AttncError and "AttncError" in attnc.__all__


def test_a_typo_imports_nothing_heavy():
    """The error path of a mistyped command imports neither torch nor xDSL (it used to cost ~3 s of CPU)."""
    code = ("import sys; from attnc.cli import main; rc = main(['compil']); "
            "print(rc, 'torch' in sys.modules, 'xdsl' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["2", "False", "False"], res
    assert res.stderr.count("\n") == 1 and "did you mean 'compile'?" in res.stderr


@pytest.mark.parametrize("argv, suggestion", [
    (["compil"], "'compile'"),
    (["compile", "sparse_atn"], "'sparse_attn'"),
    (["compile", "sparse_attn", "--config", "tinny"], "'tiny'"),
    (["compile", "sparse_attn", "--set", "bach=2"], "'batch'"),
    (["compile", "sparse_attn", "-p", "tile-softmx"], "'tile-softmax'"),
    (["compile", "sparse_attn", "-p", "tile-softmax{kv-tle=8}"], "'kv-tile'"),
    (["compile", "sparse_attn", "--verfy-each"], "'--verify-each'"),
    (["compile", "sparse_attn", "--print-ir-after", "cse2"], "'cse'"),
    (["plot", "visiblity", "sparse_attn", "-o", "v.png"], "'visibility'"),
    (["run", "sparse_attn", "--target", "pypto"], "'pypto-sim'"),
])
def test_did_you_mean(argv, suggestion, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("attnc: error:") and f"did you mean {suggestion}?" in err, err
    assert not list(tmp_path.iterdir())


def test_no_suggestion_when_nothing_is_close(capsys):
    assert main(["compile", "zzzzzz"]) == 2
    assert "did you mean" not in capsys.readouterr().err


def test_api_errors_speak_api():
    with pytest.raises(attnc.AttncError, match=r"attnc.compile: expected a Stage.*attnc.build\('sparse_attn'\)"):
        attnc.compile("sparse_attn")
    with pytest.raises(attnc.AttncError, match=r"unknown config key 'bach'; did you mean 'batch'") as e:
        attnc.build("sparse_attn", config="tiny", bach=2)
    assert "--set" not in str(e.value)
    stage = attnc.build("sparse_attn", config="tiny")
    with pytest.raises(attnc.AttncError, match="unknown target 'pypto-simm'; did you mean 'pypto-sim'"):
        attnc.compile(stage, target="pypto-simm")
    with pytest.raises(attnc.AttncError, match="carries no state"):
        attnc.decode(stage, {}, steps=2)


def test_compare():
    stage = attnc.build("sparse_attn", config="tiny")
    out = attnc.interpret(stage, attnc.inputs(stage, seed=1))
    assert attnc.compare(out, out) == {"out": 0.0}
    shifted = {"out": out["out"] + np.float32(0.5) * np.abs(out["out"]).max()}
    assert attnc.compare(shifted, out)["out"] == pytest.approx(0.5, rel=1e-3)
    with pytest.raises(attnc.AttncError, match="no array out"):
        attnc.compare({}, out)
