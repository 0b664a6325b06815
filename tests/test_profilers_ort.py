"""ort-cpu (measured), proxy (counts), INT8 quantization, and the ens glue, on a micro U-Net at 32x32."""

from __future__ import annotations

import os

import pytest

from blocks import UNetConfig
from blocks.stats import count_macs
from ens.errors import EnsError
from ens.profiling import (
    available_kinds,
    build_network,
    export_arch,
    parse_arch,
    parse_kinds,
    profile_arch,
    random_archs,
)
from profilers import onnx_info
from profilers.errors import MeasurementError, ProfilerError
from profilers.ort_cpu import OrtCpuProfiler, parse_ort_profile
from profilers.proxy import ProxyProfiler
from profilers.registry import get_profiler
from search_spaces import Arch
from search_spaces.errors import ArchError

CFG = UNetConfig(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))
SHAPE = (1, 3, 32, 32)
ARCH = "enc:T,E,T|lat:E|dec:T,E,E|ref:T"
FAST = {"warmup": 1, "runs": 3, "rounds": 1}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("ort")
    arch = Arch.parse(ARCH)
    return arch, export_arch(arch, CFG, SHAPE, d / "a.onnx")


def test_export_arch_annotates(exported):
    arch, path = exported
    meta = onnx_info.read_metadata(path)
    assert meta["arch"] == str(arch) and meta["arch_hash"] == arch.hash
    assert meta["block_kinds"] == arch.block_kinds(CFG) and meta["config"] == CFG.to_dict()
    assert onnx_info.block_kinds_from_graph(path) == arch.block_kinds(CFG)  # node names agree


def test_ort_cpu_measure(exported):
    _, path = exported
    p = OrtCpuProfiler(threads=2, **FAST)
    r = p.measure(path, SHAPE)
    assert r.median_ms > 0 and r.p90_ms >= r.median_ms * 0.999 and r.runs == 3
    assert r.source == "measured" and r.device.endswith("2 threads") and r.precision == "fp32"
    d = r.details
    assert d["threads"] == 2 and d["clock"] == "wall" and d["onnxruntime"] and d["min_ms"] <= r.median_ms
    assert r.profiler == "ort-cpu" and r.input_shape == SHAPE


def test_ort_cpu_cpu_clock(exported):
    _, path = exported
    p = get_profiler("ort-cpu?threads=1&clock=cpu&runs=3&warmup=1")
    r = p.measure(path, SHAPE)
    assert r.median_ms > 0 and r.details["clock"] == "cpu" and "cpu time" in r.device
    assert p.spec == "ort-cpu?threads=1&clock=cpu"


def test_measure_many_interleaves_and_keeps_order(exported, tmp_path):
    _, path = exported
    skel = export_arch(Arch.uniform("E"), CFG, SHAPE, tmp_path / "e.onnx")
    for max_sessions in (8, 1):  # all sessions open / recreated at each visit
        p = OrtCpuProfiler(runs=4, rounds=2, warmup=1, max_sessions=max_sessions)
        rs = p.measure_many([path, skel, path], SHAPE)
        assert [r.runs for r in rs] == [4, 4, 4]
        assert rs[0].details["interleaved_with"] == 2
        assert rs[0].details["sessions_kept_open"] is (max_sessions == 8)


def test_breakdown_per_operator(exported, tmp_path, monkeypatch):
    _, path = exported
    monkeypatch.chdir(tmp_path)
    r = OrtCpuProfiler(breakdown=True, breakdown_runs=2, **FAST).measure(path, SHAPE)
    bd = r.details["breakdown"]
    ops = {row["op"] for row in bd["by_op_type"]}
    assert "Conv" in ops and bd["total_kernel_ms"] > 0 and bd["top_nodes"]
    assert sum(row["share"] for row in bd["by_op_type"]) == pytest.approx(1.0)
    assert not any(f.startswith("onnxruntime_profile") for f in os.listdir(tmp_path))  # no stray trace files


def test_parse_ort_profile_synthetic():
    events = [
        {"cat": "Session", "name": "model_run", "dur": 1000},
        {"cat": "Session", "name": "model_run", "dur": 1200},
        {"cat": "Node", "name": "/a/Conv_kernel_time", "dur": 300, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "/a/Conv_kernel_time", "dur": 500, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "/b/Add_kernel_time", "dur": 200, "args": {"op_name": "Add"}},
        {"cat": "Node", "name": "/b/Add_fence_before", "dur": 1, "args": {"op_name": "Add"}},
    ]
    bd = parse_ort_profile(events, runs=2)
    assert bd["runs"] == 2 and bd["model_run_ms"] == pytest.approx(1.1)
    assert bd["by_op_type"][0] == {"op": "Conv", "ms": 0.4, "share": 0.8, "nodes": 1, "eight_bit_ms": 0.0}
    assert bd["top_nodes"][0]["node"] == "/a/Conv"


def test_precision_shares_count_8_bit_data_movement_as_integer():
    """A DepthToSpace or Transpose of a quantized tensor moves 8-bit data: it is not a float island. The element
    type comes from each event's ``input_type_shape``, as ONNX Runtime writes it."""
    from profilers.ort_cpu import precision_shares

    def node(name, op, dur, dtype):
        return {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur,
                "args": {"op_name": op, "input_type_shape": [{dtype: [1, 8, 16, 16]}, {"float": [1]}]}}

    events = [{"cat": "Session", "name": "model_run", "dur": 1000},
              node("/c", "QLinearConv", 400, "uint8"), node("/d2s_q", "DepthToSpace", 100, "uint8"),
              node("/d2s_f", "DepthToSpace", 100, "float"), node("/t", "Transpose", 50, "int8"),
              node("/ln", "LayerNormalization", 250, "float"), node("/dq", "DequantizeLinear", 100, "uint8"),
              {"cat": "Node", "name": "/old_kernel_time", "dur": 0, "args": {"op_name": "Relu"}}]  # no types
    shares = precision_shares(parse_ort_profile(events, runs=1))
    assert shares["integer_pct"] == 55.0 and shares["eight_bit_movement_pct"] == 15.0
    assert shares["qdq_pct"] == 10.0 and shares["float_pct"] == 35.0
    assert [(o["op"], o["pct"]) for o in shares["top_float_ops"]] == [("LayerNormalization", 25.0),
                                                                        ("DepthToSpace", 10.0)]


def test_ort_cpu_errors(exported, tmp_path):
    _, path = exported
    p = OrtCpuProfiler(**FAST)
    with pytest.raises(MeasurementError, match="1x3x32x32"):
        p.measure(path, (1, 3, 64, 64))
    with pytest.raises(MeasurementError, match="quantize"):
        p.measure(path, SHAPE, precision="int8")
    with pytest.raises(MeasurementError, match="no ONNX file"):
        p.measure(tmp_path / "missing.onnx", SHAPE)
    with pytest.raises(ProfilerError, match="fp16"):
        p.measure(path, SHAPE, precision="fp16")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ProfilerError):
        p.measure(tmp_path / "junk.onnx", SHAPE)
    with pytest.raises(ProfilerError):
        OrtCpuProfiler(clock="sundial")


def test_int8_quantized_graph(exported, tmp_path):
    from profilers.quantize import quantize_int8

    _, path = exported
    q = quantize_int8(path, tmp_path / "q.onnx", SHAPE, calibration_batches=1)
    assert onnx_info.graph_precision(q) == "int8"
    assert onnx_info.read_metadata(q)["arch_hash"] == onnx_info.read_metadata(path)["arch_hash"]
    r = OrtCpuProfiler(**FAST).measure(q, SHAPE, precision="int8")
    assert r.precision == "int8" and r.median_ms > 0
    with pytest.raises(MeasurementError, match="int8 graph"):
        OrtCpuProfiler(**FAST).measure(q, SHAPE, precision="fp32")


def test_proxy_from_metadata_and_from_graph(exported, tmp_path):
    arch, path = exported
    r = ProxyProfiler().measure(path, SHAPE)
    assert r.device == "proxy" and r.source == "proxy" and not r.is_time and r.runs == 0
    assert r.median_ms == arch.count(CFG, "T") == 4 and r.details["unit"] == "transformer blocks"
    assert r.details["count_from"].startswith("ens.block_kinds")
    torch_macs = count_macs(build_network(arch, CFG), SHAPE)
    # the graph's down-samplers are strided 4x4 convs (profilers.unshuffle_fusion): 16*2c*c MACs per output
    # pixel at H/2 x W/2 where PyTorch's conv3x3(c, c/2) does 9*c/2*c at H x W, so 3.5*H*W*c^2 more each
    fused_extra = sum(3.5 * (32 // 2**i) ** 2 * (8 * 2**i) ** 2 for i in range(3))
    assert r.details["macs"] == pytest.approx(torch_macs + fused_extra, rel=0.02)
    # without metadata: one Softmax per MDTA
    import onnx

    m = onnx.load(str(path))
    del m.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(m, str(bare))
    r2 = ProxyProfiler().measure(bare, SHAPE)
    assert r2.median_ms == 4 and r2.details["count_from"].startswith("Softmax")
    est = profile_arch(arch, ProxyProfiler(), CFG, SHAPE)  # from the block kinds, no file
    assert est.median_ms == 4 and est.details["macs"] == torch_macs and est.device == "proxy"
    assert est.details["count_from"] == "block kinds"


def test_profile_arch_uses_cache(tmp_path):
    p = OrtCpuProfiler(**FAST)
    arch = Arch.parse(ARCH)
    cache = tmp_path / "cache"
    a = profile_arch(arch, p, CFG, SHAPE, cache=cache)
    b = profile_arch(arch, p, CFG, SHAPE, cache=cache)
    assert a.details["arch_hash"] == arch.hash and b.details["cache"] == "hit" and b.median_ms == a.median_ms
    c = profile_arch(arch, "proxy", CFG, SHAPE, cache=cache)
    assert c.median_ms == 4


def test_glue_helpers():
    assert set(available_kinds()) >= {"T", "E"}
    assert parse_kinds("t, e") == ["T", "E"]
    with pytest.raises(EnsError, match="unknown block kind"):
        parse_kinds("Q")
    with pytest.raises(ArchError):
        parse_arch("enc:T,T|lat:T", CFG)
    with pytest.raises(ArchError):
        parse_arch("enc:TE,T,T|lat:T|dec:T,T,T|ref:T", CFG)  # two letters for a one-block stage
    archs = random_archs(10, CFG, ["T", "E"], seed=3)
    assert len({str(a) for a in archs}) == 10 and archs == random_archs(10, CFG, ["T", "E"], seed=3)
    assert all(a.kinds_used() <= {"T", "E"} for a in archs)
