"""Tiled inference (ens.tiling), the PTQ calibration mosaics and QAT's checkpoint selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ens.data import load_pairs
from ens.evaluate import evaluate
from ens.finalize.qat import BestState, Selection
from ens.finalize.whole_images import calibration_mosaics
from ens.tasks import get_task
from ens.tiling import Tiled, run_tiled, tile_starts


@pytest.mark.parametrize("size,tile,overlap", [(10, 16, 4), (16, 16, 4), (17, 16, 4), (100, 16, 4), (61, 8, 0)])
def test_tiles_cover_the_image_and_overlap_as_asked(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert starts[-1] + tile == max(size, tile)  # the last tile ends at the border
    for a, b in zip(starts, starts[1:], strict=False):
        assert a + tile - b >= overlap  # neighbours share at least the overlap
        assert b - a <= tile - overlap  # and no more tiles than needed
    with pytest.raises(ValueError):
        tile_starts(size, tile, tile)


def _pointwise(x: torch.Tensor) -> torch.Tensor:
    return 2 * x + x.square() - 0.25


@pytest.mark.parametrize("h,w", [(5, 7), (16, 16), (23, 41)])
@pytest.mark.parametrize("batch", [1, 3])
def test_tiled_pointwise_network_equals_the_whole_image(h, w, batch):
    x = torch.rand(3, h, w, generator=torch.Generator().manual_seed(h * w))
    seen = []

    def fn(t: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(t.shape))
        return _pointwise(t)

    y = run_tiled(fn, x, (16, 16), overlap=4, batch=batch)
    assert y.shape == x.shape
    torch.testing.assert_close(y, _pointwise(x))
    assert set(seen) == {(batch, 3, 16, 16)}  # always the file's exact input shape


def test_tiled_module_scores_whole_images_like_the_network():
    task = get_task("denoise")
    g = torch.Generator().manual_seed(0)
    pairs = [(torch.rand(3, 24, 40, generator=g), torch.rand(3, 24, 40, generator=g)),
             (torch.rand(3, 40, 24, generator=g), torch.rand(3, 40, 24, generator=g))]
    whole = evaluate(nn.Identity(), pairs, task, batch_size=1)
    tiled = evaluate(Tiled(nn.Identity(), (16, 16), overlap=4), pairs, task, batch_size=1)
    assert tiled.psnr == pytest.approx(whole.psnr, abs=1e-6) and tiled.ssim == pytest.approx(whole.ssim, abs=1e-6)
    assert whole.psnr != pytest.approx(evaluate(None, pairs[:1], task).psnr)


def test_calibration_mosaics_lay_every_patch_once_into_the_deployed_shape():
    patches = [np.full((1, 3, 4, 4), float(i), np.float32) for i in range(8)]
    mosaics = calibration_mosaics(patches, (1, 3, 8, 10))  # 2 x 3 patches each (the last column cut to 2 px)
    assert [m.shape for m in mosaics] == [(1, 3, 8, 10)] * 2
    first = mosaics[0][0, 0]
    assert [first[0, 0], first[0, 4], first[0, 8], first[4, 0], first[4, 4], first[4, 8]] == [0, 1, 2, 3, 4, 5]
    second = mosaics[1][0, 0]
    assert [second[0, 0], second[0, 4], second[4, 8]] == [6, 7, 3]  # wraps round to the first patches


class _Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


def test_best_state_keeps_the_best_checked_weights():
    g = torch.Generator().manual_seed(1)
    deg = [torch.rand(3, 16, 16, generator=g) for _ in range(4)]
    select = Selection([(d, 0.5 * d) for d in deg], get_task("denoise"))
    model = _Scale()
    best = BestState(model, select)
    for step, w in ((0, 1.0), (100, 0.55), (200, 0.8)):
        with torch.no_grad():
            model.w.fill_(w)
        best.offer(step)
    assert best.step == 100 and list(best.by_step) == [0, 100, 200]
    assert best.by_step[100] > best.by_step[200] > best.by_step[0]
    best.restore()
    assert float(model.w) == pytest.approx(0.55)
    assert best.to_dict()["picked_step"] == 100 and best.to_dict()["pool_patches"] == 4
    assert best.to_dict()["by"] == "patches" and "4 training-image patches" in select.describe()


def test_selection_on_whole_images_scores_each_image_at_its_own_size():
    g = torch.Generator().manual_seed(2)
    deg = [torch.rand(3, 24, 40, generator=g), torch.rand(3, 16, 16, generator=g)]  # two sizes: batch 1
    select = Selection([(d, 0.5 * d) for d in deg], get_task("denoise"), by="whole")
    assert select.batch_size == 1 and select.describe() == "PSNR on 2 whole training images"
    model = _Scale()
    best = BestState(model, select)
    for step, w in ((0, 1.0), (100, 0.8), (200, 0.55)):
        with torch.no_grad():
            model.w.fill_(w)
        best.offer(step)
    assert best.step == 200 and best.by_step[200] > best.by_step[100] > best.by_step[0]
    d = best.to_dict()
    assert d["by"] == "whole" and d["images"] == 2 and d["sizes"] == [[24, 40], [16, 16]] and "pool_patches" not in d


@pytest.mark.parametrize("task", ["derain", "sr_x3"])
def test_selection_images_are_training_images_cropped_to_their_centres(task):
    from ens.finalize.pipeline import SELECT_SIDE, selection_images

    t = get_task(task)
    pairs = selection_images(t, None, 2, seed=5)
    assert len(pairs) == 2
    for deg, clean in pairs:
        assert deg.shape == clean.shape and max(deg.shape[-2:]) <= SELECT_SIDE  # SR inputs come upsampled
        assert deg.shape[-1] % 8 == 0 and deg.shape[-1] % t.scale == 0 and not torch.equal(deg, clean)
    full = load_pairs(t, None, "train", full_images=True, seed=5)
    c = full[0][1]  # astronaut, 512 px: the crop is its centre
    y0 = (c.shape[-2] - pairs[0][1].shape[-2]) // 2
    x0 = (c.shape[-1] - pairs[0][1].shape[-1]) // 2
    assert torch.equal(pairs[0][1], c[:, y0 : y0 + pairs[0][1].shape[-2], x0 : x0 + pairs[0][1].shape[-1]])


def test_blind_denoising_is_scored_at_each_sigma_where_the_noise_is_synthesized():
    from ens.finalize.whole_images import degradation_levels

    names = [t.name for t in degradation_levels(get_task("denoise"), synthetic=True)]
    assert names == ["denoise15", "denoise25", "denoise50"]
    assert [t.name for t in degradation_levels(get_task("denoise"), synthetic=False)] == ["denoise"]  # paired data
    assert [t.name for t in degradation_levels(get_task("derain"), synthetic=True)] == ["derain"]


def test_whole_image_quality_reports_each_level_and_their_mean(tmp_path):
    from ens.finalize.report import model_card
    from ens.finalize.whole_images import whole_image_quality

    torch.manual_seed(0)
    net = nn.Conv2d(3, 3, 3, padding=1)
    files = {}
    for name, scale in (("fp32", 1.0), ("int8", 0.9), ("ptq", 0.8)):  # three "files" that differ in quality
        m = nn.Sequential(net, nn.Hardtanh(0.0, scale)).eval()
        files[name] = tmp_path / f"{name}.onnx"
        torch.onnx.export(m, (torch.rand(1, 3, 16, 16),), str(files[name]), dynamo=False)
    g = torch.Generator().manual_seed(3)
    clean = [torch.rand(3, 24, 40, generator=g) * 0.7 for _ in range(2)]
    sets = {f"noise{s}": [((c + s * torch.randn(c.shape, generator=g)).clamp(0, 1), c) for c in clean]
            for s in (0.05, 0.2)}
    task = get_task("denoise")
    w = whole_image_quality(net.eval(), sets, task, files["fp32"], files["int8"], files["ptq"], threads=1,
                            fuse_qdq=True)
    assert set(w["levels"]) == {"noise0.05", "noise0.2"} and w["tile"] == [16, 16] and w["overlap"] == 4
    for key in ("degraded", "fp32_onnx", "int8_qdr", "int8_ptq", "fp32_torch_untiled"):
        assert w[key]["psnr"] == pytest.approx(np.mean([v[key]["psnr"] for v in w["levels"].values()]), abs=1e-3)
    lo, hi = w["levels"]["noise0.2"], w["levels"]["noise0.05"]
    assert lo["degraded"]["psnr"] < hi["degraded"]["psnr"]  # more noise, a worse input
    assert w["qdr_minus_ptq_db"] == pytest.approx(w["int8_qdr"]["psnr"] - w["int8_ptq"]["psnr"], abs=1e-3)
    assert w["int8_qdr"]["recovery_pct"] == pytest.approx(100 * w["int8_qdr"]["psnr"] / w["fp32_onnx"]["psnr"],
                                                          abs=1e-2)
    card = model_card({"task": "denoise", "arch": "a", "trial": {"number": 0, "how": "trial"}, "study": "s",
                       "zoo_id": "z", "preset": "tiny", "export": {"target": "onnx_int8", "files": []}, "params": 1,
                       "macs": 1, "shape_str": "1x3x16x16", "quality": {"whole_images": w}})
    assert "mean over 2 degradation levels" in card and "| noise0.2 |" in card
