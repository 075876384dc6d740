"""Pictures: `attnc plot` writes PNG/SVG files that open, with the content the spec and the IR say."""
import json

import numpy as np
import pytest

import attnc
from attnc import pictures
from attnc.cli import main
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


def test_pass_errors_picture_and_its_data(tmp_path, capsys):
    """`attnc plot errors`: a 1100×700 PNG; the data drawn is each level's error vs the level before (= the
    --verify-each records), vs the tensor level (= interpreting the compiled stage independently) and vs the FP32
    reference (= tests/reference run on the same inputs)."""
    from attnc.pass_errors import measure_pass_errors
    from attnc.ir.interpreter import run_module
    from attnc.passes import DEFAULT_PIPELINE
    from attnc.passes.verify import normalised_error, run_pipeline
    from tests.reference.dsv4_reference import sparse_attn_reference

    out = tmp_path / "errors.png"
    assert main(["plot", "errors", "sparse_attn", "-o", str(out)]) == 0, capsys.readouterr().err
    img = _open_png(out)
    assert pictures.png_size(str(out)) == (1100, 700) == (img.shape[1], img.shape[0])

    from attnc.kernels_src.inputs import make_inputs

    stage = attnc.build("sparse_attn")
    cfg = stage_config(stage.stage_def, stage.cfg)
    inputs = make_inputs(stage.stage_def, cfg, 0)
    names = list(stage.output_names)
    tensor_level = dict(zip(names, run_module(attnc.build("sparse_attn").module, list(inputs.values()))))
    data = measure_pass_errors(stage.module, DEFAULT_PIPELINE, inputs, names,
                               lambda a: {"out": sparse_attn_reference(a, cfg)["out"]})
    tiled = dict(zip(names, run_module(stage.module, list(inputs.values()))))
    want_ref = sparse_attn_reference(inputs, cfg)["out"].float()

    assert [lv.label for lv in data.levels][0] == "input" and data.reference_outputs == ["out"]
    records = run_pipeline(attnc.build("sparse_attn").module, DEFAULT_PIPELINE, verify_inputs=list(inputs.values()),
                           output_names=names).records
    assert [(lv.label, lv.rel_prev["out"], lv.tolerance) for lv in data.levels[1:]] == \
        [(r.pass_name, r.error, r.tolerance) for r in records]
    assert data.levels[0].rel_golden["out"] == 0 and data.levels[0].abs_golden["out"] == 0
    last = data.levels[-1]
    assert last.rel_golden["out"] == normalised_error(tiled["out"], tensor_level["out"]) > 0  # bf16 P: not exact
    assert last.abs_golden["out"] == (tiled["out"].double() - tensor_level["out"].double()).abs().max().item()
    assert data.levels[0].rel_reference["out"] == normalised_error(tensor_level["out"].float(), want_ref) > 0
    assert last.rel_reference["out"] == normalised_error(tiled["out"].float(), want_ref) < 3e-2
    series = pictures.pass_error_series(data)
    exact = [lv.label for lv in data.levels[1:] if lv.tolerance == 0]
    assert exact and all(data.levels[i + 1].rel_prev["out"] == 0 for i, lv in enumerate(data.levels[1:])
                         if lv.label in exact)
    assert series[("rel", "tolerance", "")][1:] == [lv.tolerance for lv in data.levels[1:]]
    assert ("rel", "reference", "out") in series and len(series[("abs", "prev", "out")]) == len(data.levels)


def test_pass_errors_of_a_layer_without_history_reference(tmp_path, capsys):
    """A layer step's FP32 reference needs its history: at --start-pos 0 it is drawn, elsewhere a note says why."""
    out = tmp_path / "e.svg"
    assert main(["plot", "errors", "decode_swa", "--start-pos", "3", "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "no FP32 reference in the picture" in err and "--start-pos 0" in err
    assert out.read_text().lstrip().startswith("<?xml")
