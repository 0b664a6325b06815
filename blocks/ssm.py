"""Selective state-space scans in pure PyTorch: fast on CPU, differentiable, ONNX-exportable.

Both scans export with static shapes, no in-place ops and no ``Loop``/``Scan``/``If`` op: every Python
loop below runs a trip count fixed by the chunk size, or ceil(log2) of a static length, and is unrolled
by tracing. Shapes are read as Python ints (``static_shape``), so an exported graph serves one shape.

``selective_scan`` (Mamba-1, the contract of ``mamba_ssm``'s ``selective_scan_fn``), per channel d and
state n::

    delta <- softplus(delta + delta_bias)                  (each part optional)
    h_t    = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        h: [B, D, N]
    y_t    = sum_n C_t[n] * h_t[n] + D * u_t
    y     *= silu(z)                                        (optional)

  Two-level scan. L is zero-padded to a multiple of ``chunk_size`` T (padded steps have delta = 0:
  decay 1, input 0) and laid out chunk-major, [T, B, D, N, L/T], so that step i of every chunk is one
  contiguous slice. Level 1 runs the recurrence in all chunks at once from a zero state (T steps).
  Level 2 carries the chunk-end states over the chunks with a Hillis-Steele scan of (chunk decay,
  chunk state) pairs: ceil(log2(L/T)) shift-multiply-add steps on [B, D, N, L/T] (7 at L=4096, T=32),
  measured 2-3x faster here than a lower-triangular decay matrix over chunks. A second T-step pass
  restarts every chunk from its true entering state and emits y. Work O(B D N L); no per-(d, n)
  L x L or T x T decay matrix is formed.

``ssd_scan`` (Mamba-2 state-space duality: one scalar decay per head), heads h, head channels p::

    y_t = sum_{s<=t} (C_t . B_s) * exp(sum_{s<r<=t} dt_r A) * dt_s * x_s  +  D * x_t

  Chunked matrix form (``ssd_chunked``): inside each chunk of T steps, the T x T matrix
  ``(C dt B^T) * L`` multiplies x, with L[t, s] = exp(segment sum of dt A over (s, t]) (``decay_matrix``);
  the chunks' own end states are carried to later chunks by lower-triangular decay matrices over the
  chunks, in two fixed levels (``_carry``), so there is no loop at all. ``auto_chunk`` picks T from L.

Numerics, both scans: decays are exp of log-decays <= 0 or products of such decays, never
exp(positive) / exp(positive), so a huge ``delta`` or a very negative ``A`` underflows to 0 instead of
producing inf/NaN. Segment sums are exact (they add the segment's own terms; no difference of two
running sums, which loses precision when the running sum is large). Log-decays are clamped at
``LOG_DECAY_FLOOR`` before exp (see there), and masked entries are zeroed after exp, never via exp(-inf).

On CUDA, with ``mamba_ssm`` importable, both functions hand over to its fused kernels
(``selective_scan_fn`` and ``mamba_chunk_scan_combined``); ``mamba_ssm`` is imported lazily, only then.
"""

from __future__ import annotations

import functools
import importlib
import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

_KERNELS = {
    "selective_scan": ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
    "ssd_scan": ("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined"),
}


@functools.cache
def _load_kernel(name: str) -> Callable | None:
    """The ``mamba_ssm`` function registered as ``name``, or None if it does not import."""
    module, attr = _KERNELS[name]
    try:
        return getattr(importlib.import_module(module), attr)
    except Exception:  # ImportError, or a broken CUDA extension raising anything at import time
        return None


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling()


# exp() of an argument below float32's normal range (about -87.3) takes a slow path on x86 CPUs (about 40x
# slower here), so log-decays are clamped first; e^-80 ~ 1.8e-35 then stands for "fully decayed".
LOG_DECAY_FLOOR = -80.0
# Largest T for which decay_matrix builds segment sums with a [T, T*T] selection matmul (fast, O(T^3) memory).
_SELECT_MAX = 64


def select_kernel(name: str, device: torch.device) -> Callable | None:
    """The fused ``mamba_ssm`` kernel to use for ``name`` on ``device``, or None for the PyTorch path.

    The kernel is chosen only for CUDA tensors, outside ONNX export/tracing, when ``mamba_ssm`` imports.
    """
    if device.type != "cuda" or _exporting():
        return None
    return _load_kernel(name)


def static_shape(t: torch.Tensor) -> tuple[int, ...]:
    """``t.shape`` as Python ints, also while tracing for ONNX export.

    Chunk counts and padding are derived from the shape, so every exported graph is specialised to one
    input shape on purpose (export one fixed shape per use); this silences the tracer's warnings about it.
    """
    if not torch.jit.is_tracing():
        return tuple(t.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return tuple(int(d) for d in t.shape)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _hillis_steele(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan of ``h_t = a_t * h_{t-1} + b_t`` (h_{-1} = 0) along the last axis.

    Returns ``(prod_{r<=t} a_r, h_t)``. log2(length) unrolled steps, each a shift and two fused
    multiply-adds; no in-place ops.
    """
    n = static_shape(a)[-1]
    k = 1
    while k < n:
        b = b + a * F.pad(b[..., :-k], (k, 0))
        a = a * F.pad(a[..., :-k], (k, 0), value=1.0)
        k *= 2
    return a, b


def _bc_per_channel(m: torch.Tensor, d: int, length: int) -> torch.Tensor:
    """B or C as a tensor broadcastable to [B, D, N, L] with a full L axis.

    Accepted: [D, N] (time-invariant), [B, N, L] (shared by all channels), [B, G, N, L] (G contiguous
    channel groups of D / G channels each, as in ``mamba_ssm``).
    """
    if m.dim() == 2:
        return m[None, :, :, None].expand(1, *m.shape, length)
    if m.dim() == 3:
        return m[:, None]
    if m.dim() == 4:
        b, g, n, l = static_shape(m)
        if d % g:
            raise ValueError(f"selective_scan: {d} channels do not split into {g} groups")
        return m[:, :, None].expand(b, g, d // g, n, l).reshape(b, d, n, l)
    raise ValueError(f"selective_scan: B/C must have 2, 3 or 4 dims, got shape {tuple(m.shape)}")


def _pad_last(m: torch.Tensor, pad: int, dim: int = -1) -> torch.Tensor:
    """Zero-pad ``dim`` (-1 or -2) at its end; no op (and no ONNX node) when ``pad`` is 0."""
    if pad == 0:
        return m
    return F.pad(m, (0, pad) if dim == -1 else (0, 0, 0, pad))


def _chunk_major(m: torch.Tensor, t: int, pad: int) -> torch.Tensor:
    """[..., L] -> [T, ..., (L + pad) / T], contiguous, zero-padding L by ``pad``."""
    m = _pad_last(m, pad)
    m = m.reshape(*static_shape(m)[:-1], -1, t)
    return m.permute(m.dim() - 1, *range(m.dim() - 1)).contiguous()


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
    b, d, l = static_shape(u_)
    A_ = A.to(ct)[:, :, None]  # [D, N, 1]

    t = max(1, min(chunk_size, l))
    pad = -l % t
    # Chunk-major layout [T, B, D, (N,) n_chunks]: step i of every chunk is one contiguous slice.
    delta_c = _chunk_major(delta_, t, pad)
    Bc = _chunk_major(_bc_per_channel(B.to(ct), d, l), t, pad)
    Cc = _chunk_major(_bc_per_channel(C.to(ct), d, l), t, pad)
    # exp(delta_t A) and delta_t u_t B_t: [T, B, D, N, nc]
    decay = torch.exp((delta_c[:, :, :, None] * A_).clamp_min(LOG_DECAY_FLOOR))
    inp = _chunk_major(delta_ * u_, t, pad)[:, :, :, None] * Bc

    h = inp[0]
    for i in range(1, t):
        h = decay[i] * h + inp[i]
    # h is each chunk's end state from a zero start; carry it over chunks (state entering each chunk).
    chunk_decay = torch.exp((delta_c.sum(0)[:, :, None] * A_).clamp_min(LOG_DECAY_FLOOR))  # [B, D, N, nc]
    _, h_end = _hillis_steele(chunk_decay, h)
    h = F.pad(h_end[..., :-1], (1, 0))
    ys = []
    for i in range(t):
        h = decay[i] * h + inp[i]
        ys.append((h * Cc[i]).sum(-2))
    y = torch.stack(ys, -1).reshape(b, d, -1)[..., :l]

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
    Bm = _bc_per_channel(B.to(ct), d, l).expand(b, d, A.shape[1], l)
    Cm = _bc_per_channel(C.to(ct), d, l).expand(b, d, A.shape[1], l)
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


def decay_matrix(log_a: torch.Tensor) -> torch.Tensor:
    """``out[..., t, s] = exp(sum_{s<r<=t} log_a[..., r])`` for s <= t, else 0.  [..., T] -> [..., T, T].

    Row t holds the decays from every source step s into target step t (lower-triangular). The segment
    sums are exact - one matmul with a constant 0/1 matrix selecting the r in (s, t], not a difference of
    two running sums, which loses precision when the running sum is large. They are clamped at
    ``LOG_DECAY_FLOOR`` and exponentiated, and the s > t half is zeroed by a mask after ``exp``.
    """
    shape = static_shape(log_a)
    t = shape[-1]
    i = torch.arange(t, device=log_a.device)
    if t <= _SELECT_MAX:
        r, t_, s_ = i[:, None, None], i[None, :, None], i[None, None, :]
        select = ((s_ < r) & (r <= t_)).to(log_a.dtype).reshape(t, t * t)  # [r, (t, s)]
        seg = (log_a @ select).reshape(*shape, t)
    else:  # the same sums as a masked cumulative sum, O(T^2) memory instead of O(T^3)
        terms = log_a[..., None, :] * (i[None, :] > i[:, None]).to(log_a.dtype)  # [s, r]: a_r for r > s
        seg = terms.cumsum(-1).transpose(-1, -2)  # [t, s]
    causal = torch.ones(t, t, dtype=log_a.dtype, device=log_a.device).tril()
    return torch.exp(seg.clamp_min(LOG_DECAY_FLOOR)) * causal


def _carry(log_a: torch.Tensor, states: torch.Tensor, block: int) -> torch.Tensor:
    """Inclusive scalar-decay scan over chunks, ``ends[c] = sum_{c'<=c} exp(sum_{c'<k<=c} a[k]) states[c']``.

    log_a [..., c]; states [..., c, D] -> ends [..., c, D]. Two fixed levels, no loop: a lower-triangular
    decay matrix inside each block of ``block`` chunks, then one over the blocks' end states; the cost is
    O(c * block * D + (c / block)^2 * D) instead of O(c^2 * D) for one matrix over all chunks.
    """
    *lead, c, d = static_shape(states)
    s = max(1, min(block, c))
    pad = -c % s
    k = (c + pad) // s
    la = _pad_last(log_a, pad).reshape(*lead, k, s)
    st = _pad_last(states, pad, -2).reshape(*lead, k, s, d)
    local = decay_matrix(la) @ st  # scans restarted at every block start
    if k == 1:
        return local.reshape(*lead, s, d)[..., :c, :]
    block_ends = decay_matrix(la.sum(-1)) @ local[..., -1, :]  # [..., k, D]
    entering = F.pad(block_ends[..., :-1, :], (0, 0, 1, 0))
    within = torch.exp(la.cumsum(-1).clamp_min(LOG_DECAY_FLOOR))  # decay from block start to chunk end
    ends = (local + within[..., None] * entering[..., None, :]).reshape(*lead, k * s, d)
    return ends[..., :c, :] if pad else ends


def auto_chunk(length: int) -> int:
    """A chunk size for ``length`` steps: the power of two nearest sqrt(length) / 4, clipped to [8, 64].

    It balances the O(L T) work inside chunks against the carry over chunks; with it, the two carry levels
    of ``_carry`` see about 16 blocks at every length (4096 steps -> 16, 16384 -> 32).
    """
    return int(min(64, max(8, 2 ** round(math.log2(max(length, 1) ** 0.5 / 4)))))


def ssd_chunked(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD core, heads first: no skip, no gate, dt already biased/softplussed.

    x [b, h, l, p]; dt [b, h, l]; A [h]; B, C [b, g, l, n], h % g == 0, head i reads group i // (h / g).
    Returns y [b, h, l, p] and the final state [b, h, p, n]. Each chunk of T steps is a [T, p] block,
    so every product is a batched matmul over (batch, head, chunk).
    """
    bsz, h, l, p = static_shape(x)
    g, n = static_shape(B)[1], static_shape(B)[-1]
    hg = h // g
    t = max(1, min(chunk, l))
    pad = -l % t
    c = (l + pad) // t
    # Padded steps have dt = 0: decay 1 and no input, so they change neither y[:l] nor the final state.
    x = _pad_last(x, pad, -2).reshape(bsz, g, hg, c, t, p)
    dt = _pad_last(dt, pad).reshape(bsz, g, hg, c, t)
    B = _pad_last(B, pad, -2).reshape(bsz, g, 1, c, t, n)
    C = _pad_last(C, pad, -2).reshape(bsz, g, 1, c, t, n)
    log_a = dt * A.reshape(g, hg, 1, 1)  # [b, g, hg, c, T]

    decay = decay_matrix(log_a)  # [b, g, hg, c, T(t), T(s)]
    b_dt = B * dt[..., None]  # dt_s B_s: [b, g, hg, c, T, n]
    # Within chunks: y_t = sum_{s<=t} (C_t . dt_s B_s) decay[t, s] x_s.
    y = ((C @ b_dt.transpose(-1, -2)) * decay) @ x
    # Each chunk's own end state (from a zero start), sum_s decay[T-1, s] dt_s B_s x_s^T: [.., c, n, p].
    states = (b_dt * decay[..., -1, :, None]).transpose(-1, -2) @ x
    # State at each chunk end, carried over chunks by lower-triangular decay matrices.
    ends = _carry(log_a.sum(-1), states.reshape(bsz, g, hg, c, n * p), t)
    starts = F.pad(ends[..., :-1, :], (0, 0, 1, 0)).reshape(bsz, g, hg, c, n, p)
    # The state entering each chunk, decayed to step t and read out by C_t.
    entering = torch.exp(log_a.cumsum(-1).clamp_min(LOG_DECAY_FLOOR))
    y = (y + (C * entering[..., None]) @ starts).reshape(bsz, h, c * t, p)
    if pad:
        y = y[:, :, :l]
    return y, ends[..., -1, :].reshape(bsz, h, n, p).transpose(-1, -2)


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
    h = static_shape(x)[2]
    if B.dim() == 3:
        B, C = B[:, :, None], C[:, :, None]
    if B.dim() != 4 or static_shape(C) != static_shape(B) or h % static_shape(B)[2]:
        raise ValueError(
            f"ssd_scan: B, C must be [b, l, g, n] or [b, l, n] with heads {h} divisible by g, "
            f"got {tuple(B.shape)}, {tuple(C.shape)}"
        )
    dt = dt.to(ct)
    if dt_bias is not None:
        dt = dt + dt_bias.to(ct)
    if dt_softplus:
        dt = F.softplus(dt)
    B, C = B.to(ct).transpose(1, 2), C.to(ct).transpose(1, 2)
    return x.to(ct).transpose(1, 2), dt.transpose(1, 2), A.to(ct), B, C


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
        if B.dim() == 3:  # the kernel wants the grouped form [b, l, g, n]
            B, C = B[:, :, None], C[:, :, None]
        return kernel(
            x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
            return_final_states=return_final_states,
        )
    xh, dth, A_, Bh, Ch = _ssd_prepare(x, dt, A, B, C, dt_bias, dt_softplus)
    if torch.is_autocast_enabled(x.device.type):  # keep the products in float32 too
        with torch.autocast(x.device.type, enabled=False):
            y, final = ssd_chunked(xh, dth, A_, Bh, Ch, chunk_size)
    else:
        y, final = ssd_chunked(xh, dth, A_, Bh, Ch, chunk_size)
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
        dti = dth[:, :, i, None, None]
        state = torch.exp(dti * A_[:, None, None]) * state + dti * xh[:, :, i, :, None] * Bh[:, :, i, None, :]
        ys.append((state * Ch[:, :, i, None, :]).sum(-1))
    y = torch.stack(ys, dim=1)
    if D is not None:
        D_ = D.to(y.dtype)
        y = y + x.to(y.dtype) * (D_[:, None] if D_.dim() == 1 else D_)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(x.dtype)
