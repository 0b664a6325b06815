"""A profiler answers for an architecture: a new one, predicting or measuring, is one class and one
registration, and ``ens`` runs with it without knowing its name."""

from __future__ import annotations

import shutil

import optuna
import pytest

from ens.errors import EnsError
from ens.profiling import measurer_of, profile_arch
from ens.search.driver import SearchOptions, run_search
from ens.zoo.store import Zoo
from profilers.base import Profiler, WrappingProfiler
from profilers.cache import CachedProfiler
from profilers.errors import MeasurementError
from profilers.lut import LUTProfiler
from profilers.networks import NetworkSpec
from profilers.registry import get_profiler, register_profiler
from profilers.result import PREDICTED, LatencyResult
from search_spaces import Arch

COST_MS = {"T": 3.0, "M": 2.0, "E": 1.0, "S": 1.5, "L": 0.5, "I": 0.0}


class BlockCountPredictor(Profiler):
    """Predicts a fixed cost per block of each kind (3 ms per transformer block ...); never measures."""

    name = "test-block-costs"
    predicts = True

    @property
    def device(self) -> str:
        return "a test device"

    def measure(self, onnx_path, input_shape, precision=None) -> LatencyResult:
        raise MeasurementError("this profiler only predicts")

    def profile(self, net: NetworkSpec, precision=None, **_) -> LatencyResult:
        ms = sum(COST_MS[k] for ks in net.kinds.values() for k in ks)
        return LatencyResult(median_ms=ms, p90_ms=ms, runs=0, device=self.device,
                             details={"source": PREDICTED}, profiler=self.spec, input_shape=net.shape,
                             precision=self.resolve_precision(precision))


@register_profiler("test-block-costs", "a predicting profiler registered by a test module")
def _block_costs(arg, options) -> Profiler:
    return BlockCountPredictor()


def test_search_runs_with_a_profiler_registered_in_a_test_module(micro_zoo, tmp_path):
    root = tmp_path / "zoo"
    shutil.copytree(micro_zoo, root / "deblur-tiny")
    study, s = run_search(SearchOptions(task="deblur", profiler="test-block-costs", trials=4, workers=0,
                                        storage=str(tmp_path / "s.db"), zoo_root=str(root), shape="1x3x32x32",
                                        sampler="random"), log=lambda m: None)
    assert s.completed == 4
    cfg = Zoo.load(root / "deblur-tiny").config
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        kinds = Arch.parse(t.user_attrs["arch"]).block_kinds(cfg)
        assert t.user_attrs["latency"] == sum(COST_MS[k] for ks in kinds.values() for k in ks)
        assert t.user_attrs["latency_source"] == PREDICTED and t.user_attrs["latency_unit"] == "ms"
        assert t.user_attrs["macs"] > 0, "MACs counted by torch when the profiler gives none"


def test_profilers_declare_what_they_are():
    ort = get_profiler("ort-cpu")
    assert not ort.predicts and ort.measurer is ort and ort.unit == "ms" and ort.float_precision == "fp32"
    lut = get_profiler("lut:ort-cpu?threads=1")
    assert isinstance(lut, WrappingProfiler) and lut.predicts and lut.measurer.spec == "ort-cpu?threads=1"
    proxy = get_profiler("proxy")
    assert proxy.predicts and proxy.measurer is None and proxy.unit == "count"
    assert get_profiler("trt").float_precision == "fp16"
    assert get_profiler("lut:trt").float_precision == "fp16", "a wrapper answers for its device"
    with pytest.raises(EnsError, match="needs a measured profiler"):
        measurer_of("proxy")
    with pytest.raises(EnsError, match="needs a measured profiler"):
        measurer_of(BlockCountPredictor())


def test_cache_and_table_share_one_wrapping_base():
    inner = get_profiler("ort-cpu?threads=1&runs=3")
    for w in (CachedProfiler(inner, cache=None), LUTProfiler(inner)):
        assert isinstance(w, WrappingProfiler)
        assert (w.device, w.precisions, w.default_precision) == (inner.device, inner.precisions,
                                                                  inner.default_precision)
    assert CachedProfiler(inner).spec == inner.spec and LUTProfiler(inner).spec == f"lut:{inner.spec}"


def test_a_table_profiler_prepares_its_table_once(tmp_path, micro_cfg):
    shape = (1, 3, 32, 32)
    lut = LUTProfiler(get_profiler("ort-cpu?threads=1&runs=2&warmup=1&rounds=1"), tables_dir=tmp_path)
    said: list[str] = []
    lut.prepare(micro_cfg.to_dict(), shape, ["T", "E"], said.append)
    assert len(said) == 2 and "calibrating" in said[0] and "written" in said[1]
    lut.prepare(micro_cfg.to_dict(), shape, ["T", "E"], said.append)
    assert len(said) == 2, "a table that exists is not calibrated again"
    r = profile_arch(Arch.uniform("E"), lut, micro_cfg, shape)
    # the value itself is a least-squares fit of 2-run timings of 32x32 networks: not asserted
    assert r.source == PREDICTED and r.median_ms == r.median_ms and r.details["arch_hash"] == Arch.uniform("E").hash
