"""The exact graph rewrites behind the exported files: each down-sampler as one strided conv, and the INT8
up-samplers' pixel shuffles channels-last. Each changes no value and removes what ORT ran in the wrong layout."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from profilers.networks import NetworkSpec, export_network
from profilers.onnx_export import export_onnx, run_onnx
from profilers.unshuffle_fusion import fuse_unshuffles, strided_kernel


def _ops(path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("k,r,bias", [(3, 2, False), (1, 2, True), (3, 3, True)])
def test_a_conv_then_pixel_unshuffle_exports_as_one_strided_conv(tmp_path, k, r, bias):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(6, 4, k, padding=k // 2, bias=bias), nn.PixelUnshuffle(r)).eval()
    x = torch.randn(1, 6, 6 * r, 4 * r)
    path = export_onnx(model, tuple(x.shape), tmp_path / "down.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    ops = _ops(path)
    assert ops["Conv"] == 1 and ops["Reshape"] == ops["Transpose"] == 0
    conv = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv")
    attrs = {a.name: list(a.ints) for a in conv.attribute}
    assert attrs["kernel_shape"] == [k + r - 1] * 2 and attrs["strides"] == [r, r]
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(run_onnx(path, x.numpy()) - ref).max() < 1e-5


def test_the_strided_kernel_is_the_kernel_shifted_once_per_output_phase():
    w = np.arange(2 * 1 * 3 * 3, dtype=np.float32).reshape(2, 1, 3, 3) + 1
    s = strided_kernel(w, 2)
    assert s.shape == (8, 1, 4, 4)
    assert np.array_equal(s[1 * 4 + 2 + 1, 0, 1:4, 1:4], w[1, 0])  # channel 1 at phase (1, 1)
    assert s[1 * 4 + 2 + 1, 0, 0].sum() == 0 and s[1 * 4 + 2 + 1, 0, :, 0].sum() == 0
    assert all(np.count_nonzero(s[o]) == 9 for o in range(8))


def test_a_shuffle_read_by_two_ops_is_left_as_it_is(tmp_path):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return nn.functional.pixel_unshuffle(y, 2).sum() + y

    path = export_onnx(Two().eval(), (1, 3, 8, 8), tmp_path / "two.onnx")
    assert _ops(path)["Transpose"] == 1  # the conv's output is read twice: no fusion
    assert fuse_unshuffles(path) == 0


def _optimized_ops(path, tmp_path) -> Counter[str]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return _ops(tmp_path / "opt.onnx")


def test_the_int8_up_samplers_shuffle_channels_last_and_change_no_output(micro_cfg, u8_qdq_export, tmp_path):
    """DepthToSpace leaves the shipped INT8 graph (the up-sampler convs' channels go to DCR order); ORT's optimized
    graph then keeps few Transposes, and ORT's integer output is bit-identical to the graph before the rewrite."""
    from blocks.unet import uniform_kinds
    from ens.finalize import export as ex
    from ens.finalize.qdq_movement import dequantize_after_movers
    from ens.finalize.shuffle_layout import crd_to_dcr_order, shuffles_channels_last

    assert crd_to_dcr_order(8, 2).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    net = NetworkSpec(uniform_kinds(micro_cfg, "F"), micro_cfg.to_dict(), (1, 3, 32, 32), label="all-F")
    before, after = tmp_path / "before.onnx", tmp_path / "after.onnx"
    x = u8_qdq_export(net, before)
    dequantize_after_movers(before)
    assert shuffles_channels_last(before, after) == (3, 3)
    assert _ops(before)["DepthToSpace"] == 3 and _ops(after)["DepthToSpace"] == 0
    onnx.checker.check_model(onnx.load(str(after)), full_check=True)
    for fuse in (False, True):  # ORT's plain Q/DQ run, and its fused integer kernels
        assert torch.equal(ex.OnnxModel(before, fuse_qdq=fuse)(x), ex.OnnxModel(after, fuse_qdq=fuse)(x))
    opt_before, opt_after = _optimized_ops(before, tmp_path), _optimized_ops(after, tmp_path)
    assert opt_after["Transpose"] <= opt_before["Transpose"] - 3 * 2  # at least each shuffle's NCHW round trip
    shipped = export_network(net, tmp_path / "n.onnx", precision="int8")
    assert _ops(shipped)["DepthToSpace"] == 0 and _ops(shipped)["Transpose"] == 3 * 3


def test_int8_gate_maps_get_the_features_channels_and_change_no_output(micro_cfg, u8_qdq_export, tmp_path):
    """Each EFM gate ``f * sigmoid(conv(h, 1))`` of the INT8 graph becomes element-wise: the one-output conv's row
    (weight, bias, weight scale) repeated once per channel of f. ORT's outputs are bit-identical before and after,
    with plain Q/DQ and with fused integer kernels, and no Mul of the shipped graph broadcasts over channels."""
    from blocks.unet import uniform_kinds
    from ens.finalize import export as ex
    from profilers.gate_expansion import expand_gate_maps

    net = NetworkSpec(uniform_kinds(micro_cfg, "F"), micro_cfg.to_dict(), (1, 3, 32, 32), label="all-F")
    before, after = tmp_path / "before.onnx", tmp_path / "after.onnx"
    x = u8_qdq_export(net, before)
    n_gates = len([n for n in onnx.load(str(before)).graph.node if n.name.endswith("gate_mul/Mul")])
    assert n_gates == sum(len(v) for v in net.kinds.values()) > 0
    assert expand_gate_maps(before, after) == n_gates
    onnx.checker.check_model(onnx.load(str(after)), full_check=True)
    for fuse in (False, True):
        assert torch.equal(ex.OnnxModel(before, fuse_qdq=fuse)(x), ex.OnnxModel(after, fuse_qdq=fuse)(x))
    assert expand_gate_maps(after) == 0  # nothing left to expand; the file is not rewritten
    shipped = export_network(net, tmp_path / "n.onnx", precision="int8")
    shapes = _gate_shapes(shipped)
    assert shapes and all(a == b for a, b in shapes)  # every gate product is element-wise


def test_fp32_exports_keep_the_broadcast_gate(micro_cfg, tmp_path):
    """In FP32 the broadcast product was the faster form on this CPU (measured), so plain exports keep it; the
    rewrite itself is exact there too."""
    from blocks.unet import uniform_kinds
    from profilers.gate_expansion import expand_gate_maps

    net = NetworkSpec(uniform_kinds(micro_cfg, "E"), micro_cfg.to_dict(), (1, 3, 32, 32), label="all-E")
    fp32, expanded = export_network(net, tmp_path / "e.onnx"), tmp_path / "e_gx.onnx"
    shapes = _gate_shapes(fp32)
    assert shapes and all(a[1] > 1 and b[1] == 1 for a, b in shapes)
    assert expand_gate_maps(fp32, expanded) == len(shapes)
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    assert np.array_equal(run_onnx(fp32, x), run_onnx(expanded, x))


def _gate_shapes(path) -> list[tuple[list[int], list[int]]]:
    """The (features, map) shapes of each gate product in ``path``."""
    from profilers.gate_expansion import _shapes

    model = onnx.load(str(path))
    shapes = _shapes(model)
    return [tuple(shapes[i] for i in n.input) for n in model.graph.node if n.name.endswith("gate_mul/Mul")]
