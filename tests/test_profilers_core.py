"""LatencyResult, shapes, spec parsing/registry, errors, the cache and ONNX metadata."""

from __future__ import annotations

import math
import os
import random
import sqlite3
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from profilers import onnx_info
from profilers.base import InvalidShape, Profiler, format_shape, parse_shape
from profilers.cache import (
    FILENAME,
    TABLE,
    CachedProfiler,
    CacheKey,
    LatencyCache,
    default_cache_dir,
    file_key,
    is_corrupt,
)
from profilers.errors import ProfilerError, UnknownProfiler
from profilers.registry import get_profiler, profiler_names, split_spec
from profilers.result import MEASURED, PREDICTED, LatencyResult, summarize_ms


def tiny_onnx(path, shape=(1, 3, 8, 8), meta=None):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, list(shape))
    w = helper.make_tensor("w", TensorProto.FLOAT, [shape[1], shape[1], 1, 1],
                           np.eye(shape[1], dtype=np.float32).ravel().tolist())
    node = helper.make_node("Conv", ["input", "w"], ["output"], name="/patch_embed/Conv")
    graph = helper.make_graph([node], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    if meta:
        onnx_info.annotate(path, **meta)
    return path


# -- result ---------------------------------------------------------------------------------------
def test_latency_result_round_trip_and_nan():
    r = LatencyResult(1.5, math.nan, 10, "dev", {"source": MEASURED, "x": np.float32(2.0)}, "ort-cpu", (1, 3, 8, 8))
    d = r.to_dict()
    assert d["p90_ms"] is None and d["details"]["x"] == 2.0
    back = LatencyResult.from_dict(d)
    assert back.median_ms == 1.5 and math.isnan(back.p90_ms) and back.input_shape == (1, 3, 8, 8)
    assert back.source == MEASURED and back.is_time
    with pytest.raises(AttributeError):
        r.median_ms = 2.0  # frozen
    assert r.replace(details={"source": PREDICTED}).source == PREDICTED


def test_summarize_ms():
    med, p90 = summarize_ms([1, 2, 3, 4, 100])
    assert med == 3 and 4 < p90 <= 100
    with pytest.raises(ValueError):
        summarize_ms([])


# -- shapes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [("1x3x256x256", (1, 3, 256, 256)), (" 1X3x32x32 ", (1, 3, 32, 32)),
                                       ((1, 3, 8, 8), (1, 3, 8, 8))])
def test_parse_shape(text, want):
    assert parse_shape(text) == want
    assert format_shape(want) == "x".join(map(str, want))


@pytest.mark.parametrize("bad", ["", "1x3x", "axb", "1x0x8x8", "1x-3x8", (1, -1)])
def test_parse_shape_rejects(bad):
    with pytest.raises(InvalidShape) as e:
        parse_shape(bad)
    assert isinstance(e.value, ProfilerError) and e.value.exit_code == 2


# -- registry -------------------------------------------------------------------------------------
def test_split_spec():
    assert split_spec("ort-cpu") == ("ort-cpu", None, {})
    assert split_spec("ort-cpu?threads=1&clock=cpu") == ("ort-cpu", None, {"threads": "1", "clock": "cpu"})
    assert split_spec('qaihub:"Snapdragon 8 Elite QRD"?runtime=onnx') == (
        "qaihub", "Snapdragon 8 Elite QRD", {"runtime": "onnx"})
    assert split_spec("lut:trt:ssh://a@b?trtexec=/x") == ("lut", "trt:ssh://a@b?trtexec=/x", {})


def test_registry_builds_every_profiler():
    assert {"ort-cpu", "trt", "qaihub", "proxy", "lut"} <= set(profiler_names())
    specs = {
        "ort-cpu": "ort-cpu",
        "ort-cpu?threads=1&clock=cpu": "ort-cpu?threads=1&clock=cpu",
        "proxy": "proxy",
        "trt": "trt",
        "trt:ssh://nvidia@orin:2222/home/nvidia/ens?trtexec=/usr/src/tensorrt/bin/trtexec":
            "trt:ssh://nvidia@orin:2222/home/nvidia/ens?trtexec=/usr/src/tensorrt/bin/trtexec",
        'qaihub:"Snapdragon 8 Elite QRD"': "qaihub:Snapdragon 8 Elite QRD",
        "lut:ort-cpu": "lut:ort-cpu",
        "lut:qaihub:Snapdragon 8 Elite QRD?runtime=qnn_context_binary":
            "lut:qaihub:Snapdragon 8 Elite QRD?runtime=qnn_context_binary",
    }
    for spec, canon in specs.items():
        p = get_profiler(spec)
        assert isinstance(p, Profiler)
        assert p.spec == canon
        assert get_profiler(p.spec).spec == canon  # the canonical spec rebuilds the same profiler
        assert p.device


@pytest.mark.parametrize("bad", ["", "nope", "ort-cpu:x", "ort-cpu?bogus=1", "ort-cpu?threads=two", "qaihub",
                                 "lut", "lut:lut:ort-cpu", "lut:proxy", "trt:http://x", "trt:ssh://-oProxy@h",
                                 "trt:ssh://u@h/tmp/$(rm)", "trt:ssh://u:pw@h", "proxy:x",
                                 "qaihub:S8?runtime=bogus"])
def test_bad_specs_are_unknown_profiler(bad):
    with pytest.raises(UnknownProfiler):
        get_profiler(bad)


# -- metadata -------------------------------------------------------------------------------------
def test_annotate_and_read_metadata(tmp_path):
    p = tiny_onnx(tmp_path / "m.onnx", meta={"arch": "enc:T,T,T|lat:T|dec:T,T,T|ref:T", "arch_hash": "abc",
                                                "block_kinds": {"enc1": ["T"]}, "config": {"dim": 8}})
    meta = onnx_info.read_metadata(p)
    assert meta["arch_hash"] == "abc" and meta["block_kinds"] == {"enc1": ["T"]} and meta["config"] == {"dim": 8}
    onnx_info.annotate(p, arch_hash="def")
    assert onnx_info.read_metadata(p)["arch_hash"] == "def"
    assert onnx_info.input_shape(p) == (1, 3, 8, 8)
    assert onnx_info.input_name(p) == "input"
    assert onnx_info.graph_precision(p) == "fp32"
    onnx_info.check_input_shape(p, (1, 3, 8, 8))
    with pytest.raises(ValueError):
        onnx_info.check_input_shape(p, (1, 3, 16, 16))
    counts = onnx_info.graph_counts(p)
    assert counts["macs"] == 8 * 8 * 3 * 3 and counts["conv"] == 1 and counts["softmax"] == 0


# -- cache ----------------------------------------------------------------------------------------
class CountingProfiler(Profiler):
    name = "counting"

    def __init__(self, source=MEASURED):
        self.calls = 0
        self.source = source

    @property
    def device(self):
        return "test-device"

    def measure(self, onnx_path, input_shape, precision=None):
        self.calls += 1
        return LatencyResult(float(self.calls), float(self.calls), 3, self.device, {"source": self.source},
                             self.spec, parse_shape(input_shape), self._precision(precision))


def test_cache_default_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ENS_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "latency"
    cache = LatencyCache()
    assert cache.path.parent == tmp_path / "latency" and cache.path.exists()


def test_cache_put_get_and_keys(tmp_path):
    cache = LatencyCache(tmp_path / "c")
    key = CacheKey.make("h1", "ort-cpu", "1x3x8x8", "fp32", device="cpu")
    assert cache.get(key) is None and len(cache) == 0
    r = LatencyResult(2.0, 3.0, 5, "cpu", {"source": MEASURED}, "ort-cpu", (1, 3, 8, 8))
    cache.put(key, r)
    assert cache.get(key) == r and key in cache and len(cache) == 1
    assert cache.get(CacheKey.make("h1", "ort-cpu", "1x3x8x8", "int8", device="cpu")) is None
    assert cache.keys() == [key]
    # a second handle on the same file sees it (another process would too)
    assert LatencyCache(cache.path).get(key) == r


def test_a_latency_of_an_older_graph_revision_is_not_served(tmp_path, monkeypatch):
    """The same architecture exported by an older ens (another graph) keeps its rows but never answers."""
    import profilers.cache as pc

    key = CacheKey.make("h1", "ort-cpu", "1x3x8x8", "fp32", device="cpu")
    r = LatencyResult(2.0, 3.0, 5, "cpu", {"source": MEASURED}, "ort-cpu", (1, 3, 8, 8))
    monkeypatch.setattr(pc, "TABLE", f"results_g{pc.GRAPH_REVISION - 1}")
    LatencyCache(tmp_path / "c").put(key, r)
    assert LatencyCache(tmp_path / "c").get(key) == r
    monkeypatch.setattr(pc, "TABLE", f"results_g{pc.GRAPH_REVISION}")
    cache = LatencyCache(tmp_path / "c")
    assert cache.get(key) is None and len(cache) == 0


def test_cached_profiler_measures_once(tmp_path):
    inner = CountingProfiler()
    cp = CachedProfiler(inner, tmp_path)
    p = tiny_onnx(tmp_path / "m.onnx", meta={"arch_hash": "archA"})
    a = cp.measure(p, (1, 3, 8, 8))
    b = cp.measure(p, (1, 3, 8, 8))
    assert inner.calls == 1 and a.median_ms == b.median_ms and b.details["cache"] == "hit"
    assert cp.lookup("archA", (1, 3, 8, 8)).median_ms == 1.0
    cp.measure(p, (1, 3, 8, 8), arch_hash="archB")  # another key: measured
    assert inner.calls == 2
    assert file_key(p) == "archA"
    q = tiny_onnx(tmp_path / "q.onnx")
    assert file_key(q).startswith("sha256:")


def test_cached_profiler_does_not_cache_predictions(tmp_path):
    inner = CountingProfiler(source=PREDICTED)
    cp = CachedProfiler(inner, tmp_path)
    p = tiny_onnx(tmp_path / "m.onnx", meta={"arch_hash": "x"})
    cp.measure(p, (1, 3, 8, 8))
    cp.measure(p, (1, 3, 8, 8))
    assert inner.calls == 2 and len(cp.cache) == 0


def test_conftest_isolates_cache():
    assert "ens-cache" in os.environ["ENS_CACHE_DIR"]


def corrupt_files(directory):
    return sorted(directory.glob(f"{FILENAME}.corrupt-*"))


def test_garbage_cache_file_is_set_aside_and_rebuilt(tmp_path):
    path = default_cache_dir() / FILENAME  # $ENS_CACHE_DIR/latency/latency.sqlite
    path.parent.mkdir(parents=True, exist_ok=True)
    garbage = random.Random(0).randbytes(4096)
    path.write_bytes(garbage)
    inner = CountingProfiler()
    with pytest.warns(RuntimeWarning, match="not a readable SQLite database") as caught:
        cp = CachedProfiler(inner)
    onnx_path = tiny_onnx(tmp_path / "m.onnx", meta={"arch_hash": "archA"})
    assert cp.measure(onnx_path, (1, 3, 8, 8)).median_ms == 1.0
    assert cp.measure(onnx_path, (1, 3, 8, 8)).details["cache"] == "hit" and inner.calls == 1
    [aside] = corrupt_files(path.parent)
    assert aside.read_bytes() == garbage
    [warning] = [str(w.message) for w in caught]
    assert str(path) in warning and str(aside) in warning and "\n" not in warning
    assert sqlite3.connect(path).execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone() == (1,)


def test_cache_file_truncated_while_in_use_is_set_aside(tmp_path):
    cache = LatencyCache(tmp_path)
    big = LatencyResult(2.0, 3.0, 5, "cpu", {"source": MEASURED, "pad": "x" * 3000}, "ort-cpu", (1, 3, 8, 8))
    keys = [CacheKey.make(f"h{i}", "ort-cpu", "1x3x8x8", "fp32", device="cpu") for i in range(200)]
    for key in keys:
        cache.put(key, big)
    with open(cache.path, "r+b") as f:
        f.truncate(cache.path.stat().st_size // 3)
    with pytest.warns(RuntimeWarning, match="malformed"):
        assert cache.get(keys[-1]) is None
    assert len(corrupt_files(tmp_path)) == 1 and len(cache) == 0
    cache.put(keys[0], big)
    assert LatencyCache(tmp_path).get(keys[0]) == big


def test_only_corrupt_files_are_set_aside(tmp_path):
    db = sqlite3.connect(tmp_path / "ok.sqlite")
    with pytest.raises(sqlite3.DatabaseError) as no_table:
        db.execute("SELECT * FROM missing")
    assert not is_corrupt(no_table.value)  # an OperationalError, like "database is locked"
    (tmp_path / "bad.sqlite").write_bytes(b"\x00" * 100 + b"not sqlite" * 100)
    with pytest.raises(sqlite3.DatabaseError) as not_db:
        sqlite3.connect(tmp_path / "bad.sqlite").execute("SELECT 1 FROM sqlite_master")
    assert is_corrupt(not_db.value)
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / FILENAME).mkdir()  # cannot be opened at all: an error, not a file to move
    with pytest.raises(sqlite3.OperationalError):
        LatencyCache(tmp_path / "dir")
    assert corrupt_files(tmp_path / "dir") == []


def test_a_sound_cache_file_is_never_set_aside(tmp_path):
    """Another process may have replaced the corrupt file already: then there is nothing to move."""
    cache = LatencyCache(tmp_path)
    cache.put(CacheKey.make("h", "ort-cpu", "1x3x8x8", "fp32", device="cpu"),
              LatencyResult(2.0, 3.0, 5, "cpu", {"source": MEASURED}, "ort-cpu", (1, 3, 8, 8)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache._set_aside(sqlite3.DatabaseError("file is not a database"))
    assert corrupt_files(tmp_path) == [] and len(cache) == 1
