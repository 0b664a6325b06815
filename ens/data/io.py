"""Image reading and writing: every image becomes float32 ``[H, W, 3]`` RGB in [0, 1], or is refused.

Conversions (anything else raises :class:`ImageReadError` naming the file):

- 8-bit: divided by 255; 16-bit (PNG, TIFF): divided by 65535, at full precision (Pillow alone
  reads 16-bit colour PNGs as 8-bit; we decode the low byte too); 1-bit: 0 or 1; float TIFF: kept
  if within [0, 1], refused otherwise (we will not guess its scale).
- grey (and 16-bit grey): replicated to three channels; palette images: expanded to RGB.
- RGBA / grey+alpha: the alpha channel is dropped *only if fully opaque*; an image with any
  transparent pixel is refused, because its RGB under the transparent pixels is arbitrary and
  flattening needs a background colour we cannot know.
- CMYK / YCbCr / LAB JPEGs: converted to RGB by Pillow.
- EXIF orientation is applied (as image viewers show the photo).
- multi-frame files (animated GIF, multi-page TIFF) and empty images are refused.
- an image of more than :func:`max_pixels` pixels (default 2**26, about 8192 x 8192; the environment
  variable ``ENS_MAX_IMAGE_PIXELS`` changes it) is refused from its header, before any pixel is decoded,
  as Pillow's decompression-bomb check does for its formats (which stays on), and for TIFF too.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ens.data.errors import DataError, ImageReadError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

MAX_PIXELS_ENV = "ENS_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 2**26
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Pillow rawmodes for 16-bit colour PNGs, and the unpacker that yields their low bytes instead.
_LOW_BYTE_RAWMODE = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def max_pixels() -> int:
    """The largest image (height x width) read: ``$ENS_MAX_IMAGE_PIXELS``, or 2**26."""
    raw = os.environ.get(MAX_PIXELS_ENV, "")
    try:
        return int(raw) if raw else DEFAULT_MAX_PIXELS
    except ValueError:
        raise DataError(f"{MAX_PIXELS_ENV}={raw!r} is not a whole number of pixels") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as float32 ``[H, W, 3]`` in [0, 1] (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"cannot read image {path}: no such file")
    h, w = image_size(path)
    if h * w > max_pixels():
        raise ImageReadError(f"cannot use image {path}: {w}x{h} is {h * w:,} pixels, more than the limit of "
                             f"{max_pixels():,} (set {MAX_PIXELS_ENV} to allow larger images)")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            arr, scale = _read_tiff(path)
        else:
            arr, scale = _read_pillow(path)
    except DataError:
        raise
    except MemoryError:
        raise ImageReadError(f"cannot read image {path}: not enough memory") from None
    except Exception as exc:  # any decoder failure: corrupt, truncated, not an image
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(f"cannot read image {path}: {reason}") from None
    return _to_rgb01(arr, scale, path)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` from the file header, without decoding the pixels."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.pages[0].shape
                axes = tif.pages[0].axes
            return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        from PIL import Image

        with Image.open(path) as im:  # Pillow's own bomb check (at twice its 89M-pixel limit) stays on
            w, h = im.size
            if _exif_orientation(im) in (5, 6, 7, 8):
                w, h = h, w
            return h, w
    except DataError:
        raise
    except Exception as exc:
        if type(exc).__name__ == "DecompressionBombError":
            raise ImageReadError(f"cannot use image {path}: more pixels than Pillow will open ({exc})") from None
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(f"cannot read image {path}: {reason}") from None


def _exif_orientation(im) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:
        return 1


def _read_pillow(path: Path) -> tuple[np.ndarray, float]:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        n_frames = getattr(im, "n_frames", 1)
        if n_frames > 1:
            raise ImageReadError(f"cannot use image {path}: it has {n_frames} frames (expected one picture)")
        if im.format == "PNG" and _is_png16_colour(path):
            arr = _read_png16_colour(path)
            if arr is not None:
                return arr, 65535.0
        orientation = _exif_orientation(im)
        if orientation != 1:
            im = ImageOps.exif_transpose(im)
        mode = im.mode
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif mode == "PA":
            im = im.convert("RGBA")
        elif mode == "La":
            im = im.convert("LA")
        elif mode == "RGBa":
            im = im.convert("RGBA")
        elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
            im = im.convert("RGB")
        elif mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "F") and not mode.startswith("I;16"):
            raise ImageReadError(f"cannot use image {path}: unsupported pixel mode {mode}")
        arr = np.array(im)
        if mode == "I":
            # 32-bit integer: Pillow's mode for some 16-bit greyscale files. Accept only 16-bit values.
            if im.format != "PNG" or arr.size == 0 or arr.min() < 0 or arr.max() > 65535:
                raise ImageReadError(f"cannot use image {path}: 32-bit integer pixels (expected 8 or 16 bit)")
            return arr.astype(np.uint16), 65535.0
        return arr, _full_scale(arr, path)


def _is_png16_colour(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(26)
    # IHDR: bytes 24 (bit depth) and 25 (colour type 2 = RGB, 6 = RGBA, 4 = grey + alpha).
    return len(head) == 26 and head[:8] == _PNG_SIGNATURE and head[24] == 16 and head[25] in (2, 4, 6)


def _read_png16_colour(path: Path) -> np.ndarray | None:
    """Exact 16-bit decode of an RGB(A) PNG: Pillow decodes the high bytes; re-running its decoder
    with the little-endian unpacker yields the low bytes. None (with a warning) if that is not possible."""
    from PIL import Image

    with Image.open(path) as im:
        tile = im.tile
        hi = np.array(im)
    if hi.dtype == np.uint16:  # a Pillow that reads 16-bit colour natively
        return hi
    ok = len(tile) == 1 and isinstance(tile[0].args, str) and tile[0].args in _LOW_BYTE_RAWMODE
    if ok:
        with Image.open(path) as im:
            im.tile = [tile[0]._replace(args=_LOW_BYTE_RAWMODE[tile[0].args])]
            lo = np.array(im)
        if lo.shape == hi.shape:
            return hi.astype(np.uint16) * 256 + lo
    warnings.warn(f"{path}: 16-bit colour PNG read at 8-bit precision", stacklevel=3)
    return None


def _read_tiff(path: Path) -> tuple[np.ndarray, float]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if len(tif.pages) > 1 and tif.series and len(tif.series[0].shape) > 3:
            raise ImageReadError(f"cannot use image {path}: it has several pages (expected one picture)")
        page = tif.pages[0]
        arr = page.asarray()
        photometric = getattr(page.photometric, "name", str(page.photometric))
        extrasamples = tuple(getattr(page, "extrasamples", ()))
    if arr.ndim == 3 and arr.shape[0] in (1, 2, 3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar storage
    if photometric in ("MINISWHITE",):
        raise ImageReadError(f"cannot use image {path}: inverted ('min-is-white') greyscale TIFF")
    if photometric not in ("RGB", "MINISBLACK") and not (arr.ndim == 3 and arr.shape[-1] in (3, 4)):
        raise ImageReadError(f"cannot use image {path}: unsupported TIFF photometric {photometric}")
    if arr.ndim == 3 and arr.shape[-1] == 4 and not extrasamples and photometric != "RGB":
        raise ImageReadError(f"cannot use image {path}: 4-channel TIFF that is not RGBA")
    return arr, _full_scale(arr, path)


def _full_scale(arr: np.ndarray, path: Path) -> float:
    if arr.dtype == np.bool_:
        return 1.0
    if arr.dtype == np.uint8:
        return 255.0
    if arr.dtype == np.uint16:
        return 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        return 1.0
    raise ImageReadError(f"cannot use image {path}: unsupported pixel type {arr.dtype} (expected 8/16-bit)")


def _to_rgb01(arr: np.ndarray, scale: float, path: Path) -> np.ndarray:
    if arr.size == 0 or arr.ndim < 2 or min(arr.shape[:2]) == 0:
        raise ImageReadError(f"cannot use image {path}: it is empty")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ImageReadError(f"cannot use image {path}: unexpected shape {arr.shape} (expected grey, RGB or RGBA)")
    img = arr.astype(np.float32)
    if scale != 1.0:
        img /= np.float32(scale)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(img).all():
            raise ImageReadError(f"cannot use image {path}: float pixels that are NaN or infinite")
        lo, hi = float(img.min()), float(img.max())
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise ImageReadError(f"cannot use image {path}: float pixels in [{lo:.3g}, {hi:.3g}], expected [0, 1]")
        img = np.clip(img, 0.0, 1.0)
    c = img.shape[2]
    if c in (2, 4):
        alpha = img[:, :, -1]
        if float(alpha.min()) < 1.0 - 1e-6:
            n = int((alpha < 1.0 - 1e-6).sum())
            raise ImageReadError(
                f"cannot use image {path}: it has transparency ({n} pixels with alpha < 1); "
                "flatten it onto a background first"
            )
        img = img[:, :, :-1]
        c -= 1
    if c == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img)


def write_image(path: str | Path, img: np.ndarray) -> Path:
    """Write float ``[H, W, 3]`` (or ``[H, W]``) in [0, 1] as an 8-bit image; atomic (temp file + rename)."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.parent.is_dir():
        raise DataError(f"cannot write {path}: folder {path.parent} does not exist")
    u8 = np.round(np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        iio.imwrite(tmp, u8, extension=path.suffix.lower() or ".png")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


__all__ = ["IMAGE_EXTENSIONS", "image_size", "is_image_file", "read_image", "write_image"]
