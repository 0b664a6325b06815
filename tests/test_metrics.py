"""ens.metrics against scikit-image's reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ens.metrics import psnr, rgb_to_y, ssim


def _pair(seed: int, h: int = 40, w: int = 52, noise: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    clean = np.stack([0.5 + 0.4 * np.sin(xx / (3 + c) + yy / 7) for c in range(3)], axis=2)
    clean = np.clip(clean + 0.05 * rng.standard_normal(clean.shape), 0, 1).astype(np.float32)
    pred = np.clip(clean + noise * rng.standard_normal(clean.shape), 0, 1).astype(np.float32)
    return pred, clean


def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)


def _sk_ssim(a, b, data_range, channel_axis=None):
    return structural_similarity(
        a,
        b,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=data_range,
        channel_axis=channel_axis,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rgb_matches_skimage(seed):
    pred, clean = _pair(seed, noise=0.02 + 0.05 * seed)
    assert abs(float(psnr(_t(pred), _t(clean))) - peak_signal_noise_ratio(clean, pred, data_range=1.0)) < 0.01
    assert abs(float(ssim(_t(pred), _t(clean))) - _sk_ssim(clean, pred, 1.0, channel_axis=2)) < 1e-3


def test_y_channel_matches_skimage_bt601():
    pred, clean = _pair(3)
    yp, yc = rgb2ycbcr(pred)[..., 0], rgb2ycbcr(clean)[..., 0]  # 16 + 65.481 R + ... on [0, 255]
    assert (
        abs(float(psnr(_t(pred), _t(clean), y_channel=True)) - peak_signal_noise_ratio(yc, yp, data_range=255)) < 0.01
    )
    assert abs(float(ssim(_t(pred), _t(clean), y_channel=True)) - _sk_ssim(yc, yp, 255)) < 1e-3
    y = rgb_to_y(_t(clean)[None])
    assert y.shape == (1, 1, 40, 52)
    np.testing.assert_allclose(y[0, 0].double().numpy(), yc / 255.0, atol=1e-6)


def test_crop_border_and_data_range_255():
    pred, clean = _pair(4)
    k = 3
    ref_p = peak_signal_noise_ratio(clean[k:-k, k:-k], pred[k:-k, k:-k], data_range=1.0)
    ref_s = _sk_ssim(clean[k:-k, k:-k], pred[k:-k, k:-k], 1.0, channel_axis=2)
    assert abs(float(psnr(_t(pred), _t(clean), crop_border=k)) - ref_p) < 0.01
    assert abs(float(ssim(_t(pred), _t(clean), crop_border=k)) - ref_s) < 1e-3
    # the same images on a 0-255 scale give the same numbers
    p255, c255 = _t(pred) * 255, _t(clean) * 255
    assert abs(float(psnr(p255, c255, data_range=255.0, crop_border=k)) - ref_p) < 0.01
    assert abs(float(ssim(p255, c255, data_range=255.0, crop_border=k)) - ref_s) < 1e-3
    yp, yc = rgb2ycbcr(pred)[..., 0], rgb2ycbcr(clean)[..., 0]
    ref_y = peak_signal_noise_ratio(yc, yp, data_range=255)
    assert abs(float(psnr(p255, c255, data_range=255.0, y_channel=True)) - ref_y) < 0.01


def test_batched_per_image_and_mean():
    pairs = [_pair(s, noise=0.03 * (s + 1)) for s in range(4)]
    pred = torch.stack([_t(p) for p, _ in pairs])
    clean = torch.stack([_t(c) for _, c in pairs])
    per = psnr(pred, clean, reduction="none")
    per_s = ssim(pred, clean, reduction="none")
    assert per.shape == (4,) and per_s.shape == (4,)
    for i, (p, c) in enumerate(pairs):
        assert abs(float(per[i]) - peak_signal_noise_ratio(c, p, data_range=1.0)) < 0.01
        assert abs(float(per_s[i]) - _sk_ssim(c, p, 1.0, channel_axis=2)) < 1e-3
    assert abs(float(psnr(pred, clean)) - float(per.mean())) < 1e-5
    assert abs(float(ssim(pred, clean)) - float(per_s.mean())) < 1e-6


def test_identical_images():
    _, clean = _pair(5)
    assert math.isinf(float(psnr(_t(clean), _t(clean))))
    assert abs(float(ssim(_t(clean), _t(clean))) - 1.0) < 1e-6


def test_bad_shapes_raise():
    a = torch.rand(3, 20, 20)
    with pytest.raises(ValueError, match="shape"):
        psnr(a, torch.rand(3, 20, 21))
    with pytest.raises(ValueError):
        ssim(torch.rand(3, 8, 8), torch.rand(3, 8, 8))  # smaller than the window
    with pytest.raises(ValueError, match="reduction"):
        psnr(a, a, reduction="sum")
    with pytest.raises(ValueError, match="crop_border"):
        psnr(a, a, crop_border=10)


@settings(max_examples=12, deadline=None)
@given(
    h=st.integers(11, 33),
    w=st.integers(11, 33),
    noise=st.floats(0.001, 0.3),
    seed=st.integers(0, 2**16),
    y=st.booleans(),
)
def test_random_sizes_match_skimage(h, w, noise, seed, y):
    rng = np.random.default_rng(seed)
    clean = rng.random((h, w, 3)).astype(np.float32)
    pred = np.clip(clean + noise * rng.standard_normal(clean.shape), 0, 1).astype(np.float32)
    if y:
        a, b, rng_ = rgb2ycbcr(clean)[..., 0], rgb2ycbcr(pred)[..., 0], 255
        ref_p, ref_s = peak_signal_noise_ratio(a, b, data_range=rng_), _sk_ssim(a, b, rng_)
    else:
        ref_p = peak_signal_noise_ratio(clean, pred, data_range=1.0)
        ref_s = _sk_ssim(clean, pred, 1.0, channel_axis=2)
    assert abs(float(psnr(_t(pred), _t(clean), y_channel=y)) - ref_p) < 0.01
    assert abs(float(ssim(_t(pred), _t(clean), y_channel=y)) - ref_s) < 1e-3


def test_evaluate_without_ssim_gives_the_same_psnr_and_no_ssim():
    from ens.evaluate import evaluate
    from ens.tasks import get_task

    g = torch.Generator().manual_seed(0)
    pairs = [(torch.rand(3, 24, 32, generator=g), torch.rand(3, 24, 32, generator=g)) for _ in range(3)]
    pairs.append((torch.rand(3, 16, 16, generator=g), torch.rand(3, 16, 16, generator=g)))  # another shape
    task = get_task("denoise")
    full, quick = evaluate(None, pairs, task), evaluate(None, pairs, task, with_ssim=False)
    assert quick.psnr == full.psnr and math.isfinite(full.ssim) and math.isnan(quick.ssim)
    kw = task.metric_kwargs()
    assert full.psnr == pytest.approx(float(np.mean([float(psnr(d[None], c[None], **kw)) for d, c in pairs])))
