"""The task registry."""

from __future__ import annotations

import numpy as np
import pytest

from ens.errors import EnsError
from ens.tasks import Task, get_task, list_tasks, register_task


def test_required_tasks_and_conventions():
    names = {t.name for t in list_tasks()}
    assert {"deblur", "derain", "denoise", "denoise15", "denoise25", "denoise50", "denoise_real", "sr_x2"} <= names
    assert get_task("derain").y_channel is True
    for name in ("deblur", "denoise", "denoise_real", "denoise25"):
        t = get_task(name)
        assert t.y_channel is False and t.crop_border == 0 and t.scale == 1
    sr = get_task("sr_x2")
    assert sr.scale == 2 and sr.crop_border == 2 and sr.patch_size % 8 == 0
    assert get_task("sr_x3").patch_size % 24 == 0
    assert get_task("deblur").metric_kwargs() == {"y_channel": False, "crop_border": 0}
    assert "gopro" in get_task("deblur").layouts and "sidd" in get_task("denoise_real").layouts
    assert all(t.patch_size > 0 and t.patch_size % t.scale == 0 for t in list_tasks())


def test_unknown_task_is_a_user_error():
    with pytest.raises(EnsError, match=r"unknown task 'blurry' \(choose from deblur, derain"):
        get_task("blurry")
    assert get_task(" Deblur ") is get_task("deblur")
    assert get_task(get_task("derain")).name == "derain"


@pytest.mark.parametrize("name", [t.name for t in list_tasks()])
def test_degrade_same_size_deterministic(name):
    task = get_task(name)
    clean = np.random.default_rng(0).random((48, 48, 3)).astype(np.float32)
    a = task.degrade(clean, np.random.default_rng(7))
    b = task.degrade(clean, np.random.default_rng(7))
    assert a.shape == clean.shape and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, clean)
    assert task.margin >= 0


def test_register_a_new_task():
    from ens import tasks as mod

    t = Task(name="lightly_noisy", description="test", degradation="gaussian_noise_15", patch_size=32)
    try:
        register_task(t)
        assert get_task("lightly_noisy") is t
        with pytest.raises(ValueError, match="already registered"):
            register_task(t)
        register_task(t, replace=True)
    finally:
        mod._TASKS.pop("lightly_noisy", None)
    with pytest.raises(KeyError):
        register_task(Task(name="x_bad", description="", degradation="no_such"))
    with pytest.raises(ValueError):
        register_task(Task(name="Bad Name", description="", degradation="motion_blur"))
    with pytest.raises(ValueError, match="multiple of scale"):
        register_task(Task(name="sr_bad", description="", degradation="bicubic_x3", patch_size=64, scale=3))
