"""PSNR and SSIM in torch, batched, following the restoration papers' conventions.

Both take ``pred`` and ``target`` as tensors ``[B, C, H, W]`` or ``[C, H, W]`` (C = 3, or 1 for grey)
with values in ``[0, data_range]``, and return the mean over images (``reduction="mean"``, a 0-d
tensor) or one value per image (``reduction="none"``, shape ``[B]``). The mean of per-image values
is what the papers report. Neither clamps: clamp a network's output to the valid range first, as
Restormer's test scripts do.

- ``y_channel=True`` converts RGB to the BT.601 luma that Restormer/BasicSR (and MATLAB's
  ``rgb2ycbcr``) use: on RGB scaled to [0, 1],
  ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255``, which lies in [16/255, 235/255]; the metric
  then uses a peak of 1, i.e. it equals BasicSR's PSNR on Y in [0, 255] with peak 255. (The result
  is scaled back by ``data_range``, so ``data_range=255`` inputs give the same numbers.) Unlike
  MATLAB on uint8 images, Y is not rounded.
- ``crop_border=k`` removes k pixels on every side before computing (the SR convention).
- PSNR is ``10 log10(data_range^2 / MSE)`` per image over all channels and pixels, exactly
  scikit-image's ``peak_signal_noise_ratio``; identical images give ``inf``.
- SSIM is Wang et al.'s, with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
  population covariances, averaged over the *valid* region (5 px from each border) and then over
  channels: exactly scikit-image's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=..., channel_axis=...)``, and BasicSR's ``calculate_ssim``.
  It is computed in float64 (float32 elsewhere than CPU/CUDA) to avoid cancellation in the
  variance terms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_Y_WEIGHTS = (65.481, 128.553, 24.966)


def _prepare(pred, target, data_range: float, y_channel: bool, crop_border: int) -> tuple[torch.Tensor, ...]:
    pred = torch.as_tensor(pred)
    target = torch.as_tensor(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.dim() == 3:
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    if pred.dim() != 4:
        raise ValueError(f"expected [B, C, H, W] or [C, H, W], got shape {tuple(pred.shape)}")
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    if crop_border:
        if crop_border < 0 or 2 * crop_border >= min(pred.shape[-2:]):
            raise ValueError(f"crop_border {crop_border} is too large for size {tuple(pred.shape[-2:])}")
        pred = pred[..., crop_border:-crop_border, crop_border:-crop_border]
        target = target[..., crop_border:-crop_border, crop_border:-crop_border]
    dtype = torch.float64 if pred.device.type in ("cpu", "cuda") else torch.float32
    pred, target = pred.to(dtype), target.to(dtype)
    if y_channel:
        pred, target = rgb_to_y(pred, data_range), rgb_to_y(target, data_range)
    return pred, target


def rgb_to_y(img: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """BT.601 luma of ``[B, 3, H, W]`` RGB in [0, data_range], returned as ``[B, 1, H, W]`` in the same range."""
    if img.shape[-3] != 3:
        raise ValueError(f"y_channel needs 3 RGB channels, got {img.shape[-3]}")
    w = torch.tensor(_Y_WEIGHTS, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
    y = (img / data_range * w).sum(dim=-3, keepdim=True) + 16.0
    return y / 255.0 * data_range


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def psnr(
    pred,
    target,
    data_range: float = 1.0,
    y_channel: bool = False,
    crop_border: int = 0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB (see the module docstring); float32 result."""
    p, t = _prepare(pred, target, data_range, y_channel, crop_border)
    mse = (p - t).pow(2).flatten(1).mean(dim=1)
    out = 10.0 * torch.log10(data_range**2 / mse)  # inf where mse == 0, as scikit-image
    return _reduce(out, reduction).float()


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps (scipy's ``gaussian_filter`` weights for truncate 3.5)."""
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of ``[N, 1, H, W]``, valid region only."""
    x = F.conv2d(x, g.view(1, 1, -1, 1))
    return F.conv2d(x, g.view(1, 1, 1, -1))


def ssim(
    pred,
    target,
    data_range: float = 1.0,
    y_channel: bool = False,
    crop_border: int = 0,
    reduction: str = "mean",
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity (see the module docstring); float32 result."""
    p, t = _prepare(pred, target, data_range, y_channel, crop_border)
    b, c, h, w = p.shape
    if min(h, w) < win_size:
        raise ValueError(f"images of size {h}x{w} are smaller than the {win_size}x{win_size} SSIM window")
    g = gaussian_window(win_size, sigma, dtype=p.dtype, device=p.device)
    p = p.reshape(b * c, 1, h, w)
    t = t.reshape(b * c, 1, h, w)
    stacked = _filter_valid(torch.cat([p, t, p * p, t * t, p * t], dim=0), g)
    mu_p, mu_t, e_pp, e_tt, e_pt = stacked.split(b * c, dim=0)
    var_p = e_pp - mu_p * mu_p
    var_t = e_tt - mu_t * mu_t
    cov = e_pt - mu_p * mu_t
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    per_image = s.flatten(1).mean(dim=1).view(b, c).mean(dim=1)
    return _reduce(per_image, reduction).float()


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """PSNR in dB of a mean squared error (``inf`` for 0)."""
    return math.inf if mse <= 0 else 10.0 * math.log10(data_range**2 / mse)


__all__ = ["gaussian_window", "psnr", "psnr_from_mse", "rgb_to_y", "ssim"]
