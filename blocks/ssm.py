"""Selective state-space scans in pure PyTorch: fast on CPU, differentiable, ONNX-exportable.

Two scans, both with no ``Loop``/``Scan`` op once exported (every Python loop below has a trip count fixed
by the chunk size or by ``log2`` of a static length, so tracing unrolls it into a static graph):

``selective_scan`` (Mamba-1, the contract of ``mamba_ssm``'s ``selective_scan_fn``), per channel d and
state n::

    delta <- softplus(delta + delta_bias)                  (each part optional)
    h_t    = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        h: [B, D, N]
    y_t    = sum_n C_t[n] * h_t[n] + D * u_t
    y     *= silu(z)                                        (optional)

  Two-level scan: L is padded to a multiple of ``chunk_size`` T with delta = 0 (decay 1, input 0);
  inside every chunk a Hillis-Steele scan of the pairs (a_t, x_t) = (exp(delta_t A), delta_t B_t u_t)
  runs for all chunks at once (log2 T steps of ``b <- b + a * shift(b); a <- a * shift(a)``);
  the chunk-end states are carried over chunks by the same scan over the chunk axis, and each
  position adds ``prod(a within chunk up to t) * state entering the chunk``.
  Every factor is a product of decays in [0, 1], never ``exp(positive) / exp(positive)``, so a huge
  ``delta`` or a very negative ``A`` underflows to 0 instead of producing inf/NaN.
  Per-(d, n) L x L or T x T decay matrices are never formed: the cost is O(B D N L log2 T).

``ssd_scan`` (Mamba-2 state-space duality: one scalar decay per head), heads h, head channels p::

    y_t = sum_{s<=t} (C_t . B_s) * exp(sum_{s<r<=t} dt_r A) * dt_s * x_s  +  D * x_t

  Chunked matrix form: inside each chunk the T x T matrix ``(C B^T) * exp(segsum(dt A)) * dt_s``
  multiplies x; each chunk's end state is carried to every later chunk by a lower-triangular decay
  matrix over chunks, ``exp(segsum(chunk decay))``, so there is no loop at all.
  ``segsum`` is computed exactly, as a masked cumulative sum of the log-decays (not as a difference of
  two cumsums, which loses precision when the cumsums are large), and masked to -inf before ``exp``.

On CUDA, with ``mamba_ssm`` importable, both functions hand over to its fused kernels
(``selective_scan_fn`` and ``mamba_chunk_scan_combined``). ``mamba_ssm`` is imported lazily, only then.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

_KERNELS = {
    "selective_scan": ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
    "ssd_scan": ("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined"),
}


@functools.lru_cache(maxsize=None)
def _load_kernel(name: str) -> Callable | None:
    """The ``mamba_ssm`` function registered as ``name``, or None if it does not import."""
    module, attr = _KERNELS[name]
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception:  # ImportError, or a broken CUDA extension raising anything at import time
        return None


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling()


def select_kernel(name: str, device: torch.device) -> Callable | None:
    """The fused ``mamba_ssm`` kernel to use for ``name`` on ``device``, or None for the PyTorch path.

    The kernel is chosen only for CUDA tensors, outside ONNX export/tracing, when ``mamba_ssm`` imports.
    """
    if device.type != "cuda" or _exporting():
        return None
    return _load_kernel(name)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _hillis_steele(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan of ``h_t = a_t * h_{t-1} + b_t`` (h_{-1} = 0) along the last axis.

    Returns ``(prod_{r<=t} a_r, h_t)``. log2(length) unrolled steps, each a shift and two fused
    multiply-adds; no in-place ops.
    """
    n = a.shape[-1]
    k = 1
    while k < n:
        b = b + a * F.pad(b[..., :-k], (k, 0))
        a = a * F.pad(a[..., :-k], (k, 0), value=1.0)
        k *= 2
    return a, b


def _bc_per_channel(m: torch.Tensor, d: int) -> torch.Tensor:
    """B or C as a tensor broadcastable to [B, D, N, L].

    Accepted: [D, N] (time-invariant), [B, N, L] (shared by all channels), [B, G, N, L] (G contiguous
    channel groups of D / G channels each, as in ``mamba_ssm``).
    """
    if m.dim() == 2:
        return m[None, :, :, None]
    if m.dim() == 3:
        return m[:, None]
    if m.dim() == 4:
        b, g, n, l = m.shape
        if d % g:
            raise ValueError(f"selective_scan: {d} channels do not split into {g} groups")
        return m[:, :, None].expand(b, g, d // g, n, l).reshape(b, d, n, l)
    raise ValueError(f"selective_scan: B/C must have 2, 3 or 4 dims, got shape {tuple(m.shape)}")


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    chunk_size: int = 32,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan with the signature and semantics of ``mamba_ssm``'s ``selective_scan_fn``.

    Shapes: u, delta, z [B, D, L]; A [D, N] (real; complex A is not supported); B, C [B, N, L], or
    [B, G, N, L] grouped, or [D, N] time-invariant; D, delta_bias [D].
    Returns y [B, D, L] in u's dtype, and with ``return_last_state`` also h_L [B, D, N] in float32
    (float64 for float64 inputs). ``chunk_size`` (keyword-only, ours) is the first-level chunk T of the
    PyTorch path; it does not change the result beyond rounding.
    """
    kernel = select_kernel("selective_scan", u.device)
    if kernel is not None:
        return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if A.is_complex():
        raise NotImplementedError("selective_scan: complex A is only supported by the mamba_ssm CUDA kernel")
    ct = _compute_dtype(u)
    u_, delta_ = u.to(ct), delta.to(ct)
    if delta_bias is not None:
        delta_ = delta_ + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta_ = F.softplus(delta_)
    b, d, l = u_.shape
    n = A.shape[1]
    Bm, Cm = _bc_per_channel(B.to(ct), d), _bc_per_channel(C.to(ct), d)

    t = max(1, min(chunk_size, l))
    pad = -l % t
    nc = (l + pad) // t
    # a_t = exp(delta_t A) and x_t = delta_t B_t u_t, both [B, D, N, L]; padded steps are (1, 0).
    decay = torch.exp(F.pad(delta_[:, :, None, :] * A.to(ct)[None, :, :, None], (0, pad)))
    inp = F.pad((delta_ * u_)[:, :, None, :] * Bm, (0, pad))
    decay, inp = decay.reshape(b, d, n, nc, t), inp.reshape(b, d, n, nc, t)

    within, h = _hillis_steele(decay, inp)  # scans restarted at every chunk start
    _, h_end = _hillis_steele(within[..., -1], h[..., -1])  # true state at each chunk end: [B, D, N, nc]
    h_start = F.pad(h_end[..., :-1], (1, 0))
    h = (h + within * h_start[..., None]).reshape(b, d, n, nc * t)[..., :l]

    y = (h * Cm).sum(2)
    if D is not None:
        y = y + u_ * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(u.dtype)
    return (y, h_end[..., -1]) if return_last_state else y


def selective_scan_sequential(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``selective_scan`` as a plain loop over L: slow, for benchmarks and debugging only."""
    ct = _compute_dtype(u)
    u_, delta_ = u.to(ct), delta.to(ct)
    if delta_bias is not None:
        delta_ = delta_ + delta_bias.to(ct)[:, None]
    if delta_softplus:
        delta_ = F.softplus(delta_)
    b, d, l = u_.shape
    Bm = _bc_per_channel(B.to(ct), d).expand(b, d, A.shape[1], l)
    Cm = _bc_per_channel(C.to(ct), d).expand(b, d, A.shape[1], l)
    decay = torch.exp(delta_[:, :, None, :] * A.to(ct)[None, :, :, None])
    h = u_.new_zeros(b, d, A.shape[1])
    ys = []
    for i in range(l):
        h = decay[..., i] * h + (delta_[:, :, i] * u_[:, :, i])[..., None] * Bm[..., i]
        ys.append((h * Cm[..., i]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u_ * D.to(ct)[:, None]
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(u.dtype)
    return (y, h) if return_last_state else y


def segsum(a: torch.Tensor) -> torch.Tensor:
    """``out[..., t, s] = sum_{s<r<=t} a[..., r]`` for s <= t, ``-inf`` for s > t.  [..., T] -> [..., T, T].

    Exact: a masked cumulative sum, so entries near the diagonal keep full precision however large
    the running sum of ``a`` is.
    """
    t = a.shape[-1]
    strict = torch.ones(t, t, dtype=torch.bool, device=a.device).tril(-1)
    incl = torch.ones(t, t, dtype=torch.bool, device=a.device).tril()
    parts = torch.where(strict, a[..., :, None], torch.zeros((), dtype=a.dtype, device=a.device))
    return torch.where(incl, parts.cumsum(-2), torch.full((), float("-inf"), dtype=a.dtype, device=a.device))


def _ssd_heads_first(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD core in heads-first layout, no skip, no gate.

    x [b, h, l, p]; dt [b, h, l] (already biased/softplussed); A [h]; B, C [b, g, l, n] with h % g == 0
    (head i reads group i // (h / g)). Returns y [b, h, l, p] and the final state [b, h, p, n].
    """
    bsz, h, l, p = x.shape
    g, n = B.shape[1], B.shape[-1]
    t = max(1, min(chunk, l))
    pad = -l % t
    c = (l + pad) // t
    hg = h // g
    # Padded steps have dt = 0: decay 1 and no input, so they change neither y[:l] nor the final state.
    x = F.pad(x, (0, 0, 0, pad)).reshape(bsz, g, hg, c, t, p)
    dt = F.pad(dt, (0, pad)).reshape(bsz, g, hg, c, t)
    B = F.pad(B, (0, 0, 0, pad)).reshape(bsz, g, 1, c, t, n)
    C = F.pad(C, (0, 0, 0, pad)).reshape(bsz, g, 1, c, t, n)
    log_a = dt * A.reshape(g, hg, 1, 1)  # [b, g, hg, c, t]

    seg = segsum(log_a)  # [b, g, hg, c, t, t]
    xdt = x * dt[..., None]
    # Within chunks: y[t] = sum_{s<=t} (C_t . B_s) exp(seg[t, s]) dt_s x_s.
    scores = (C @ B.transpose(-1, -2)) * torch.exp(seg)
    y = scores @ xdt
    # Each chunk's own end state: sum_s exp(seg[T-1, s]) dt_s x_s B_s^T -> [b, g, hg, c, p, n].
    states = (xdt * torch.exp(seg[..., -1, :])[..., None]).transpose(-1, -2) @ B
    # Carry: the state at each chunk end is sum_{c'<=c} exp(segsum(chunk log-decay))[c, c'] state_c'.
    carry = torch.exp(segsum(log_a.sum(-1)))  # [b, g, hg, c, c]
    ends = (carry @ states.reshape(bsz, g, hg, c, p * n)).reshape(bsz, g, hg, c, p, n)
    starts = F.pad(ends[:, :, :, :-1], (0, 0, 0, 0, 1, 0))
    # Entering state seen at t: exp(sum_{r<=t} log_a_r) C_t . state_start.
    y = y + (C @ starts.transpose(-1, -2)) * torch.exp(log_a.cumsum(-1))[..., None]
    y = y.reshape(bsz, h, c * t, p)[:, :, :l]
    return y, ends[:, :, :, -1].reshape(bsz, h, p, n)


def _ssd_prepare(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
) -> tuple[torch.Tensor, ...]:
    """Validate, cast to the compute dtype, and bring [b, l, ...] inputs into heads-first layout."""
    ct = _compute_dtype(x)
    h = x.shape[2]
    if B.dim() == 3:
        B, C = B[:, :, None], C[:, :, None]
    if B.dim() != 4 or C.shape != B.shape or h % B.shape[2]:
        raise ValueError(
            f"ssd_scan: B, C must be [b, l, g, n] or [b, l, n] with heads {h} divisible by g, "
            f"got {tuple(B.shape)}, {tuple(C.shape)}"
        )
    dt = dt.to(ct)
    if dt_bias is not None:
        dt = dt + dt_bias.to(ct)
    if dt_softplus:
        dt = F.softplus(dt)
    return (
        x.to(ct).transpose(1, 2),
        dt.transpose(1, 2),
        A.to(ct),
        B.to(ct).transpose(1, 2),
        C.to(ct).transpose(1, 2),
    )


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 64,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    return_final_states: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 SSD scan, argument order of ``mamba_ssm``'s ``mamba_chunk_scan_combined``.

    x, z [b, l, h, p]; dt [b, l, h]; A [h] (negative); B, C [b, l, g, n] or [b, l, n];
    D [h] or [h, p]; dt_bias [h]. With ``dt <- softplus(dt + dt_bias)`` (each part optional)::

        y_t = sum_{s<=t} (C_t . B_s) exp(sum_{s<r<=t} dt_r A) dt_s x_s + D x_t;   y *= silu(z)

    Returns y [b, l, h, p] in x's dtype, and with ``return_final_states`` the final state
    [b, h, p, n] in float32 (float64 for float64 inputs). L need not be a multiple of ``chunk_size``.
    """
    kernel = select_kernel("ssd_scan", x.device)
    if kernel is not None:
        return kernel(
            x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
            return_final_states=return_final_states,
        )
    xh, dth, A_, Bh, Ch = _ssd_prepare(x, dt, A, B, C, dt_bias, dt_softplus)
    y, final = _ssd_heads_first(xh, dth, A_, Bh, Ch, chunk_size)
    y = y.transpose(1, 2)
    if D is not None:
        D_ = D.to(y.dtype)
        y = y + x.to(y.dtype) * (D_[:, None] if D_.dim() == 1 else D_)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    y = y.to(x.dtype)
    return (y, final) if return_final_states else y


def ssd_scan_sequential(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """``ssd_scan`` as a plain loop over L (state [b, h, p, n]): slow, for benchmarks and debugging only."""
    xh, dth, A_, Bh, Ch = _ssd_prepare(x, dt, A, B, C, dt_bias, dt_softplus)
    bsz, h, l, p = xh.shape
    rep = h // Bh.shape[1]
    Bh, Ch = Bh.repeat_interleave(rep, dim=1), Ch.repeat_interleave(rep, dim=1)  # [b, h, l, n]
    state = xh.new_zeros(bsz, h, p, Bh.shape[-1])
    ys = []
    for i in range(l):
        dti = dth[:, :, i]
        state = torch.exp(dti * A_)[..., None, None] * state + (dti[..., None] * xh[:, :, i])[
            ..., None
        ] * Bh[:, :, i, None, :]
        ys.append((state * Ch[:, :, i, None, :]).sum(-1))
    y = torch.stack(ys, dim=1)
    if D is not None:
        D_ = D.to(y.dtype)
        y = y + x.to(y.dtype) * (D_[:, None] if D_.dim() == 1 else D_)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(x.dtype)
