"""Tiny fake datasets in the distributed layouts, for tests (here and in other layers) and demos.

Every builder writes small PNGs with a fixed seed and returns the folder.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth, textured float32 ``[H, W, 3]`` image in [0, 1] (not white noise, so degradations show)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), dtype=np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.05, 0.4), rng.uniform(0.05, 0.4), rng.uniform(0, 6.28)
        img[:, :, c] = 0.5 + 0.3 * np.sin(fx * xx + ph) * np.cos(fy * yy) + 0.1 * rng.standard_normal((h, w))
    return np.clip(img, 0.0, 1.0)


def write_png8(path: Path, img: np.ndarray) -> Path:
    import imageio.v3 as iio

    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, arr)
    return path


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def write_png16(path: Path, arr: np.ndarray) -> Path:
    """Write a 16-bit grey/RGB/RGBA PNG (Pillow cannot), cycling through all five row filters."""
    a = np.asarray(arr, dtype=">u2")
    h, w = a.shape[:2]
    channels = 1 if a.ndim == 2 else a.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    bpp = 2 * channels
    rows = [np.frombuffer(a[y].tobytes(), dtype=np.uint8).astype(np.int64) for y in range(h)]
    out = bytearray()
    prev = np.zeros_like(rows[0])
    for y, row in enumerate(rows):
        ftype = y % 5
        left = np.concatenate([np.zeros(bpp, dtype=np.int64), row[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, dtype=np.int64), prev[:-bpp]])
        if ftype == 0:
            f = row
        elif ftype == 1:
            f = row - left
        elif ftype == 2:
            f = row - prev
        elif ftype == 3:
            f = row - (left + prev) // 2
        else:
            pred = np.array([_paeth(int(x), int(u), int(ul)) for x, u, ul in zip(left, prev, upleft, strict=True)])
            f = row - pred
        out.append(ftype)
        out.extend((f % 256).astype(np.uint8).tobytes())
        prev = row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_paired(root: Path, n: int = 4, size: tuple[int, int] = (40, 48), seed: int = 0, names=None) -> Path:
    """``root/input`` and ``root/target`` with ``n`` pairs (input = target + noise)."""
    rng = np.random.default_rng(seed)
    names = names or [f"img{i:03d}.png" for i in range(n)]
    for name in names:
        clean = random_image(rng, *size)
        write_png8(root / "target" / name, clean)
        write_png8(root / "input" / name, np.clip(clean + 0.1 * rng.standard_normal(clean.shape), 0, 1))
    return root


def make_gopro(root: Path, scenes=(("train", 3), ("test", 2)), frames: int = 2, size=(40, 48), seed: int = 0) -> Path:
    """GoPro_Large: ``root/{train,test}/<scene>/{blur,sharp}/*.png``."""
    rng = np.random.default_rng(seed)
    for split, n_scenes in scenes:
        for s in range(n_scenes):
            scene = root / split / f"GOPR{s:04d}_{split}"
            for f in range(frames):
                clean = random_image(rng, *size)
                write_png8(scene / "sharp" / f"{f:06d}.png", clean)
                write_png8(scene / "blur" / f"{f:06d}.png", np.clip(clean * 0.9 + 0.05, 0, 1))
    return root


def make_sidd(root: Path, n_scenes: int = 3, size=(40, 48), seed: int = 0) -> Path:
    """SIDD Medium: ``root/Data/<instance>/<id>_{NOISY,GT}_SRGB_010.PNG``."""
    rng = np.random.default_rng(seed)
    for s in range(n_scenes):
        inst = root / "Data" / f"{s + 1:04d}_001_S6_00100_00060_3200_L"
        clean = random_image(rng, *size)
        write_png8(inst / f"{s + 1:04d}_GT_SRGB_010.PNG", clean)
        write_png8(
            inst / f"{s + 1:04d}_NOISY_SRGB_010.PNG", np.clip(clean + 0.05 * rng.standard_normal(clean.shape), 0, 1)
        )
    return root


def make_sidd_mats(root: Path, images: int = 2, blocks: int = 3, size: int = 32, seed: int = 0) -> Path:
    """SIDD validation blocks: ``root/Validation{Noisy,Gt}BlocksSrgb.mat`` of shape [images, blocks, size, size, 3]."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    gt = (rng.random((images, blocks, size, size, 3)) * 255).astype(np.uint8)
    noisy = np.clip(gt.astype(np.int16) + rng.integers(-10, 11, gt.shape), 0, 255).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    savemat(root / "ValidationGtBlocksSrgb.mat", {"ValidationGtBlocksSrgb": gt})
    savemat(root / "ValidationNoisyBlocksSrgb.mat", {"ValidationNoisyBlocksSrgb": noisy})
    return root
