"""blocks.mamba.MambaBlock: shapes, gradients, direction bookkeeping, ONNX export parity, determinism."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from blocks.mamba import DirectionalSSD, MambaBlock
from blocks.ssm import ssd_scan


def make_block(dim: int = 16, seed: int = 0, **kwargs) -> MambaBlock:
    """A block whose residual branch is not negligible (init_scale 1) and whose dt spans a wide range."""
    torch.manual_seed(seed)
    block = MambaBlock(dim, init_scale=kwargs.pop("init_scale", 1.0), **kwargs)
    with torch.no_grad():
        block.scan.dt_bias.copy_(torch.linspace(-4.0, 1.0, block.scan.heads))
    return block.eval()


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"directions": 4},
        {"directions": 1},
        {"ffn_expansion": 0},
        {"out_norm": True, "head_dim": 4},
        {"expand": 2, "directions": 4, "head_dim": 8, "d_state": 16, "chunk": 8},
    ],
)
@pytest.mark.parametrize("hw", [(13, 21), (1, 1), (2, 40), (33, 3)])
def test_shape_preserved_on_odd_sizes(kwargs, hw):
    block = make_block(**kwargs)
    x = torch.randn(2, 16, *hw)
    with torch.no_grad():
        y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_heads_argument_is_accepted_and_ignored():
    torch.manual_seed(1)
    a = MambaBlock(16, heads=4)
    torch.manual_seed(1)
    b = MambaBlock(16, heads=1)
    x = torch.randn(1, 16, 5, 7)
    torch.testing.assert_close(a(x), b(x))


def test_invalid_configuration_raises():
    with pytest.raises(ValueError, match="directions"):
        MambaBlock(16, directions=3)
    with pytest.raises(ValueError, match="multiple of head_dim"):
        MambaBlock(16, head_dim=5)


def test_starts_near_identity():
    block = MambaBlock(32).eval()
    x = torch.randn(1, 32, 24, 24)
    with torch.no_grad():
        residual = block(x) - x
    assert residual.abs().max() < 0.05 * x.abs().max()


def test_gradient_reaches_every_parameter():
    block = MambaBlock(16, directions=4).train()  # default init, near-identity
    x = torch.randn(2, 16, 9, 11, requires_grad=True)
    block(x).square().mean().backward()
    for name, param in block.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().max() > 0, name
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_eval_is_deterministic():
    block = make_block(directions=4)
    x = torch.randn(1, 16, 17, 19)
    with torch.no_grad():
        assert torch.equal(block(x), block(x))


def test_mixed_precision_scans_in_float32():
    block = make_block(directions=4)
    x = torch.randn(1, 16, 12, 14)
    with torch.no_grad():
        expected = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = block(x)
        half = block.to(torch.bfloat16)(x.to(torch.bfloat16))
    for out in (mixed, half):
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)


def test_chunk_size_does_not_change_the_output():
    block = make_block(directions=4)
    x = torch.randn(1, 16, 15, 18)
    with torch.no_grad():
        outs = []
        for chunk in (None, 4, 8, 64, 512):
            block.scan.chunk = chunk
            outs.append(block(x))
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-4, atol=1e-5)


def scan_order(h: int, w: int, direction: str) -> torch.Tensor:
    """Pixel indices (into the row-major H*W grid) in the order ``direction`` visits them."""
    grid = torch.arange(h * w).reshape(h, w)
    order = grid.T.flatten() if direction.startswith("column") else grid.flatten()
    return order.flip(0) if direction.endswith("reversed") else order


@pytest.mark.parametrize("directions,head_dim", [(4, 2), (2, 8), (1, 4)])
def test_directional_scan_matches_per_direction_ssd_scan(directions, head_dim):
    """Each channel group equals ssd_scan run on its pixels gathered in its direction's order."""
    torch.manual_seed(2)
    inner, d_state, h, w = 16, 5, 6, 9
    mod = DirectionalSSD(inner, d_state, head_dim, directions, chunk=4).eval()
    with torch.no_grad():
        mod.dt_bias.copy_(torch.linspace(-3.0, 1.0, mod.heads))
    u = torch.randn(1, inner, h, w)
    with torch.no_grad():
        out = mod(u)
        feats = F.silu(mod.conv(u))
        bcdt = mod.x_proj(feats)
        hpd, width = mod.heads // directions, inner // directions
        for k, direction in enumerate(mod.directions):
            order = scan_order(h, w, direction)
            xk = feats[0, k * width : (k + 1) * width].flatten(1)[:, order]  # [width, L]
            gk = bcdt[0, k * mod.group : (k + 1) * mod.group].flatten(1)[:, order]  # [group, L]
            heads = slice(k * hpd, (k + 1) * hpd)
            y = ssd_scan(
                xk.T.reshape(1, h * w, hpd, head_dim),
                gk[2 * d_state :].T[None],
                -torch.exp(mod.A_log[heads]),
                gk[:d_state].T[None],
                gk[d_state : 2 * d_state].T[None],
                chunk_size=64,
                D=mod.D[heads],
                dt_bias=mod.dt_bias[heads],
                dt_softplus=True,
            )  # [1, L, hpd, head_dim]
            expected = torch.empty(width, h * w)
            expected[:, order] = y.reshape(h * w, width).T
            actual = out[0, k * width : (k + 1) * width].flatten(1)
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def export_and_compare(block: MambaBlock, x: torch.Tensor, path, dynamo: bool = False) -> set[str]:
    if dynamo:  # the onnxscript optimiser pass is skipped only to keep the test fast
        options = dict(dynamo=True, opset_version=18, optimize=False)
    else:
        options = dict(dynamo=False, opset_version=17)
    torch.onnx.export(block, (x,), str(path), input_names=["x"], **options)
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    ops |= {node.op_type for fn in model.functions for node in fn.node}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = block(x).numpy()
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() < 1e-4
    # the check is meaningful: the residual branch is a sizeable part of the output
    assert np.abs(expected - x.numpy()).max() > 1e-2
    return ops


@pytest.mark.parametrize(
    "shape,kwargs",
    [
        ((1, 16, 20, 28), {}),
        ((1, 16, 19, 27), {"directions": 4, "chunk": 16}),
        ((2, 16, 7, 33), {"out_norm": True}),
        ((1, 16, 9, 10), {"ffn_expansion": 0, "directions": 1}),
    ],
)
def test_onnx_export_has_no_loop_and_matches_pytorch(shape, kwargs, tmp_path):
    block = make_block(**kwargs)
    ops = export_and_compare(block, torch.randn(*shape), tmp_path / "block.onnx")
    assert not ops & {"Loop", "Scan", "If"}, ops


def test_onnx_dynamo_export_matches_pytorch(tmp_path):
    block = make_block()
    ops = export_and_compare(block, torch.randn(1, 16, 20, 28), tmp_path / "block_dynamo.onnx", dynamo=True)
    assert not ops & {"Loop", "Scan", "If"}, ops
