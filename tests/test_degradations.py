"""Synthetic degradations: deterministic, valid images, and physically plausible."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ens.degradations import get_degradation, list_degradations, register_degradation
from ens.degradations.blur import apply_kernel, random_motion_kernel, random_trajectory
from ens.degradations.noise import add_gaussian_noise, add_poisson_gaussian_noise
from ens.degradations.rain import render_rain, streak_kernel
from ens.degradations.resize import down_up, imresize, resize_matrix


def _img(h=64, w=64, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([0.5 + 0.3 * np.sin(xx / (2 + c) + yy / 5) for c in range(3)], axis=2)
    img = np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1).astype(np.float32)
    img.setflags(write=False)  # degradations must not write into their input
    return img


@pytest.mark.parametrize("deg", list_degradations(), ids=lambda d: d.name)
def test_every_degradation_valid_and_seeded(deg):
    img = _img()
    a = deg(img, np.random.default_rng(1))
    b = deg(img, np.random.default_rng(1))
    assert a.shape == img.shape and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    if not deg.name.startswith("bicubic"):
        c = deg(img, np.random.default_rng(2))
        assert not np.array_equal(a, c)


def test_registry_errors():
    with pytest.raises(KeyError, match="unknown degradation"):
        get_degradation("fog")
    with pytest.raises(ValueError, match="already registered"):
        register_degradation("motion_blur", "dup")(lambda x, r: x)
    with pytest.raises(ValueError):
        get_degradation("motion_blur")(np.zeros((8, 8), np.float32), np.random.default_rng(0))


def _chord_deviation(pts: np.ndarray) -> float:
    """Largest distance of the path from the straight line between its ends."""
    d = pts[-1] - pts[0]
    n = np.hypot(*d)
    if n < 1e-6:
        return float(np.abs(pts - pts[0]).max())
    return float(np.abs((pts[:, 0] - pts[0, 0]) * d[1] - (pts[:, 1] - pts[0, 1]) * d[0]).max() / n)


def test_blur_trajectories_are_varied_and_curved():
    rng = np.random.default_rng(0)
    paths = [random_trajectory(rng) for _ in range(200)]
    lengths = [float(np.hypot(*np.diff(p, axis=0).T).sum()) for p in paths]
    angles = [math.atan2(*(p[-1] - p[0])[::-1]) for p in paths]
    curved = [_chord_deviation(p) > 1.5 for p in paths]
    assert min(lengths) < 5 and max(lengths) > 13  # varied length (3-15 px)
    assert np.histogram(angles, bins=4, range=(-math.pi, math.pi))[0].min() > 20  # all directions
    assert 0.3 < np.mean(curved) < 0.95  # mostly curved, some nearly straight
    for p in paths[:20]:
        k = random_motion_kernel(np.random.default_rng(len(p)))
        assert k.ndim == 2 and k.shape[0] % 2 == 1 and k.shape[0] <= 33
        assert abs(float(k.sum()) - 1) < 1e-5 and k.min() >= 0


def test_blur_preserves_flat_images_and_blurs_edges():
    flat = np.full((40, 40, 3), 0.4, np.float32)
    k = random_motion_kernel(np.random.default_rng(3))
    np.testing.assert_allclose(apply_kernel(flat, k), flat, atol=1e-5)
    img = _img()
    out = get_degradation("motion_blur")(img, np.random.default_rng(0))
    grad = lambda x: np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()  # noqa: E731
    assert grad(out) < grad(img)


def test_rain_streaks_vary_and_brighten():
    k = streak_kernel(20.0, 0.0, 1.0)
    assert k.max() == pytest.approx(1.0)
    ys, xs = np.nonzero(k > 0.5)
    assert np.ptp(ys) > 3 * max(np.ptp(xs), 1)  # angle 0 is a vertical streak
    covers = [float((render_rain(np.random.default_rng(s), (64, 64)) > 0.1).mean()) for s in range(30)]
    assert max(covers) > 3 * min(covers)  # density varies
    dark = np.full((64, 64, 3), 0.1, np.float32)
    out = get_degradation("rain_streaks")(dark, np.random.default_rng(5))
    assert (out >= dark - 1e-6).all() and out.max() > 0.4  # screen blend: rain only brightens a dark scene


def test_gaussian_noise_level():
    grey = np.full((128, 128, 3), 0.5, np.float32)
    for sigma in (15, 25, 50):
        out = add_gaussian_noise(grey, np.random.default_rng(0), sigma)
        assert abs(float((out - grey).std()) * 255 - sigma) < 0.05 * sigma
    out = get_degradation("gaussian_noise_25")(grey, np.random.default_rng(1))
    assert abs(float((out - grey).std()) * 255 - 25) < 1.5
    seen = {
        round(float((get_degradation("gaussian_noise")(grey, np.random.default_rng(s)) - grey).std() * 255))
        for s in range(12)
    }
    assert all(min(abs(s - t) for t in (15, 25, 50)) <= 2 for s in seen) and len(seen) >= 2


def test_poisson_gaussian_is_camera_like():
    flat_dark = np.full((96, 96, 3), 0.2, np.float32)
    flat_bright = np.full((96, 96, 3), 0.8, np.float32)
    rng = np.random.default_rng(0)
    dark = add_poisson_gaussian_noise(flat_dark, rng, shot=4e-3, read=1e-5)
    rng = np.random.default_rng(0)
    bright = add_poisson_gaussian_noise(flat_bright, rng, shot=4e-3, read=1e-5)
    np.testing.assert_allclose(dark * 255, np.round(dark * 255), atol=1e-3)  # 8-bit quantised
    n = dark - dark.mean(axis=(0, 1))
    corr = float((n[:, 1:] * n[:, :-1]).mean() / (n * n).mean())
    assert corr > 0.1  # demosaicked: spatially correlated, unlike white noise
    assert abs(float(dark.mean()) - 0.2) < 0.02 and abs(float(bright.mean()) - 0.8) < 0.02
    assert dark.std() > 0 and bright.std() > 0


def test_matlab_bicubic():
    x = np.arange(16, dtype=np.float64)
    down = resize_matrix(16, 8) @ x
    np.testing.assert_allclose(down[1:-1], np.arange(8)[1:-1] * 2 + 0.5, atol=0.02)
    np.testing.assert_allclose(resize_matrix(16, 8).sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(resize_matrix(10, 10), np.eye(10), atol=1e-6)
    img = _img(30, 36)
    assert imresize(img, (15, 18)).shape == (15, 18, 3)
    np.testing.assert_allclose(imresize(img, (30, 36)), img, atol=1e-5)
    flat = np.full((33, 33, 3), 0.3, np.float32)
    np.testing.assert_allclose(down_up(flat, 3), flat, atol=1e-5)
    blurred = get_degradation("bicubic_x2")(img, np.random.default_rng(0))
    assert blurred.shape == img.shape and 0 < np.abs(blurred - img).mean() < 0.2
