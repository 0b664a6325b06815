"""Image reading, dataset layouts, the embedded default data, datasets and batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ens.data import (
    VAL_IMAGES,
    DataError,
    ImageReadError,
    LayoutError,
    PairBatches,
    PairingError,
    PatchDataset,
    clear_cache,
    load_pairs,
    make_loaders,
    read_image,
    scan_dataset,
)
from ens.data.embedded import TRAIN_SOURCES
from ens.data.fakes import make_gopro, make_paired, make_sidd, make_sidd_mats, random_image, write_png8, write_png16
from ens.errors import EnsError
from ens.tasks import get_task

# ----------------------------------------------------------------------------- image reading


def test_read_8bit_rgb_and_grey(tmp_path):
    rng = np.random.default_rng(0)
    rgb = (rng.random((9, 11, 3)) * 255).astype(np.uint8)
    img = read_image(write_png8(tmp_path / "rgb.png", rgb))
    assert img.dtype == np.float32 and img.shape == (9, 11, 3)
    np.testing.assert_allclose(img, rgb / 255.0, atol=1e-6)
    grey = (rng.random((9, 11)) * 255).astype(np.uint8)
    g = read_image(write_png8(tmp_path / "grey.png", grey))
    assert g.shape == (9, 11, 3)
    for c in range(3):
        np.testing.assert_allclose(g[:, :, c], grey / 255.0, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_read_16bit_png_exactly(tmp_path, channels):
    rng = np.random.default_rng(channels)
    shape = (7, 10) if channels == 1 else (7, 10, channels)
    a16 = (rng.random(shape) * 65535).astype(np.uint16)
    if channels == 4:
        a16[..., 3] = 65535  # opaque
    img = read_image(write_png16(tmp_path / "x16.png", a16))
    ref = a16.astype(np.float64) / 65535
    ref = np.repeat(ref[..., None], 3, axis=2) if channels == 1 else ref[..., :3]
    np.testing.assert_allclose(img, ref, atol=1e-6)  # full 16-bit precision, not truncated to 8 bits


def test_read_16bit_tiff_and_float_tiff(tmp_path):
    import tifffile

    a16 = (np.random.default_rng(0).random((6, 8, 3)) * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", a16, photometric="rgb")
    np.testing.assert_allclose(read_image(tmp_path / "x.tif"), a16 / 65535.0, atol=1e-6)
    tifffile.imwrite(tmp_path / "f.tif", np.full((6, 8, 3), 0.25, np.float32), photometric="rgb")
    np.testing.assert_allclose(read_image(tmp_path / "f.tif"), 0.25)
    tifffile.imwrite(tmp_path / "hdr.tif", np.full((6, 8, 3), 3.0, np.float32), photometric="rgb")
    with pytest.raises(ImageReadError, match=r"hdr\.tif.*outside|hdr\.tif.*expected \[0, 1\]"):
        read_image(tmp_path / "hdr.tif")


def test_rgba_opaque_is_dropped_transparent_refused(tmp_path):
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., :3] = 100
    rgba[..., 3] = 255
    img = read_image(write_png8(tmp_path / "opaque.png", rgba))
    assert img.shape == (5, 6, 3)
    np.testing.assert_allclose(img, 100 / 255, atol=1e-6)
    rgba[0, 0, 3] = 10
    path = write_png8(tmp_path / "see_through.png", rgba)
    with pytest.raises(ImageReadError, match="see_through.png.*transparen"):
        read_image(path)


def test_palette_bilevel_cmyk(tmp_path):
    from PIL import Image

    rgb = (np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    assert read_image(tmp_path / "pal.png").shape == (8, 8, 3)
    Image.fromarray(rgb[..., 0] > 128).save(tmp_path / "bw.png")
    bw = read_image(tmp_path / "bw.png")
    assert bw.shape == (8, 8, 3) and set(np.unique(bw)) <= {0.0, 1.0}
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert read_image(tmp_path / "cmyk.jpg").shape == (8, 8, 3)  # not mistaken for RGBA


def test_unreadable_files_are_refused_by_name(tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("corrupt.png", "empty.jpg", "missing.png"):
        with pytest.raises(ImageReadError, match=name) as info:
            read_image(tmp_path / name)
        assert "\n" not in str(info.value) and isinstance(info.value, EnsError)
    import imageio.v3 as iio

    frames = (np.zeros((3, 8, 8, 3)) + np.arange(3)[:, None, None, None] * 50).astype(np.uint8)
    iio.imwrite(tmp_path / "anim.gif", frames)
    with pytest.raises(ImageReadError, match="anim.gif.*frames"):
        read_image(tmp_path / "anim.gif")


# ----------------------------------------------------------------------------- layouts


def test_paired_layout_and_holdout(tmp_path):
    root = make_paired(tmp_path / "rain", n=12)
    spec = scan_dataset(root)
    assert spec.layouts == ("paired",)
    assert len(spec.train) + len(spec.val) == 12 and spec.val and spec.train
    assert {p.target.name for p in spec.train}.isdisjoint({p.target.name for p in spec.val})
    assert all(p.input.name == p.target.name for p in spec.train)
    again = scan_dataset(root)
    assert [p.target for p in again.val] == [p.target for p in spec.val]  # fixed, seed-independent
    whole = load_pairs("derain", root, "train", full_images=True, seed=4)  # the training pairs as read, whole
    assert whole.split == "train" and len(whole) == len(spec.train)
    d, c = whole[0]
    mult = 8
    want_c = read_image(spec.train[0].target)
    h, w = (want_c.shape[0] // mult) * mult, (want_c.shape[1] // mult) * mult
    assert tuple(c.shape) == (3, h, w) and tuple(d.shape) == (3, h, w)
    y, x = (want_c.shape[0] - h) // 2, (want_c.shape[1] - w) // 2
    want_d = read_image(spec.train[0].input)[y : y + h, x : x + w]
    assert np.allclose(d.permute(1, 2, 0).numpy(), want_d, atol=1e-6), "the folder's own degraded input"


def test_stem_matching_and_sr_names(tmp_path):
    rng = np.random.default_rng(0)
    write_png8(tmp_path / "a" / "input" / "x.jpg", random_image(rng, 20, 20))
    write_png8(tmp_path / "a" / "target" / "x.png", random_image(rng, 20, 20))
    write_png8(tmp_path / "a" / "input" / "y.png", random_image(rng, 20, 20))
    write_png8(tmp_path / "a" / "target" / "y.png", random_image(rng, 20, 20))
    assert len(scan_dataset(tmp_path / "a").train) + len(scan_dataset(tmp_path / "a").val) == 2
    # DIV2K naming for SR: 0001x2.png (LR, half size) <-> 0001.png (HR)
    for i in range(3):
        hr = random_image(rng, 32, 40)
        write_png8(tmp_path / "sr" / "target" / f"{i:04d}.png", hr)
        write_png8(tmp_path / "sr" / "input" / f"{i:04d}x2.png", hr[::2, ::2])
    ds = load_pairs("sr_x2", tmp_path / "sr", "train", 16, 0, 6)
    d, c = ds[0]
    assert d.shape == c.shape == (3, 16, 16)


def test_missing_partner_and_orphan_named(tmp_path):
    root = make_paired(tmp_path / "p", n=3)
    (root / "target" / "img001.png").unlink()
    with pytest.raises(PairingError, match=r"no clean partner for .*input/img001\.png"):
        scan_dataset(root)
    root2 = make_paired(tmp_path / "q", n=3)
    (root2 / "input" / "img002.png").unlink()
    with pytest.raises(PairingError, match=r"no degraded partner for .*target/img002\.png"):
        scan_dataset(root2)


def test_size_mismatch_and_small_images_refused(tmp_path):
    rng = np.random.default_rng(0)
    root = make_paired(tmp_path / "p", n=3, size=(40, 48))
    write_png8(root / "input" / "img001.png", random_image(rng, 40, 47))
    with pytest.raises(PairingError, match=r"size mismatch: .*img001\.png is 47x40 but .*img001\.png is 48x40"):
        load_pairs("denoise", root, "train", 16, 0, 8, workers=1)
    small = make_paired(tmp_path / "s", n=3, size=(20, 20))
    with pytest.raises(DataError, match=r"img00\d\.png is 20x20, smaller than the 32x32 patch"):
        load_pairs("denoise", small, "train", 32, 0, 8)


def test_corrupt_file_in_dataset_named(tmp_path):
    root = make_paired(tmp_path / "p", n=2)
    (root / "input" / "img000.png").write_bytes(b"garbage")
    (root / "input" / "img001.png").write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match=r"cannot read image .*input/img00\d\.png"):
        load_pairs("denoise", root, "train", 16, 0, 4)


def test_grey_rgba_16bit_inside_a_dataset(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "mixed"
    clean = random_image(rng, 24, 24)
    write_png8(root / "target" / "a.png", clean)
    write_png8(root / "input" / "a.png", clean.mean(axis=2))  # grey input, RGB target
    rgba = np.concatenate([np.round(clean * 255), np.full((24, 24, 1), 255)], axis=2).astype(np.uint8)
    write_png8(root / "target" / "b.png", rgba)
    write_png16(root / "input" / "b.png", np.round(clean * 65535).astype(np.uint16))
    spec = scan_dataset(root)
    pairs = spec.train + spec.val
    from ens.data import read_pair

    for p in pairs:
        d, c = read_pair(p, get_task("denoise"))
        assert d.shape == c.shape == (24, 24, 3)
    b = next(p for p in pairs if p.target.name == "b.png")
    d, c = read_pair(b, get_task("denoise"))
    np.testing.assert_allclose(d, clean, atol=1e-4)


def test_gopro_layout_splits_by_folder(tmp_path):
    root = make_gopro(tmp_path / "GOPRO_Large")
    spec = scan_dataset(root)
    assert spec.layouts == ("gopro",) and "test" in spec.split_source
    assert len(spec.train) == 6 and len(spec.val) == 4
    assert all("train" in str(p.target) for p in spec.train) and all("test" in str(p.target) for p in spec.val)
    assert all(p.target.parent.name == "sharp" and p.input.parent.name == "blur" for p in spec.train)
    # without train/test, whole scenes are held out
    spec2 = scan_dataset(root / "train")
    train_scenes = {p.group for p in spec2.train}
    assert train_scenes and train_scenes.isdisjoint({p.group for p in spec2.val})


def test_sidd_layouts(tmp_path):
    root = make_sidd(tmp_path / "SIDD_Medium_Srgb", n_scenes=3)
    spec = scan_dataset(root)
    assert spec.layouts == ("sidd",)
    assert all("NOISY" in p.input.name and "GT" in p.target.name for p in spec.train + spec.val)
    make_sidd_mats(root, images=2, blocks=3, size=32)
    spec = scan_dataset(root)
    assert len(spec.train) == 3 and len(spec.val) == 6 and spec.val[0].index == (0, 0)
    ds = load_pairs("denoise_real", root, "val", 32, 0, 4)
    d, c = ds[0]
    assert d.shape == (3, 32, 32) and not torch.equal(d, c)
    with pytest.raises(LayoutError, match="sidd dataset, which task 'deblur' does not take"):
        load_pairs("deblur", root, "train", 16, 0, 4)
    (root / "Data" / "0002_001_S6_00100_00060_3200_L" / "0002_GT_SRGB_010.PNG").unlink()
    with pytest.raises(PairingError, match="0002_NOISY_SRGB_010.PNG"):
        scan_dataset(root)


def test_collection_of_sets(tmp_path):
    make_paired(tmp_path / "train" / "Rain13K", n=4)
    make_paired(tmp_path / "test" / "Rain100H", n=2, seed=1)
    make_paired(tmp_path / "test" / "Rain100L", n=2, seed=2)
    spec = scan_dataset(tmp_path)
    assert len(spec.train) == 4 and len(spec.val) == 4
    assert {p.group.split("/")[0] for p in spec.val} == {"Rain100H", "Rain100L"}


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match="cannot tell the dataset layout of .*empty"):
        scan_dataset(tmp_path / "empty")
    (tmp_path / "e2" / "input").mkdir(parents=True)
    (tmp_path / "e2" / "target").mkdir(parents=True)
    with pytest.raises(DataError, match="no images in"):
        scan_dataset(tmp_path / "e2")
    make_paired(tmp_path / "one", n=1)
    with pytest.raises(DataError, match="cannot hold out"):
        scan_dataset(tmp_path / "one")
    with pytest.raises(LayoutError, match="does not look like a gopro"):
        scan_dataset(make_paired(tmp_path / "p", n=3), layout="gopro")
    with pytest.raises(LayoutError, match="unknown layout"):
        scan_dataset(tmp_path / "p", layout="kitti")


def test_clean_layout_degrades_synthetically(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        write_png8(tmp_path / "photos" / f"p{i}.png", random_image(rng, 64, 64))
    ds = load_pairs("deblur", tmp_path / "photos", "train", 24, 0, 8, layout="clean")
    d, c = ds[0]
    assert d.shape == (3, 24, 24) and not torch.equal(d, c)
    full = load_pairs("deblur", tmp_path / "photos", "val", layout="clean", full_images=True)
    d, c = full[0]
    assert d.shape == c.shape == (3, 64, 64)
    train = load_pairs("deblur", tmp_path / "photos", "train", layout="clean", full_images=True, seed=3)
    assert train.split == "train" and len(train) == 5 - len(full)  # the folder's training images, whole
    val_clean = {full[i][1].numpy().tobytes() for i in range(len(full))}
    assert all(train[i][1].numpy().tobytes() not in val_clean for i in range(len(train)))


# ----------------------------------------------------------------------------- embedded default


def test_embedded_split_is_by_image():
    train_names = {n for n, _, _ in TRAIN_SOURCES}
    assert set(VAL_IMAGES) == {"chelsea", "coffee"}
    assert train_names.isdisjoint(VAL_IMAGES) and "cat" not in train_names  # skimage.data.cat is chelsea


def test_embedded_train_deterministic_and_seeded():
    a = load_pairs("derain", None, "train", 16, seed=1, num_patches=80, workers=2)  # threaded
    clear_cache()  # or b would come from the in-memory cache
    b = load_pairs("derain", None, "train", 16, seed=1, num_patches=80, workers=1)
    assert a.degraded is not b.degraded
    assert load_pairs("derain", None, "train", 16, seed=1, num_patches=80).degraded is b.degraded  # cached
    c = load_pairs("derain", None, "train", 16, seed=2, num_patches=80)
    assert len(a) == 80 and a.degraded.shape == (80, 3, 16, 16)
    assert torch.equal(a.degraded, b.degraded) and torch.equal(a.clean, b.clean)
    assert not torch.equal(a.clean, c.clean)
    d, cl = a[3]
    assert d.dtype == torch.float32 and d.shape == (3, 16, 16) and 0 <= d.min() and d.max() <= 1
    assert a.info["source"] == "embedded" and set(a.info["images"]).isdisjoint(VAL_IMAGES)


def test_embedded_whole_training_images_one_per_source_and_seeded():
    a = load_pairs("derain", None, "train", full_images=True, seed=1)
    assert a.split == "train" and a.info["images"] == [n for n, _, _ in TRAIN_SOURCES]
    d, c = a[0]
    assert d.shape == c.shape == (3, 512, 512) and not torch.equal(d, c)  # astronaut, rain added
    again = load_pairs("derain", None, "train", full_images=True, seed=1)[0][0]
    other = load_pairs("derain", None, "train", full_images=True, seed=2)[0][0]
    assert torch.equal(d, again) and not torch.equal(d, other)  # the rain follows the seed
    val = load_pairs("derain", None, "val", full_images=True)
    assert {tuple(val[i][1].shape) for i in range(len(val))}.isdisjoint({tuple(a[i][1].shape) for i in range(3)})


def test_embedded_val_fixed_whatever_the_seed():
    v1 = load_pairs("deblur", None, "val", 32, seed=0, num_patches=6)
    v2 = load_pairs("deblur", None, "val", 32, seed=99, num_patches=6)
    assert torch.equal(v1.degraded, v2.degraded) and torch.equal(v1.clean, v2.clean)
    assert v1.info["images"] == list(VAL_IMAGES)
    assert not torch.equal(v1.degraded, v1.clean)
    assert float(v1.clean.float().std(dim=(1, 2, 3)).min()) > 0.02  # textured crops
    with pytest.raises(RuntimeError):
        v1.resample(1)
    full = load_pairs("sr_x3", None, "val", full_images=True)
    assert len(full) == 2
    for i in range(2):
        d, c = full[i]
        assert d.shape == c.shape and d.shape[1] % 24 == 0 and d.shape[2] % 24 == 0


def test_bad_arguments():
    with pytest.raises(EnsError):
        load_pairs("nope")
    with pytest.raises(DataError, match="multiple of"):
        load_pairs("sr_x3", None, "train", 64, 0, 4)
    with pytest.raises(DataError, match="larger than the embedded images"):
        load_pairs("denoise", None, "val", 512, 0, 2)
    with pytest.raises(DataError, match="seed"):
        load_pairs("denoise", None, "train", 16, -1, 2)


# ----------------------------------------------------------------------------- batches


def test_loaders_batches_and_epochs():
    train, val = make_loaders("denoise", patch_size=16, batch_size=4, seed=3, num_train=16, num_val=6)
    assert len(train) == 4 and len(val) == 2
    e0 = [d.clone() for d, _ in train]
    e1 = [d.clone() for d, _ in train]
    assert all(b.shape == (4, 3, 16, 16) and b.dtype == torch.float32 for b in e0)
    assert not all(torch.equal(x, y) for x, y in zip(e0, e1, strict=True))  # new order/flips each epoch
    train2, _ = make_loaders("denoise", patch_size=16, batch_size=4, seed=3, num_train=16, num_val=6)
    assert all(torch.equal(x, y) for x, y in zip(e0, [d for d, _ in train2], strict=True))  # seeded
    v = [d for d, _ in val]
    assert [b.shape[0] for b in v] == [4, 2]
    assert torch.equal(torch.cat(v), val.dataset.degraded.float())  # validation: fixed order, no flips


def test_augmentation_keeps_pairs_aligned():
    clean = torch.rand(32, 3, 8, 8).half()
    ds = PatchDataset(clean + 0.5, clean, task=get_task("denoise"), split="train", info={})
    batches = PairBatches(ds, 8, seed=0)
    for _ in range(2):
        for d, c in batches:
            torch.testing.assert_close(d, c + 0.5, atol=1e-3, rtol=0)
    ds.augment = True
    for i in range(8):
        d, c = ds[i]
        torch.testing.assert_close(d, c + 0.5, atol=1e-3, rtol=0)


def test_resample_draws_a_new_pool():
    ds = load_pairs("denoise15", None, "train", 16, 0, 8)
    before = ds.clean.clone()
    ds.resample(1)
    assert not torch.equal(before, ds.clean) and ds.clean.shape == before.shape
    ds.resample(0)
    assert torch.equal(before, ds.clean)


def test_every_embedded_derain_patch_is_degraded():
    """Rain streaks can miss a small patch; such a pair is redrawn (its input PSNR would be infinite)."""
    val = load_pairs("derain", None, "val", 48, seed=0)
    same = (val.degraded == val.clean).flatten(1).all(dim=1)
    assert not same.any()
