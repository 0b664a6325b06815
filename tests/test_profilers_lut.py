"""Latency table: fitting, calibration pipeline, JSON, compatibility checks, the lut:... profiler."""

from __future__ import annotations

import importlib.util
import json
import math
import random
from pathlib import Path

import pytest

import profilers.onnx_export
from blocks import STAGES, UNetConfig, get_preset
from blocks.unet import stage_layout
from profilers.errors import TableMismatch, TableNotFound
from profilers.lut import (
    LatencyTable,
    LUTProfiler,
    calibrate_table,
    calibration_networks,
    default_table_path,
    fit_table,
)
from profilers.registry import get_profiler

_FAKES = Path(__file__).parent / "fixtures" / "profiling_fakes.py"
_spec = importlib.util.spec_from_file_location("profiling_fakes", _FAKES)
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)

CFG = UNetConfig(dim=8, num_blocks=(1, 2, 1, 2), num_refinement_blocks=1, heads=(1, 1, 2, 2))
SHAPE = (1, 3, 32, 32)


@pytest.fixture
def fast_export(monkeypatch):
    monkeypatch.setattr(profilers.onnx_export, "export_onnx", F.fake_export)


def random_kinds(cfg, kinds, rng):
    return {s.name: [rng.choice(kinds) for _ in range(s.depth)] for s in stage_layout(cfg)}


def test_calibration_networks_cover_skeleton_uniform_and_stages():
    nets = calibration_networks(CFG, ["T", "E"])
    assert len(nets) == 1 + 2 + len(STAGES) * 2
    assert all(k is None for ks in nets["skeleton"].values() for k in ks)
    assert nets["uniform:E"]["lat"] == ["E", "E"]
    assert nets["stage:lat:T"]["lat"] == ["T", "T"] and nets["stage:lat:T"]["enc1"] == [None]


def test_fit_table_recovers_additive_costs():
    stages = {s.name: s.depth for s in stage_layout(CFG)}
    med = {"skeleton": 10.0}
    for k, c in {"T": 5.0, "E": 2.0}.items():
        med[f"uniform:{k}"] = 10.0 + sum(c * d for d in stages.values()) * 1.2  # context makes full nets slower
        for s, d in stages.items():
            med[f"stage:{s}:{k}"] = 10.0 + c * d
    sk, costs, scales = fit_table(med, stages, ["T", "E"])
    assert sk == 10.0 and scales == pytest.approx({"T": 1.2, "E": 1.2})
    assert costs["lat"]["T"] == pytest.approx(6.0) and costs["enc1"]["E"] == pytest.approx(2.4)


def test_the_skip_kind_costs_nothing_and_no_block_costs_less_than_nothing():
    """The skip (I) network is the skeleton: it is not measured, and costs 0 (measured, its noise gave -5 ms a
    stage and a negative prediction for all-I). A block measured faster than no block counts as 0."""
    nets = calibration_networks(CFG, ["T", "I"])
    assert len(nets) == 1 + 1 + len(STAGES) and not [n for n in nets if n.endswith(":I")]
    stages = {s.name: s.depth for s in stage_layout(CFG)}
    med = {"skeleton": 10.0, "uniform:T": 10.0 + 3.0 * sum(stages.values())}
    med.update({f"stage:{s}:T": 10.0 + 3.0 * d for s, d in stages.items()})
    med["stage:lat:T"] = 9.0  # noise: below the skeleton
    sk, costs, scales = fit_table(med, stages, ["T", "I"])
    assert all(costs[s]["I"] == 0.0 for s in stages) and scales["I"] == 1.0
    assert costs["lat"]["T"] == 0.0 and all(costs[s]["T"] > 0 for s in stages if s != "lat")
    table_sum = sum(costs[s]["T"] * d for s, d in stages.items())
    assert table_sum == pytest.approx(med["uniform:T"] - sk)  # the uniform network is still reproduced


@pytest.mark.parametrize("context", [0.0, 0.15])
def test_calibrate_pipeline_predicts_additive_device_exactly(fast_export, context):
    prof = F.AdditiveProfiler(context=context)
    table = calibrate_table(prof, CFG, SHAPE, ["T", "M", "E"], preset=None)
    assert prof.batches == 1  # every calibration network in one interleaved batch
    assert prof.calls == 1 + 3 + len(STAGES) * 3
    assert table.scales["T"] == pytest.approx(1.0 + context)
    rng = random.Random(0)
    for _ in range(20):
        kinds = random_kinds(CFG, ["T", "M", "E"], rng)
        want = F.additive_latency(kinds, context)
        assert table.predict(kinds) == pytest.approx(want, rel=1e-9)
    assert table.device == "fake-device" and table.profiler == "fake-additive"
    assert table.versions["onnxruntime"] and table.versions["torch"] and "ens" in table.versions
    assert table.created and table.calibration_s > 0
    assert set(table.measurements) == set(calibration_networks(CFG, ["T", "M", "E"]))


def make_table():
    prof = F.AdditiveProfiler()
    return calibrate_table(prof, CFG, SHAPE, ["T", "E"], preset="micro")


def test_table_json_round_trip(fast_export, tmp_path):
    table = make_table()
    path = table.save(tmp_path / "t.json")
    d = json.loads(path.read_text())
    for key in ("device", "profiler", "input_shape", "config", "kinds", "versions", "created", "skeleton_ms",
                "costs", "scales", "calibration_s", "preset", "method"):
        assert key in d
    back = LatencyTable.load(path)
    k = random_kinds(CFG, ["T", "E"], random.Random(1))
    assert back.predict(k) == pytest.approx(table.predict(k))
    assert back.path == path


def test_table_mismatches(fast_export, tmp_path):
    table = make_table()
    with pytest.raises(TableMismatch, match="shape"):
        table.check_compatible(CFG.to_dict(), (1, 3, 64, 64))
    other = UNetConfig(dim=16, num_blocks=(1, 2, 1, 2), num_refinement_blocks=1, heads=(1, 1, 2, 2))
    with pytest.raises(TableMismatch, match="dim"):
        table.check_compatible(other.to_dict(), SHAPE)
    with pytest.raises(TableMismatch, match="int8"):
        table.check_compatible(CFG.to_dict(), SHAPE, "int8")
    table.check_compatible(CFG.to_dict(), SHAPE, "fp32")
    k = random_kinds(CFG, ["T", "E"], random.Random(2))
    k["lat"] = ["M", "M"]
    with pytest.raises(TableMismatch, match="'M' was not calibrated"):
        table.predict(k)
    k["lat"] = ["T"]
    with pytest.raises(TableMismatch, match="lat"):
        table.predict(k)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(TableMismatch):
        LatencyTable.load(bad)
    with pytest.raises(TableNotFound):
        LatencyTable.load(tmp_path / "missing.json")


def test_lut_profiler_reads_kinds_from_onnx(fast_export, tmp_path):
    table = make_table()
    lut = LUTProfiler(F.AdditiveProfiler(), table=table)
    kinds = random_kinds(CFG, ["T", "E"], random.Random(3))
    p = F.write_identity_onnx(tmp_path / "a.onnx", SHAPE, {"block_kinds": kinds, "config": CFG.to_dict(),
                                                           "arch": "x"})
    r = lut.measure(p, SHAPE)
    assert r.median_ms == pytest.approx(F.additive_latency(kinds)) and math.isnan(r.p90_ms)
    assert r.source == "predicted" and r.runs == 0 and r.profiler == "lut:fake-additive"
    assert sum(r.details["breakdown_ms"].values()) == pytest.approx(r.median_ms)
    with pytest.raises(TableMismatch, match="shape"):
        lut.measure(F.write_identity_onnx(tmp_path / "b.onnx", (1, 3, 64, 64), {"block_kinds": kinds}), (1, 3, 64, 64))
    with pytest.raises(TableMismatch, match="block kinds"):
        lut.measure(F.write_identity_onnx(tmp_path / "c.onnx", SHAPE), SHAPE)


def test_lut_profiler_finds_table_by_config_and_shape(fast_export, tmp_path):
    inner = get_profiler("ort-cpu")
    table = make_table()
    table.profiler, table.device = inner.spec, inner.device
    path = table.save(default_table_path(inner.spec, inner.device, SHAPE, "fp32", CFG.to_dict()))
    lut = get_profiler("lut:ort-cpu")
    kinds = random_kinds(CFG, ["T", "E"], random.Random(4))
    r = lut.predict_kinds(kinds, CFG.to_dict(), SHAPE)
    assert r.details["table"] == str(path)
    tiny = get_preset("tiny")
    with pytest.raises(TableNotFound, match="ens calibrate"):
        lut.predict_kinds({s.name: ["T"] * s.depth for s in stage_layout(tiny)}, tiny.to_dict(), SHAPE)
    with pytest.raises(TableNotFound):
        lut.predict_kinds(kinds, CFG.to_dict(), (1, 3, 16, 16))


def test_min_statistic_table(fast_export):
    from profilers.errors import MeasurementError, ProfilerError
    from profilers.lut import statistic_of
    from profilers.result import LatencyResult

    table = calibrate_table(F.AdditiveProfiler(), CFG, SHAPE, ["T", "E"], statistic="min")
    kinds = random_kinds(CFG, ["T", "E"], random.Random(5))
    assert table.statistic == "min" and table.predict(kinds) == pytest.approx(0.9 * F.additive_latency(kinds))
    assert LatencyTable.from_dict(table.to_dict()).statistic == "min"
    r = LatencyResult(2.0, 3.0, 1, "d", {"min_ms": 1.5})
    assert statistic_of(r) == 2.0 and statistic_of(r, "min") == 1.5
    with pytest.raises(MeasurementError):
        statistic_of(LatencyResult(2.0, 3.0, 1, "d", {}), "min")
    with pytest.raises(ProfilerError):
        statistic_of(r, "mean")
    with pytest.raises(ProfilerError):
        calibrate_table(F.AdditiveProfiler(), CFG, SHAPE, ["T"], statistic="mode")


def test_a_table_of_an_older_graph_revision_is_refused(fast_export, tmp_path):
    from profilers.cache import GRAPH_REVISION

    table = calibrate_table(F.AdditiveProfiler(), CFG, SHAPE, ["T", "E"], preset=None)
    assert f"-g{GRAPH_REVISION}" in table.default_path(tmp_path).name
    d = table.to_dict()
    assert d["graph_revision"] == GRAPH_REVISION
    LatencyTable.from_dict(d).check_compatible(CFG.to_dict(), SHAPE)
    del d["graph_revision"]  # a table written before revisions were recorded timed revision 1
    with pytest.raises(TableMismatch, match="revision 1 of the exported graphs.*calibrate it again"):
        LatencyTable.from_dict(d).check_compatible(CFG.to_dict(), SHAPE)
