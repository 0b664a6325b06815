"""INT8 latency times the graph finalize ships (onnx_int8), and never serves one graph's time for another's."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import ens  # noqa: F401  (registers the onnx_int8 graph)
from profilers import int8_graphs
from profilers.base import Profiler, parse_shape
from profilers.lut import default_table_path
from profilers.networks import NetworkSpec, export_network
from profilers.onnx_graph import GraphIndex
from profilers.result import MEASURED, LatencyResult


class CountingInt8(Profiler):
    name = "counting-int8"
    precisions = ("fp32", "int8")

    def __init__(self):
        self.calls = 0

    @property
    def device(self):
        return "test-device"

    def measure(self, onnx_path, input_shape, precision=None):
        self.calls += 1
        return LatencyResult(1.0, 1.0, 1, self.device, {"source": MEASURED}, self.spec, parse_shape(input_shape),
                             self._precision(precision))


@pytest.fixture
def micro_net(micro_cfg):
    kinds = {"enc1": ["E"], "enc2": ["T", "E"], "enc3": ["L"], "lat": ["S", "I"], "dec3": ["E"], "dec2": ["M", "E"],
             "dec1": ["E"], "ref": ["E"]}
    return NetworkSpec(kinds, micro_cfg.to_dict(), (1, 3, 32, 32), label="micro")


def test_ens_makes_the_shipped_graph_the_one_timed(micro_net, tmp_path):
    from ens.finalize.qat import placement_for, weight_bits_for

    assert int8_graphs.int8_graph_name() == "onnx_int8"
    path = export_network(micro_net, tmp_path / "n.onnx", precision="int8")
    names = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "QuantizeLinear"]
    # ModelOpt's quantizers, at finalize's placement for onnx_int8: conv inputs, weights and (ort) outputs
    assert any("/weight_quantizer/" in n for n in names) and any("/input_quantizer/" in n for n in names)
    assert any("/output_quantizer/" in n for n in names) == (placement_for("onnx_int8") == "ort")
    assert weight_bits_for("onnx_int8", placement_for("onnx_int8")) in (7, 8)
    static = tmp_path / "s.onnx"
    assert int8_graphs.build_int8(__import__("profilers.networks").networks.build_network(micro_net), (1, 3, 32, 32),
                                  static, name=int8_graphs.FALLBACK) == "ort-static"
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops != [n.op_type for n in onnx.load(str(static)).graph.node], "two placements, two graphs"


def test_a_cached_int8_latency_belongs_to_its_graph(micro_net, tmp_path, monkeypatch):
    prof = CountingInt8()
    cache = tmp_path / "cache.sqlite"
    monkeypatch.setattr(int8_graphs, "_ACTIVE", ["onnx_int8"])
    monkeypatch.setattr(int8_graphs, "_BUILDERS", {"onnx_int8": lambda m, s, p: p.write_bytes(b"a"),
                                                   "other": lambda m, s, p: p.write_bytes(b"b")})
    monkeypatch.setattr("profilers.networks._annotate", lambda path, net: None)
    prof.profile(micro_net, "int8", cache=cache)
    prof.profile(micro_net, "int8", cache=cache)
    assert prof.calls == 1  # the second is a cache hit
    int8_graphs.register_int8_graph("other", int8_graphs._BUILDERS["other"])
    prof.profile(micro_net, "int8", cache=cache)
    assert prof.calls == 2  # another graph: measured again
    t1 = default_table_path("ort-cpu", "cpu", (1, 3, 32, 32), "int8", micro_net.config)
    monkeypatch.setattr(int8_graphs, "_ACTIVE", ["onnx_int8"])
    t2 = default_table_path("ort-cpu", "cpu", (1, 3, 32, 32), "int8", micro_net.config)
    assert t1 != t2 and "int8.onnx_int8" in t2.name
    with pytest.raises(KeyError, match="no INT8 graph"):
        int8_graphs.build_int8(None, (1, 3, 8, 8), tmp_path / "x.onnx", name="nope")


def test_the_timed_int8_graph_runs_every_conv_but_the_last_as_qlinearconv(micro_net, tmp_path):
    """The timed graph is the shipped one down to its U8 activations: with ModelOpt's S8 ones, every conv whose
    output feeds two ops stayed a float Conv in ONNX Runtime (finalize's U8 rewrite fuses them)."""
    import onnxruntime as ort

    path = export_network(micro_net, tmp_path / "n.onnx", precision="int8")
    g = onnx.load(str(path)).graph
    index = GraphIndex.of(g)
    act_q = [n for n in g.node if n.op_type == "QuantizeLinear" and not index.is_constant(n.input[0])]
    assert act_q and all(index.value(n.input[2]).dtype == np.uint8 for n in act_q)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    convs = sum(n.op_type == "Conv" for n in g.node if "quantizer" not in n.name)
    assert ops.count("QLinearConv") >= convs - 1 > 10 and ops.count("Conv") <= 1


def test_pixel_shuffles_run_on_8_bit_data_and_the_skip_joins_fuse(micro_net, u8_qdq_export, tmp_path):
    """finalize's INT8 graph moves each up-sampler's DequantizeLinear after its DepthToSpace (an exact rewrite:
    ORT's unfused Q/DQ run gives bit-identical outputs), so the shuffle runs on U8 data and the three skip joins
    run as QLinearConcat."""
    import torch

    from ens.finalize import export as ex
    from ens.finalize.qdq_movement import dequantize_after_movers

    before, after = tmp_path / "before.onnx", tmp_path / "after.onnx"
    x = u8_qdq_export(micro_net, before)
    assert dequantize_after_movers(before, after) == 3  # the three up-samplers
    assert dequantize_after_movers(after, tmp_path / "again.onnx") == 0
    g = onnx.load(str(after)).graph
    producer = {o: n for n in g.node for o in n.output}
    assert all(producer[n.input[0]].op_type != "DequantizeLinear" for n in g.node if n.op_type == "DepthToSpace")
    assert torch.equal(ex.OnnxModel(before, fuse_qdq=False)(x), ex.OnnxModel(after, fuse_qdq=False)(x))
    shipped = export_network(micro_net, tmp_path / "n.onnx", precision="int8")
    kernels = ex.ort_kernels(shipped)
    fp32 = ex.ort_kernels(export_network(micro_net, tmp_path / "f.onnx", precision="fp32"))
    assert kernels["QLinearConcat"] == 3 and kernels["Concat"] == fp32["Concat"] - 3  # the others: inside T/M blocks
    assert kernels["QLinearConv"] > 10


def test_the_norm_free_efm_leaves_no_layernorm_in_the_int8_graph(micro_cfg, tmp_path):
    """E's two LayerNorms per block are float islands between INT8 kernels; F drops them, and ORT then runs the
    block's convs, sums and gates in integer kernels as it does E's."""
    from blocks.unet import uniform_kinds
    from ens.finalize import export as ex

    kernels = {}
    for kind in ("E", "F"):
        net = NetworkSpec(uniform_kinds(micro_cfg, kind), micro_cfg.to_dict(), (1, 3, 32, 32), label=f"all-{kind}")
        kernels[kind] = ex.ort_kernels(export_network(net, tmp_path / f"{kind}.onnx", precision="int8"))
    blocks = sum(len(v) for v in uniform_kinds(micro_cfg, "E").values())
    assert kernels["E"]["LayerNormalization"] == 2 * blocks and kernels["F"]["LayerNormalization"] == 0
    assert ex.conv_kernels(kernels["F"]) == ex.conv_kernels(kernels["E"]) and kernels["F"]["QLinearConv"] > 10
    assert kernels["F"]["QLinearMul"] == kernels["E"]["QLinearMul"] > 0  # the gates
    assert kernels["E"]["Relu"] == kernels["F"]["Relu"] == 0  # each LDG's ReLU folded (ens.finalize.qat.RELU_FOLD)
    float_ops = {k: sum(v for op, v in kernels[k].items() if op in ("LayerNormalization", "Add", "Mul", "Sigmoid"))
                 for k in kernels}
    # every residual sum too: the 3 after the down-samplers stayed float Adds before those became strided convs
    assert float_ops["F"] <= float_ops["E"] - 2 * blocks and kernels["F"]["Add"] <= 1


def test_the_mini_efm_runs_in_integer_kernels(micro_cfg, tmp_path):
    """D (PW, DW, simple gate, PW and the residual sum) leaves nothing in float inside its blocks: every conv but
    the output's is a QLinearConv, every gate a QLinearMul and every residual sum a QLinearAdd."""
    from blocks.unet import uniform_kinds
    from ens.finalize import export as ex

    net = NetworkSpec(uniform_kinds(micro_cfg, "D"), micro_cfg.to_dict(), (1, 3, 32, 32), label="all-D")
    d = ex.ort_kernels(export_network(net, tmp_path / "D.onnx", precision="int8"))
    blocks = sum(len(v) for v in uniform_kinds(micro_cfg, "D").values())
    assert d["QLinearMul"] == blocks and d["QLinearAdd"] >= blocks and d["QLinearConv"] >= 3 * blocks
    assert ex.conv_kernels(d)["float"] <= 1 and d.get("Add", 0) <= 1
    assert not {"Mul", "Sigmoid", "LayerNormalization", "Relu"} & set(d)


def test_the_channel_attention_of_kind_c_runs_in_integer_kernels(micro_cfg, tmp_path):
    """C is E plus NAFNet's SCA: per block one more QLinearGlobalAveragePool, QLinearConv and QLinearMul than E,
    and nothing more left in float."""
    from blocks.unet import uniform_kinds
    from ens.finalize import export as ex

    kernels = {k: ex.ort_kernels(export_network(NetworkSpec(uniform_kinds(micro_cfg, k), micro_cfg.to_dict(),
                                                            (1, 3, 32, 32), label=f"all-{k}"),
                                                tmp_path / f"{k}.onnx", precision="int8")) for k in "EC"}
    blocks = sum(len(v) for v in uniform_kinds(micro_cfg, "C").values())
    extra = {op: kernels["C"].get(op, 0) - kernels["E"].get(op, 0) for op in set(kernels["C"]) | set(kernels["E"])}
    assert {op: n for op, n in extra.items() if n} == {"QLinearGlobalAveragePool": blocks, "QLinearConv": blocks,
                                                      "QLinearMul": blocks}
