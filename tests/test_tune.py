"""`attnc tune`: the search space, the static filter, the cache, the search loop (a failing candidate never stops
it, the default is always timed, a repeated tune costs no SIM run), the tuning file and `--tuning FILE`; one real
tune at `tiny` in SIM with a budget of 2, and the Ray path when Ray is installed."""
from __future__ import annotations

import importlib.util
import json

import pytest

from attnc import tune as T
from attnc.cli import load_source, main
from attnc.codegen.pypto.options import PyptoOptions
from attnc.passes import PYPTO_PIPELINE
from attnc.passes.verify import run_pipeline
from tests.markers import needs_pypto



def _options_by_pass(pipeline: str) -> list[tuple[str, dict]]:
    """[(pass, {option: value text})] of a pipeline string, in order."""
    from xdsl.utils.arg_spec import parse_pipeline

    return [(spec.name, {k: " ".join(str(getattr(v, "value", v)) for v in vals) for k, vals in spec.parameters.items()})
            for spec in parse_pipeline(pipeline)]


def test_space_has_the_pipelines_pass_options_and_defaults_first():
    dims = T.build_space(PYPTO_PIPELINE)
    by = {d.name: d for d in dims}
    assert by["tile-softmax.kv-tile"].default == 128 and by["parallelize-tokens.rows"].default == 32
    assert by["schedule-attention.schedule"].default == "auto"  # the pass's own default (not in the string)
    # the pipeline's cube-tiling rule is searched from its stated value; the pass's own default otherwise
    assert by["tile-matmul.rule"].values == ("cost", "fixed") and by["tile-matmul.merge"].default == 1
    assert by["schedule-compressor.chunk-rows"].default == 8
    assert by["vec_tile_elems"].default == PyptoOptions().vec_tile_elems
    assert all(d.values[0] == d.default and len(set(d.values)) == len(d.values) for d in dims)
    # a pass missing from the pipeline has no dimension
    assert "schedule-attention.schedule" not in {d.name for d in T.build_space("tile-softmax{kv-tile=32}")}
    # the default candidate reproduces the pipeline and PyptoOptions()
    params = T.default_params(dims)
    pipe = T.candidate_pipeline(PYPTO_PIPELINE, dims, params)
    assert "schedule-attention{schedule=auto vec-tile=16384}" in pipe  # the pass's own defaults, spelled out
    # every option of the pipeline kept; the others spelled out are the pass's own defaults
    assert [n for n, _ in _options_by_pass(pipe)] == [n for n, _ in _options_by_pass(PYPTO_PIPELINE)]
    for (name, got), (_, want) in zip(_options_by_pass(pipe), _options_by_pass(PYPTO_PIPELINE)):
        assert want.items() <= got.items(), name
        assert all(got[o] == str(T._pass_default(name, o)) for o in got.keys() - want.keys()), name
    assert T.candidate_options(dims, params) == PyptoOptions()


def test_space_narrowing_and_its_errors():
    dims = T.build_space(PYPTO_PIPELINE, ["combine_axis=False", "tile-softmax.kv-tile=64|256",
                                          "vec_nbuffer_setting={-1: 2}|{}", "schedule-attention.schedule=batch"])
    by = {d.name: d for d in dims}
    assert by["combine_axis"].values == (False,)
    assert by["tile-softmax.kv-tile"].values == (64, 256)
    assert by["vec_nbuffer_setting"].values == ("{-1: 2}", "{}")
    assert by["schedule-attention.schedule"].values == ("batch",)
    params = {**T.default_params(dims), "vec_nbuffer_setting": "{}"}
    assert T.candidate_options(dims, params).vec_nbuffer_setting == {}
    assert "tile-softmax{kv-tile=64}" in T.candidate_pipeline(PYPTO_PIPELINE, dims, params)
    with pytest.raises(T.TuneError, match="unknown dimension 'nope'"):
        T.build_space(PYPTO_PIPELINE, ["nope=1"])
    with pytest.raises(T.TuneError, match="expected NAME="):
        T.build_space(PYPTO_PIPELINE, ["combine_axis"])


def test_static_filter_rejects_tiles_that_overflow_ub():
    src = load_source("sparse_attn_core", "flash", [])  # CSA at the flash shape
    run_pipeline(src.module, PYPTO_PIPELINE)
    assert T.static_check(src.module, PyptoOptions()) is None  # the default fits
    # the attention loop's tiles are the pass's choice: 32768 elements overflow UB there
    big = load_source("sparse_attn_core", "flash", [])
    run_pipeline(big.module, PYPTO_PIPELINE.replace("schedule-attention", "schedule-attention{vec-tile=32768}"))
    need, where = T.largest_vector_tile(big.module, PyptoOptions().vec_tile_elems)
    assert need > T.UB_BYTES and "tile [" in where
    why = T.static_check(big.module, PyptoOptions())
    assert why is not None and "> UB 192 KiB" in why and "kernels_src/" in why


def test_static_filter_skips_loops():
    """A loop is no vector op: the filter used to add up the tensors a token loop carries (16 in decode_hca at
    flash) as if one op held them in UB, and filtered every candidate of a whole-layer tune although the default
    simulates. Whatever is worst now is an op that computes, and the default fits."""
    src = load_source("decode_hca", "flash", [])
    run_pipeline(src.module, PYPTO_PIPELINE)
    assert T.static_check(src.module, PyptoOptions()) is None
    for budget in (8192, 16384):
        where = T.largest_vector_tile(src.module, budget)[1]
        assert where.startswith("tile.") and not where.startswith(("tile.parallel", "scf.for")), where


def test_cache_key_is_content_addressed(tmp_path):
    k = T.cache_key("program text", "none", 0)
    assert k == T.cache_key("program text", "none", 0)
    assert len({k, T.cache_key("program text!", "none", 0), T.cache_key("program text", "default", 0),
                T.cache_key("program text", "none", 1)}) == 4
    cache = T.Cache(tmp_path)
    assert cache.get(k) is None
    verdict = {"aicore_us": 1.5, "error": None, "timeout": False, "seconds": 0.0}
    cache.put(k, verdict)
    assert cache.get(k) == verdict
    (tmp_path / f"{k}.json").write_text("{broken")
    assert cache.get(k) is None  # an unreadable entry is a miss, not an error
    assert T.Cache(tmp_path, enabled=False).get(k) is None


def _fake_sim(calls, fail_when=None):
    """Stand-in for the SIM run: µs from the program's options, a crash for `fail_when(program)`."""
    def sim_trial(program, name, inputs, timeout_s, verify=T.SIM_VERIFY):
        calls.append(program)
        if fail_when and fail_when(program):
            return {"aicore_us": None, "error": "pypto run failed (killed by SIGSEGV): F74007", "timeout": False}
        us = 100.0 - 10 * ("'vec_nbuffer_setting': {-1: 2}" in program) - 5 * ("'device_sched_mode': 1" in program)
        return {"aicore_us": us, "error": None, "timeout": False, "seconds": 0.0, "failed_records": 0}
    return sim_trial


def _fake_recheck(bad=()):
    def recheck(req, pipeline, dims, params, cache, log, fresh=False):
        ok = params.get("device_sched_mode") not in bad
        return {"ok": ok, "note": "" if ok else "out not bit-exact", "max_error": 0.0 if ok else 1.0,
                "failed_records": 0}
    return recheck


def _request(tmp_path, **kw):
    base = dict(source="sparse_attn_core", config="tiny", jobs=0, cache_dir=str(tmp_path / "cache"),
                space=["tile-softmax.kv-tile=128", "parallelize-tokens.rows=32", "schedule-attention.schedule=auto",
                       "schedule-attention.vec-tile=16384",
                       "vec_tile_elems=8192", "cube_nbuffer_setting={-1: 2}", "cube_l1_reuse_setting={0: 4}",
                       "stitch_function_max_num=128", "combine_axis=False",
                       "vec_nbuffer_setting={-1: 4}|{-1: 2}", "device_sched_mode=0|1"])
    base.update(kw)
    return T.TuneRequest(**base)


def test_search_is_exhaustive_when_small_and_a_crash_never_stops_it(tmp_path, monkeypatch):
    calls = []
    # the best point (nbuffer 2, sched 1) crashes in SIM: it is disqualified, the search goes on
    monkeypatch.setattr(T, "sim_trial", _fake_sim(calls, lambda p: "'vec_nbuffer_setting': {-1: 2}" in p
                                                         and "'device_sched_mode': 1" in p))
    monkeypatch.setattr(T, "recheck", _fake_recheck())
    res = T.tune(_request(tmp_path, budget=4), log=lambda m: None)
    assert len(calls) == 4  # 2 x 2 points, each timed once
    statuses = [t.status for t in res.trials]
    assert statuses.count("sim-error") == 1 and statuses.count("timed") == 3
    assert res.trials[0].params == T.default_params(T.build_space(PYPTO_PIPELINE, _request(tmp_path).space))
    t = res.tuning
    assert t["default_aicore_us"] == 100.0 and t["aicore_us"] == 90.0  # nbuffer 2 without the crashing sched 1
    assert t["pypto_options"]["vec_nbuffer_setting"] == "{-1: 2}" and t["pypto_options"]["device_sched_mode"] == 0
    assert t["evaluated"] == 4 and t["sim_trials"] == 4


def test_repeated_tune_costs_no_sim_run_and_budget_caps_runs(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(T, "sim_trial", _fake_sim(calls))
    monkeypatch.setattr(T, "recheck", _fake_recheck())
    first = T.tune(_request(tmp_path, budget=2), log=lambda m: None)
    assert len(calls) == 2 and first.tuning["sim_trials"] == 2
    again = T.tune(_request(tmp_path, budget=2), log=lambda m: None)
    assert len(calls) == 2 and again.tuning["sim_trials"] == 0  # everything from the cache
    assert again.tuning["aicore_us"] == first.tuning["aicore_us"]
    resumed = T.tune(_request(tmp_path, budget=4), log=lambda m: None)  # a larger budget times only new points
    assert len(calls) == 4 and resumed.tuning["sim_trials"] == 2 and resumed.tuning["aicore_us"] == 85.0


def test_recheck_failure_falls_back_to_the_next_best(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(T, "sim_trial", _fake_sim(calls))
    monkeypatch.setattr(T, "recheck", _fake_recheck(bad=(1,)))  # every device_sched_mode=1 candidate is wrong
    res = T.tune(_request(tmp_path, budget=4), log=lambda m: None)
    assert res.tuning["aicore_us"] == 90.0 and res.tuning["pypto_options"]["device_sched_mode"] == 0


def test_optuna_sampler_times_the_default_first(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(T, "sim_trial", _fake_sim(calls))
    monkeypatch.setattr(T, "recheck", _fake_recheck())
    req = _request(tmp_path, budget=3, space=["combine_axis=False"])  # a large space: optuna TPE
    res = T.tune(req, log=lambda m: None)
    assert res.trials[0].params == T.default_params(T.build_space(PYPTO_PIPELINE, req.space))
    assert res.tuning["evaluated"] == 3 and res.tuning["default_aicore_us"] == 100.0


def _tuning_file(tmp_path, **changes):
    dims = T.build_space(PYPTO_PIPELINE)
    params = {**T.default_params(dims), "tile-softmax.kv-tile": 64, "vec_nbuffer_setting": "{-1: 2}"}
    data = {"attnc_tuning": 1, "stage": "sparse_attn_core", "config": "tiny", "set": [],
            "pipeline": T.candidate_pipeline(PYPTO_PIPELINE, dims, params),
            "pypto_options": {k: T._literal_text(v) for k, v in T.candidate_options(dims, params).as_dict().items()}}
    data.update(changes)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_tuning_file_applies_to_compile(tmp_path, capsys):
    path = _tuning_file(tmp_path)
    out = tmp_path / "out"
    assert main(["compile", "sparse_attn_core", "--tuning", path, "--emit", "pypto", "-o", f"{out}/"]) == 0
    text = (out / "sparse_attn_core.pypto.py").read_text()
    assert "'vec_nbuffer_setting': {-1: 2}" in text
    # --pypto-option still overrides one key of the file
    assert main(["compile", "sparse_attn_core", "--tuning", path, "--emit", "pypto", "-o", f"{out}/",
                 "--pypto-option", "vec_nbuffer_setting={-1: 4}"]) == 0
    assert "'vec_nbuffer_setting': {-1: 4}" in (out / "sparse_attn_core.pypto.py").read_text()
    # the file's pipeline is the one compiled
    assert main(["compile", "sparse_attn_core", "--tuning", path, "--print-ir-after", "tile-softmax"]) == 0
    assert "tile-softmax{kv-tile=64}" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"attnc_tuning": 7}, "not an attnc tuning file"),
    ({"stage": "hca_attn_core"}, "tuned for stage 'hca_attn_core'"),
    ({"pipeline": "no-such-pass"}, "unknown pass 'no-such-pass'"),
    ({"pypto_options": {"vec_tile_elems": "__import__('os')"}}, "vec_tile_elems"),
    ({"pypto_options": {"bogus": 1}}, "unknown pypto option 'bogus'"),
    ({"pypto_options": {"vec_nbuffer_setting": "{-1: "}}, "is not a Python literal"),
    ({"pypto_options": {"vec_nbuffer_setting": [1]}}, "expected a dict of int -> int"),
    ({"extra": 1}, "unknown key 'extra'"),
])
def test_bad_tuning_file_is_one_line_exit_2(tmp_path, capsys, change, message):
    path = _tuning_file(tmp_path, **change)
    assert main(["compile", "sparse_attn_core", "--tuning", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnc: error: ") and message in err[0]


def test_missing_or_malformed_tuning_file(tmp_path, capsys):
    assert main(["compile", "sparse_attn_core", "--tuning", str(tmp_path / "none.json")]) == 2
    (tmp_path / "bad.json").write_text("[1, 2")
    assert main(["run", "sparse_attn_core", "--tuning", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "cannot read tuning file" in err[0] and "not a JSON tuning file" in err[1]


def test_tune_cli_errors(tmp_path, capsys):
    assert main(["tune", "sparse_attn_core", "--budget", "0", "-o", str(tmp_path / "t.json")]) == 2
    assert main(["tune", "sparse_attn_core", "--space", "bogus=1", "-o", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--budget must be at least 1" in err[0] and "unknown dimension 'bogus'" in err[1]
    assert not (tmp_path / "t.json").exists()


def test_plot_of_trials(tmp_path):
    pytest.importorskip("matplotlib")
    trials = [T.Trial(1, {}, "timed", 50.0, sim_index=1), T.Trial(2, {}, "sim-error", None, sim_index=2),
              T.Trial(3, {}, "timed", 40.0, sim_index=3)]
    path = tmp_path / "p.png"
    assert T.plot_trials(trials, "x", str(path)) and path.read_bytes()[:4] == b"\x89PNG"


@needs_pypto
def test_recheck_on_the_tensor_graph_only_still_compares_outputs_bit_for_bit(tmp_path, monkeypatch):
    """--recheck-verify tensor-graph (the whole-layer re-check that fits memory): pypto's per-pass records are not
    made, the outputs are still compared with the interpreter (a missing output would fail the re-check)."""
    monkeypatch.setenv("ATTNC_TUNE_CACHE", str(tmp_path / "cache"))
    req = T.TuneRequest(source="sparse_attn_core", config="tiny", budget=1, recheck_verify="tensor-graph")
    data = T.tune(req).tuning
    assert data["recheck"]["verify"] == "tensor-graph" and data["recheck"]["max_error"] == 0.0
    assert data["recheck"]["failed_records"] == 0


@needs_pypto
def test_tune_in_sim_at_tiny(tmp_path, capsys):
    """A real tune: two candidates timed in SIM in a worker process, the best re-checked against the
    interpreter, the file written and applied; the repeat is served by the cache."""
    out = tmp_path / "tiny.json"
    argv = ["tune", "sparse_attn_core", "--config", "tiny", "--budget", "2", "--jobs", "1", "-o", str(out)]
    import os

    os.environ["ATTNC_TUNE_CACHE"] = str(tmp_path / "cache")
    try:
        assert main(argv) == 0
        err = capsys.readouterr().err
        data = json.loads(out.read_text())
        assert data["sim_trials"] == 2 and data["evaluated"] == 2
        assert data["aicore_us"] <= data["default_aicore_us"] and data["aicore_us"] > 0
        assert data["recheck"]["max_error"] == 0.0  # bf16 outputs bit for bit
        assert data["recheck"]["verify"] == "default"
        assert "re-check passed" in err and (tmp_path / "tiny.png").exists()
        assert main(argv) == 0
        assert json.loads(out.read_text())["sim_trials"] == 0
    finally:
        del os.environ["ATTNC_TUNE_CACHE"]
    assert main(["compile", "sparse_attn_core", "--tuning", str(out), "--emit", "pypto", "-o", str(tmp_path)]) == 0


@needs_pypto
@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="ray is not installed (optional extra: pip install 'attnc[ray]')")
def test_tune_on_a_local_ray_instance(tmp_path, monkeypatch):
    import ray

    monkeypatch.setattr(T, "recheck", _fake_recheck())  # the SIM re-check is covered by test_tune_in_sim_at_tiny
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        req = _request(tmp_path, budget=1, ray="local", space=[*_request(tmp_path).space[:-2],
                                                               "vec_nbuffer_setting={-1: 4}", "device_sched_mode=0"])
        res = T.tune(req, log=lambda m: None)
    finally:
        ray.shutdown()
    assert res.tuning["sim_trials"] == 1 and res.tuning["aicore_us"] > 0
    assert res.trials[0].status == "timed"


def test_recheck_limit_is_one_rounding_step_of_the_largest_value():
    """bf16 outputs may differ by one rounding step of their largest |value| (pypto's f32 order): at a largest
    value of 0.3496 that step (2^-9) is 5.6e-3 of it, above the 2^-8 floor; two steps fail."""
    import torch

    from attnc.passes.verify import normalised_error

    want = torch.tensor([0.349609375, -0.1, 0.01, -3.0e38], dtype=torch.bfloat16)  # -3e38: a sentinel, no scale
    one, two = want.clone(), want.clone()
    one[0] += 2.0 ** -9
    two[0] += 2.0 ** -8
    assert 2.0 ** -8 < normalised_error(one, want) <= T.recheck_limit(want)
    assert normalised_error(two, want) > T.recheck_limit(want)
    top = torch.tensor([0.49609375], dtype=torch.bfloat16)  # the top of its binade: one step is ~ the floor
    assert 2.0 ** -8 < T.recheck_limit(top) < 2.0 ** -8 * 1.01
    assert T.recheck_limit(torch.ones(3)) == 1e-3 and T.recheck_limit(torch.ones(3, dtype=torch.int32)) == 0.0


def test_a_live_line_names_the_candidates_in_sim(tmp_path, monkeypatch, capsys):
    """While candidates run in SIM (up to --timeout each) a progress line names them (on a terminal, or forced)."""
    monkeypatch.setenv("ATTNC_PROGRESS", "1")
    monkeypatch.setattr(T, "sim_trial", _fake_sim([]))
    monkeypatch.setattr(T, "recheck", _fake_recheck())
    T.tune(_request(tmp_path, budget=2), log=lambda m: None)
    assert "tune: in SIM: trial " in capsys.readouterr().err



@needs_pypto
def test_a_trial_gets_its_host_constants_from_its_program():
    """The trials share one inputs file, which holds no host constants (pypto-legalize `host_constant`): the
    program carries their values (HOST_CONSTANT_VALUES) and runs; without them it fails to run."""
    from attnc.codegen.pypto.emit import emit_pypto
    from attnc.ir.types import to_numpy
    from attnc.kernels_src import STAGES, build_stage, resolve_config
    from attnc.kernels_src.inputs import make_inputs

    cfg = resolve_config("tiny")
    module = build_stage(STAGES["indexer"], cfg)
    run_pipeline(module, PYPTO_PIPELINE)
    arrays = {k: to_numpy(v) for k, v in make_inputs(STAGES["indexer"], cfg, 0).items()}
    program = emit_pypto(module)
    assert "HOST_CONSTANT_NAMES" in program
    bare = program[:program.index("\n\n\n# the values of HOST_CONSTANT_NAMES")] + "\n"
    assert "'hc0' missing" in T.sim_trial(bare, "indexer", arrays, 300)["error"]
    assert T.sim_trial(program, "indexer", arrays, 300)["aicore_us"] > 0
