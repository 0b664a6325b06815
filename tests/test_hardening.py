"""Resource limits and concurrency: image pixel limit, the zoo-build lock, the once-only data check."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest

from ens.data.errors import ImageReadError
from ens.data.fakes import make_paired, write_png8
from ens.data.io import read_image


def test_images_above_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    import tifffile

    png = write_png8(tmp_path / "a.png", np.zeros((40, 50, 3)))
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, np.zeros((40, 50, 3), np.uint8))
    assert read_image(png).shape == (40, 50, 3) and read_image(tif).shape == (40, 50, 3)
    monkeypatch.setenv("ENS_MAX_IMAGE_PIXELS", "1999")  # 40 x 50 = 2000
    for p in (png, tif):
        with pytest.raises(ImageReadError, match="50x40 is 2,000 pixels, more than the limit of 1,999"):
            read_image(p)
    monkeypatch.setenv("ENS_MAX_IMAGE_PIXELS", "2000")
    assert read_image(png).shape == (40, 50, 3)
    monkeypatch.setenv("ENS_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(Exception, match="not a whole number"):
        read_image(png)


def test_a_second_zoo_build_waits_for_the_first_and_uses_its_zoo(tmp_path, micro_zoo, micro_cfg, micro_recipe):
    from ens.zoo.build import build_zoo
    from studies.lock import FileLock

    root = tmp_path / "zoo"
    root.mkdir()
    other = FileLock(root / ".deblur-tiny.lock")  # another process, building deblur-tiny
    assert other.acquire(wait=False)
    logs: list[str] = []
    got: list = []
    t = threading.Thread(target=lambda: got.append(build_zoo(
        "deblur", "tiny", out_root=root, config=micro_cfg, recipe=micro_recipe, show_progress=False,
        log=logs.append)))
    t.start()
    deadline = time.monotonic() + 30
    while not any("waiting for another process" in m for m in logs) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(f"pid {__import__('os').getpid()}" in m for m in logs), logs
    assert t.is_alive() and not (root / ".deblur-tiny.work").exists(), "the second build must not start"
    shutil.copytree(micro_zoo, root / "deblur-tiny")  # the first build finishes
    other.release()
    t.join(timeout=60)
    assert got == [root / "deblur-tiny"]
    assert any("built meanwhile" in m for m in logs) and not (root / ".deblur-tiny.work").exists()


def test_a_dataset_is_read_once_and_again_when_a_file_changes(tmp_path):
    from ens.data.check import check_dataset_once

    data = make_paired(tmp_path / "d", n=4, size=(80, 80))
    logs: list[str] = []
    check_dataset_once("derain", data, 64, logs.append)
    check_dataset_once("derain", data, 64, logs.append)
    assert len(logs) == 1 and "checking the 4 pairs" in logs[0]
    write_png8(data / "input" / "img001.png", np.zeros((80, 81, 3)))  # now a bad pair
    with pytest.raises(Exception, match="size mismatch"):
        check_dataset_once("derain", data, 64, logs.append)
    assert len(logs) == 2
