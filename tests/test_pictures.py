"""Pictures: `attnc plot` writes PNG/SVG files that open, with the content the spec and the IR say."""
import json

import numpy as np
import pytest

import attnc
from attnc.codegen import pictures
from attnc.codegen.driver import main
from attnc.ir.dsl import stage_config

matplotlib_image = pytest.importorskip("matplotlib.image")


def _open_png(path):
    img = matplotlib_image.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 300
    assert img[..., :3].std() > 0.05  # not a blank canvas
    return img


@pytest.mark.parametrize("kind, stage, extra", [
    ("schedule", "sparse_attn", ["--config", "flash"]),
    ("timing", "qkv_proj_rope", []),
    ("visibility", "decode_csa", ["--start-pos", "13"]),
    ("visibility", "sparse_attn", []),
])
def test_plot_writes_a_picture(tmp_path, capsys, kind, stage, extra):
    out = tmp_path / f"{kind}.png"
    assert main(["plot", kind, stage, *extra, "-o", str(out)]) == 0, capsys.readouterr().err
    _open_png(out)


def test_plot_svg_and_refusal(tmp_path, capsys):
    assert main(["plot", "schedule", "qkv_proj_rope", "-o", str(tmp_path / "s.svg")]) == 0
    assert (tmp_path / "s.svg").read_text().lstrip().startswith("<?xml")
    assert main(["plot", "visibility", "qkv_proj_rope", "-o", str(tmp_path / "v.png")]) == 2
    assert "attends nothing" in capsys.readouterr().err and not (tmp_path / "v.png").exists()


def test_visibility_follows_the_state_contract():
    layer = attnc.build("decode_hca")
    cfg = stage_config(layer.stage_def, layer.cfg)  # m = 128, W = 8
    rows, window, entries = pictures.visibility_grid(cfg, [126, 3], "hca")
    assert rows == [(0, 0, 126), (0, 1, 127), (1, 0, 3), (1, 1, 4)]
    assert window.sum(1).tolist() == [8, 8, 4, 5]  # min(W, t + 1) window keys
    assert window[0, 119:127].all() and not window[0, 118] and not window[0, 127]  # t-W+1 .. t, never later
    assert entries[:, 0].tolist() == [0, 1, 0, 0]  # entry 0 completes at t = 127, seen from then on


def test_loop_nest_counts_the_compiled_loops():
    stage = attnc.build("sparse_attn", config="flash")
    attnc.compile(stage)
    nest = pictures.loop_nest(stage.module)
    assert nest[0][:3] == (0, "tile.parallel", 8)  # 64·2 tokens in chunks of 16
    assert any(kind == "scf.for" and ops["matmul_acc"] == 1 for _, kind, _, ops in nest)  # tile-matmul's K loop


def test_swim_lanes_from_a_cost_model_file(tmp_path):
    swim = [{"blockIdx": 0, "coreType": "AIC", "tasks": [{"execStart": 10, "execEnd": 50, "subGraphId": 1}]},
            {"blockIdx": 24, "coreType": "AIV", "tasks": [{"execStart": 0, "execEnd": 30, "subGraphId": 2},
                                                         {"execStart": 60, "execEnd": 90, "subGraphId": 3}]},
            {"blockIdx": 25, "coreType": "AIV", "tasks": []}]
    (tmp_path / "swim.json").write_text(json.dumps(swim))
    pictures.swim_lanes(str(tmp_path / "swim.json"), str(tmp_path / "swim.png"), "test")
    img = _open_png(tmp_path / "swim.png")
    assert pictures.png_size(str(tmp_path / "swim.png")) == (img.shape[1], img.shape[0])
    assert np.isclose(img[..., 3], 1).all()  # opaque PNG
