"""blocks.ssm: chunked scans against loops written here from the recurrences, gradients, ONNX export."""

from __future__ import annotations

import sys
import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from blocks import ssm
from blocks.ssm import selective_scan, ssd_scan

RTOL, ATOL = 1e-4, 1e-5


def loop_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t;  y_t = C_t . h_t + D u_t;  y *= silu(z).

    u, delta, z [b, d, l]; A [d, n]; B, C [b, n, l] or [b, g, n, l]. Returns (y, h_L), float64.
    """
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, l = u.shape
    if B.dim() == 3:
        B, C = B[:, None].expand(b, d, *B.shape[1:]), C[:, None].expand(b, d, *C.shape[1:])
    else:
        B, C = B.repeat_interleave(d // B.shape[1], 1), C.repeat_interleave(d // C.shape[1], 1)
    h = torch.zeros(b, d, A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(l):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[..., t]
        ys.append((h * C[..., t]).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return y, h


def loop_ssd(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """state_t = exp(dt_t A) state_{t-1} + dt_t x_t B_t^T;  y_t = state_t C_t + D x_t;  y *= silu(z).

    x, z [b, l, h, p]; dt [b, l, h]; A [h]; B, C [b, l, g, n] or [b, l, n]. Returns (y, state_L), float64.
    """
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    if dt_bias is not None:
        dt = dt + dt_bias.double()
    if dt_softplus:
        dt = F.softplus(dt)
    b, l, h, p = x.shape
    if B.dim() == 3:
        B, C = B[:, :, None], C[:, :, None]
    B, C = B.repeat_interleave(h // B.shape[2], 2), C.repeat_interleave(h // C.shape[2], 2)  # [b, l, h, n]
    state = torch.zeros(b, h, p, B.shape[-1], dtype=torch.float64)
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append((state * C[:, t, :, None, :]).sum(-1))
    y = torch.stack(ys, 1)
    if D is not None:
        y = y + x * (D.double()[:, None] if D.dim() == 1 else D.double())
    if z is not None:
        y = y * F.silu(z.double())
    return y, state


def mamba1_inputs(b=2, d=6, n=4, l=77, groups=0, seed=0, dtype=torch.float32, delta_scale=1.0, a_scale=4.0):
    g = torch.Generator().manual_seed(seed)
    bc_shape = (b, groups, n, l) if groups else (b, n, l)
    return dict(
        u=torch.randn(b, d, l, generator=g, dtype=dtype),
        delta=torch.rand(b, d, l, generator=g, dtype=dtype) * delta_scale,
        A=-torch.rand(d, n, generator=g, dtype=dtype) * a_scale,
        B=torch.randn(*bc_shape, generator=g, dtype=dtype),
        C=torch.randn(*bc_shape, generator=g, dtype=dtype),
    )


def ssd_inputs(b=2, l=77, h=4, p=3, g=2, n=5, seed=0, dtype=torch.float32, dt_scale=1.0, a_scale=4.0):
    gen = torch.Generator().manual_seed(seed)
    bc_shape = (b, l, g, n) if g else (b, l, n)
    return dict(
        x=torch.randn(b, l, h, p, generator=gen, dtype=dtype),
        dt=torch.rand(b, l, h, generator=gen, dtype=dtype) * dt_scale,
        A=-torch.rand(h, generator=gen, dtype=dtype) * a_scale,
        B=torch.randn(*bc_shape, generator=gen, dtype=dtype),
        C=torch.randn(*bc_shape, generator=gen, dtype=dtype),
    )


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """rtol 1e-4; atol 1e-5 of max |expected| (fp32 rounding scales with the summands, not the sum)."""
    assert torch.isfinite(actual).all()
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual.double(), expected.double(), rtol=RTOL, atol=ATOL * scale)


# ---------------------------------------------------------------------------------------------- Mamba-1


@pytest.mark.parametrize("chunk", [1, 8, 32, 64, 128])
@pytest.mark.parametrize("groups", [0, 3])
def test_selective_scan_matches_loop_all_options(chunk, groups):
    inp = mamba1_inputs(l=77, groups=groups)  # 77 is no multiple of any chunk > 1
    g = torch.Generator().manual_seed(1)
    extra = dict(
        D=torch.randn(6, generator=g),
        z=torch.randn(2, 6, 77, generator=g),
        delta_bias=torch.randn(6, generator=g),
        delta_softplus=True,
    )
    y, last = selective_scan(**inp, **extra, return_last_state=True, chunk_size=chunk)
    y_ref, last_ref = loop_selective_scan(**inp, **extra)
    assert y.shape == (2, 6, 77) and y.dtype == torch.float32 and last.shape == (2, 6, 4)
    assert_close(y, y_ref)
    assert_close(last, last_ref)


def test_selective_scan_plain_and_time_invariant_bc():
    inp = mamba1_inputs(l=50)
    assert_close(selective_scan(**inp), loop_selective_scan(**inp)[0])
    g = torch.Generator().manual_seed(2)
    B, C = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)  # [D, N]: the same at every step
    y = selective_scan(inp["u"], inp["delta"], inp["A"], B, C)
    # reference: one channel per group, constant over time
    Bg, Cg = B[None, :, :, None].expand(2, 6, 4, 50), C[None, :, :, None].expand(2, 6, 4, 50)
    assert_close(y, loop_selective_scan(inp["u"], inp["delta"], inp["A"], Bg, Cg)[0])


def test_selective_scan_long_sequence():
    inp = mamba1_inputs(b=1, d=3, n=4, l=4100, delta_scale=0.2, a_scale=2.0)
    y, last = selective_scan(**inp, return_last_state=True)
    y_ref, last_ref = loop_selective_scan(**inp)
    assert_close(y, y_ref)
    assert_close(last, last_ref)


@pytest.mark.parametrize("softplus", [False, True])
def test_selective_scan_extreme_decay_is_finite(softplus):
    inp = mamba1_inputs(l=300, seed=3)
    g = torch.Generator().manual_seed(4)
    inp["delta"] = (10 + 40 * torch.rand(2, 6, 300, generator=g)).requires_grad_(True)  # delta in [10, 50]
    A = torch.full((6, 4), -100.0)
    A[:, 0] = -1e-3  # one nearly non-decaying state next to violently decaying ones
    inp["A"] = A.requires_grad_(True)
    y = selective_scan(**inp, delta_softplus=softplus)
    assert torch.isfinite(y).all()
    assert_close(y, loop_selective_scan(**inp, delta_softplus=softplus)[0])
    y.square().mean().backward()
    assert torch.isfinite(inp["delta"].grad).all() and torch.isfinite(inp["A"].grad).all()


def test_selective_scan_keeps_dtype():
    inp = {k: v.to(torch.bfloat16) for k, v in mamba1_inputs(l=40).items()}
    y = selective_scan(**inp)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), loop_selective_scan(**inp)[0], rtol=2e-2, atol=5e-2)


def test_selective_scan_gradcheck():
    inp = mamba1_inputs(b=1, d=2, n=3, l=11, groups=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    D = torch.randn(2, generator=g, dtype=torch.float64)
    z = torch.randn(1, 2, 11, generator=g, dtype=torch.float64)
    bias = torch.randn(2, generator=g, dtype=torch.float64)
    args = [inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], D, z, bias]
    args = [a.clone().requires_grad_(True) for a in args]

    def fn(*a):
        return selective_scan(*a, delta_softplus=True, chunk_size=4)

    assert torch.autograd.gradcheck(fn, args)


def test_selective_scan_sequential_helper_agrees():
    inp = mamba1_inputs(l=33, groups=2)
    y, last = ssm.selective_scan_sequential(**inp, delta_softplus=True, return_last_state=True)
    y_ref, last_ref = loop_selective_scan(**inp, delta_softplus=True)
    assert_close(y, y_ref)
    assert_close(last, last_ref)


# ---------------------------------------------------------------------------------------------- Mamba-2 SSD


@pytest.mark.parametrize("chunk", [1, 16, 64, 200])
@pytest.mark.parametrize("g", [0, 1, 2])
def test_ssd_matches_loop_all_options(chunk, g):
    inp = ssd_inputs(l=77, g=g)
    gen = torch.Generator().manual_seed(6)
    extra = dict(
        D=torch.randn(4, generator=gen),
        z=torch.randn(2, 77, 4, 3, generator=gen),
        dt_bias=torch.randn(4, generator=gen),
        dt_softplus=True,
    )
    y, final = ssd_scan(**inp, chunk_size=chunk, **extra, return_final_states=True)
    y_ref, final_ref = loop_ssd(**inp, **extra)
    assert y.shape == (2, 77, 4, 3) and final.shape == (2, 4, 3, 5)
    assert_close(y, y_ref)
    assert_close(final, final_ref)


def test_ssd_per_channel_skip_and_plain():
    inp = ssd_inputs(l=40)
    D = torch.randn(4, 3, generator=torch.Generator().manual_seed(7))
    assert_close(ssd_scan(**inp, D=D), loop_ssd(**inp, D=D)[0])
    assert_close(ssd_scan(**inp), loop_ssd(**inp)[0])


def test_ssd_long_sequence():
    inp = ssd_inputs(b=1, l=4100, h=2, p=2, g=1, n=4, dt_scale=0.2, a_scale=2.0)
    y, final = ssd_scan(**inp, return_final_states=True)
    y_ref, final_ref = loop_ssd(**inp)
    assert_close(y, y_ref)
    assert_close(final, final_ref)


def test_ssd_extreme_decay_is_finite():
    inp = ssd_inputs(l=300, seed=8)
    dt = 10 + 40 * torch.rand(2, 300, 4, generator=torch.Generator().manual_seed(9))  # dt in [10, 50]
    inp["dt"] = dt.requires_grad_(True)
    inp["A"] = torch.tensor([-100.0, -100.0, -1e-3, -50.0], requires_grad=True)
    y = ssd_scan(**inp, chunk_size=32)
    assert torch.isfinite(y).all()
    assert_close(y, loop_ssd(**inp)[0])
    y.square().mean().backward()
    assert torch.isfinite(inp["dt"].grad).all() and torch.isfinite(inp["A"].grad).all()


def test_ssd_keeps_dtype_and_ignores_autocast():
    inp = {k: v.to(torch.bfloat16) for k, v in ssd_inputs(l=40).items()}
    y = ssd_scan(**inp, chunk_size=16)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.double(), loop_ssd(**inp)[0], rtol=2e-2, atol=5e-2)
    inp = ssd_inputs(l=40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ssd_scan(**inp, chunk_size=16)
    assert y.dtype == torch.float32
    assert_close(y, loop_ssd(**inp)[0])


def test_ssd_gradcheck():
    inp = ssd_inputs(b=1, l=5, h=2, p=2, g=1, n=2, dtype=torch.float64)
    gen = torch.Generator().manual_seed(10)
    D = torch.randn(2, generator=gen, dtype=torch.float64)
    bias = torch.randn(2, generator=gen, dtype=torch.float64)
    args = [inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], D, bias]
    args = [a.clone().requires_grad_(True) for a in args]

    def fn(x, dt, A, B, C, D, bias):
        # chunk 2: three chunks (one padded step), carried in two blocks (one padded chunk)
        return ssd_scan(x, dt, A, B, C, chunk_size=2, D=D, dt_bias=bias, dt_softplus=True)

    assert torch.autograd.gradcheck(fn, args)


def test_ssd_sequential_helper_agrees():
    inp = ssd_inputs(l=21)
    assert_close(ssm.ssd_scan_sequential(**inp, dt_softplus=True), loop_ssd(**inp, dt_softplus=True)[0])


@pytest.mark.parametrize("select_max", [64, 0], ids=["selection-matmul", "masked-cumsum"])
def test_decay_matrix_matches_definition(select_max, monkeypatch):
    monkeypatch.setattr(ssm, "_SELECT_MAX", select_max)
    a = -torch.rand(2, 3, 7, dtype=torch.float64) * 3
    expected = torch.zeros(2, 3, 7, 7, dtype=torch.float64)
    for t in range(7):
        for s in range(t + 1):
            expected[..., t, s] = torch.exp(a[..., s + 1 : t + 1].sum(-1))
    torch.testing.assert_close(ssm.decay_matrix(a), expected)


def test_decay_matrix_is_exact_and_masked():
    a = torch.tensor([-0.1, -1e4, -0.1, -0.2, -0.3])
    m = ssm.decay_matrix(a)  # [t, s]
    assert m[4, 2].item() == pytest.approx(np.exp(-0.5), rel=1e-6)  # no cancellation against the -1e4 step
    assert m[2, 4].item() == 0.0 and m[3, 3].item() == 1.0 and 0.0 <= m[2, 0].item() < 1e-30


# ---------------------------------------------------------------------------------------------- dispatch


@pytest.fixture
def fake_mamba_ssm(monkeypatch):
    """A stand-in ``mamba_ssm`` package exposing both kernels; records their calls."""
    calls: list[str] = []

    def fake_selective_scan(*a, **k):
        calls.append("selective_scan")

    def fake_ssd_scan(*a, **k):
        calls.append("ssd_scan")

    _install_mamba_ssm(monkeypatch, fake_selective_scan, fake_ssd_scan)
    yield calls
    ssm._load_kernel.cache_clear()


def _install_mamba_ssm(monkeypatch, selective_scan_fn, mamba_chunk_scan_combined) -> None:
    """Put a stand-in ``mamba_ssm`` package with these two kernels in ``sys.modules``."""
    names = ["mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.selective_scan_interface", "mamba_ssm.ops.triton",
             "mamba_ssm.ops.triton.ssd_combined"]
    modules = {name: types.ModuleType(name) for name in names}
    modules["mamba_ssm.ops.selective_scan_interface"].selective_scan_fn = selective_scan_fn
    modules["mamba_ssm.ops.triton.ssd_combined"].mamba_chunk_scan_combined = mamba_chunk_scan_combined
    for name, mod in modules.items():
        monkeypatch.setitem(sys.modules, name, mod)
    ssm._load_kernel.cache_clear()


def test_dispatch_uses_reference_path_on_cpu(fake_mamba_ssm):
    assert ssm.select_kernel("selective_scan", torch.device("cpu")) is None
    assert ssm.select_kernel("ssd_scan", torch.device("cpu")) is None
    selective_scan(**mamba1_inputs(l=10))
    ssd_scan(**ssd_inputs(l=10))
    assert fake_mamba_ssm == []


def test_dispatch_picks_kernel_for_cuda_when_installed(fake_mamba_ssm):
    assert ssm.select_kernel("selective_scan", torch.device("cuda")).__name__ == "fake_selective_scan"
    assert ssm.select_kernel("ssd_scan", torch.device("cuda")).__name__ == "fake_ssd_scan"


def test_dispatch_hands_the_call_to_the_kernel(fake_mamba_ssm, monkeypatch):
    monkeypatch.setattr(ssm, "select_kernel", lambda name, device: ssm._load_kernel(name))  # as if on CUDA
    selective_scan(**mamba1_inputs(l=10))
    ssd_scan(**ssd_inputs(l=10, g=0))
    assert fake_mamba_ssm == ["selective_scan", "ssd_scan"]


def test_no_kernel_while_exporting(fake_mamba_ssm, monkeypatch):
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert ssm.select_kernel("selective_scan", torch.device("cuda")) is None


def test_dispatch_falls_back_when_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # any `import mamba_ssm...` now raises ImportError
    ssm._load_kernel.cache_clear()
    try:
        assert ssm.select_kernel("selective_scan", torch.device("cuda")) is None
        assert ssm.select_kernel("ssd_scan", torch.device("cuda")) is None
    finally:
        ssm._load_kernel.cache_clear()


# ---------------------------------------------------------------------------------------------- ONNX


class BothScans(nn.Module):
    """selective_scan and ssd_scan with every option on, chunks small enough that L=45 needs padding and
    (for the SSD) both carry levels."""

    def forward(self, u, delta, A, B, C, D, z, delta_bias, x, dt, A2, B2, C2, D2, z2, dt_bias):
        y1 = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, chunk_size=4)
        y2 = ssd_scan(x, dt, A2, B2, C2, 4, D=D2, z=z2, dt_bias=dt_bias, dt_softplus=True)
        return y1, y2


def export_args() -> tuple:
    m1 = mamba1_inputs(b=1, d=4, n=3, l=45, seed=11)
    m2 = ssd_inputs(b=1, l=45, h=4, p=3, g=2, n=5, seed=13)
    g = torch.Generator().manual_seed(12)
    return (
        *(m1[k] for k in ("u", "delta", "A", "B", "C")),
        torch.randn(4, generator=g),
        torch.randn(1, 4, 45, generator=g),
        torch.randn(4, generator=g),
        *(m2[k] for k in ("x", "dt", "A", "B", "C")),
        torch.randn(4, generator=g),
        torch.randn(1, 45, 4, 3, generator=g),
        torch.randn(4, generator=g),
    )


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy-opset17", "dynamo-opset18"])
def test_onnx_export_has_no_loop_and_matches(dynamo, tmp_path):
    module, args = BothScans().eval(), export_args()
    path = tmp_path / "scans.onnx"
    names = [f"in{i}" for i in range(len(args))]
    if dynamo:  # the onnxscript optimiser pass is skipped only to keep the test fast
        options = dict(dynamo=True, opset_version=18, optimize=False)
    else:
        options = dict(dynamo=False, opset_version=17)
    torch.onnx.export(module, args, str(path), input_names=names, **options)
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node} | {n.op_type for fn in model.functions for n in fn.node}
    assert not ops & {"Loop", "Scan", "If"}, ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {i.name: args[names.index(i.name)].numpy() for i in sess.get_inputs()})
    with torch.no_grad():
        expected = module(*args)
    assert len(outs) == 2
    for out, exp in zip(outs, expected, strict=True):
        assert out.shape == tuple(exp.shape)
        assert np.abs(out - exp.numpy()).max() < 1e-4


@pytest.fixture
def computing_mamba_ssm(monkeypatch):
    """A stand-in ``mamba_ssm`` whose kernels compute what the real ones do, with their argument conventions:
    ``selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)`` and
    ``mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=, z=, dt_bias=, dt_softplus=, ...)`` with B, C in
    the grouped form [b, l, g, n] only (the real kernel rejects [b, l, n])."""

    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
        return ssm.selective_scan_sequential(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

    def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
                                  return_final_states=False):
        assert B.dim() == 4 and C.dim() == 4, "the kernel takes grouped B and C"
        assert isinstance(chunk_size, int) and not return_final_states
        return ssm.ssd_scan_sequential(x, dt, A, B, C, D, z, dt_bias, dt_softplus)

    _install_mamba_ssm(monkeypatch, selective_scan_fn, mamba_chunk_scan_combined)
    yield
    ssm._load_kernel.cache_clear()


@pytest.mark.parametrize("g", [0, 2])
def test_kernel_path_and_exportable_scan_agree(computing_mamba_ssm, monkeypatch, g):
    """Both paths of the dispatch give the same outputs: the kernel's (as if on CUDA) and the exportable scan's.
    On a GPU with mamba-ssm, tests/test_gpu.py runs the same comparison against the real kernels."""
    extra = dict(D=torch.randn(4), z=torch.randn(2, 77, 4, 3), dt_bias=torch.randn(4), dt_softplus=True)
    ref_ssd = ssd_scan(**ssd_inputs(g=g), **extra)
    ref_sel = selective_scan(**mamba1_inputs(groups=g), delta_softplus=True)
    monkeypatch.setattr(ssm, "select_kernel", lambda name, device: ssm._load_kernel(name))  # as if on CUDA
    assert_close(ssd_scan(**ssd_inputs(g=g), **extra), ref_ssd)
    assert_close(selective_scan(**mamba1_inputs(groups=g), delta_softplus=True), ref_sel)
