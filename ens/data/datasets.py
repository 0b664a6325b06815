"""Datasets of (degraded, clean) pairs, as float32 tensors ``[3, H, W]`` in [0, 1].

Entry points: :func:`load_pairs` (one split) and :func:`make_loaders` (training batches plus
validation batches).

Training (``split="train"``): a *pool* of ``num_patches`` patches (default 2048) is cut and degraded
once, when the dataset is built, and kept in memory as float16 (2048 patches of 64x64 take 50 MB).
Each epoch then serves the pool in a fresh order with random flips/transposes (the 8 symmetries of
the square), so a training step costs an index and a flip: 2 CPU cores are never data-bound. Call
``dataset.resample(k)`` (or pass ``resample_every`` to :class:`PairBatches`) to draw a new pool
with fresh crops and fresh degradation noise.

- Embedded data (``data_dir=None``): random crops from the training photographs of
  :mod:`ens.data.embedded` (at 1, 0.75 and 0.5 scale; flat crops, standard deviation < 0.04, are
  redrawn up to 10 times), each degraded by ``task.degrade`` on a crop ``2 * task.margin`` larger
  whose centre is kept (no border artefacts). Patch ``i`` uses its own generator seeded by
  ``(seed, task, i)``, so the pool is identical for a given seed whatever the thread count.
- Folder data: ``ceil(num_patches / 8)`` pairs (all if fewer) are drawn with the seed and read (two
  threads), and ``num_patches`` aligned crops are cut from them (equally many per image).

Validation (``split="val"``): fixed and identical on every run *whatever the seed* (the seed only
affects training): ``num_patches`` (default 32) crops of ``patch_size`` from the validation images
(chelsea and coffee, alternately, for the embedded data), degraded with generators seeded by a
constant. ``full_images=True`` gives whole images instead, centre-cropped to a multiple of 8 (and of
the task's scale), one per item (batch size 1); folder images are then read lazily. Whole *training* images
(one per embedded training source, at full scale; or the folder's training pairs) are degraded with generators
seeded by ``seed``: finalize keeps its fine-tuning and QAT states by them.

Results are cached in memory per process (the 4 most recent), so repeated calls, e.g. one per
search trial, cost nothing; the tensors are shared and must not be modified in place.
"""

from __future__ import annotations

import math
import os
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ens.data import embedded
from ens.data.errors import DataError, ImageReadError, PairingError
from ens.data.io import read_image
from ens.data.layouts import DatasetSpec, Pair, check_task_layouts, scan_dataset
from ens.degradations.resize import imresize
from ens.tasks import Task, get_task

DEFAULT_TRAIN_PATCHES = 2048
DEFAULT_VAL_PATCHES = 32
VAL_SEED = 20260101  # the validation set's constant seed
MIN_PATCH_STD = 0.04
CROPS_PER_IMAGE = 8
_SPLIT_CODE = {"train": 0, "val": 1, "val_full": 2, "train_full": 3}


# ----------------------------------------------------------------------------- datasets


class PairDataset(Dataset):
    """Base: ``len(ds)`` items, ``ds[i] -> (degraded, clean)`` float32 ``[3, H, W]`` in [0, 1].

    ``info`` records where the data came from (source, layout, images, seed, ...), for manifests.
    """

    task: Task
    split: str
    info: dict

    def __len__(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


class PatchDataset(PairDataset):
    """Patches held in memory: ``degraded`` and ``clean`` are float16 tensors ``[N, 3, P, P]``.

    With ``augment=True`` (training), item ``i`` is transformed by one of the 8 symmetries of the
    square, chosen by ``(seed, epoch, i)``; call :meth:`set_epoch` to change them per epoch.
    """

    def __init__(
        self,
        degraded: torch.Tensor,
        clean: torch.Tensor,
        *,
        task: Task,
        split: str,
        info: dict,
        augment: bool = False,
        seed: int = 0,
        factory: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        if degraded.shape != clean.shape or degraded.dim() != 4:
            raise ValueError(f"degraded {tuple(degraded.shape)} and clean {tuple(clean.shape)} must match [N,3,P,P]")
        self.degraded, self.clean = degraded, clean
        self.task, self.split, self.info = task, split, info
        self.augment, self.seed, self.epoch = augment, seed, 0
        self._factory = factory

    @property
    def patch_size(self) -> int:
        return int(self.clean.shape[-1])

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resample(self, round_: int) -> None:
        """Replace the pool by a fresh one (new crops and degradations), drawn with ``(seed, round_)``."""
        if self._factory is None:
            raise RuntimeError("this dataset cannot be resampled (validation sets are fixed)")
        self.degraded, self.clean = self._factory(round_)
        self.info = {**self.info, "round": round_}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        d, c = self.degraded[i].float(), self.clean[i].float()
        if self.augment:
            k = int(np.random.default_rng([self.seed, self.epoch, i % len(self)]).integers(8))
            d, c = _dihedral(d, k), _dihedral(c, k)
        return d, c


class ImageDataset(PairDataset):
    """Whole images (various sizes), read and degraded when indexed; use batch size 1."""

    def __init__(self, loaders: list[Callable[[], tuple[np.ndarray, np.ndarray]]], *, task: Task, info: dict,
                 split: str = "val"):
        self._loaders = loaders
        self.task, self.split, self.info = task, split, info

    def __len__(self) -> int:
        return len(self._loaders)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        deg, clean = self._loaders[i]()
        return _chw(deg), _chw(clean)


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def _chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img, dtype=np.float32).transpose(2, 0, 1)))


# ----------------------------------------------------------------------------- batches


class PairBatches:
    """Batches ``(degraded, clean)`` of float32 ``[B, 3, P, P]`` from a dataset.

    Each ``iter()`` is one epoch: a fresh permutation (``shuffle``) and a random symmetry of the
    square per sample (``augment``: rotations by 90 degrees and flips), drawn from ``(seed, epoch)``.
    For a :class:`PatchDataset` the batch is gathered and augmented as whole tensors, grouped by
    symmetry (no per-item Python work). ``resample_every=k`` draws a new training pool every k
    epochs. With an :class:`ImageDataset`, batches hold one image.
    """

    def __init__(
        self,
        dataset: PairDataset,
        batch_size: int = 16,
        *,
        shuffle: bool = True,
        augment: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        resample_every: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.seed, self.epoch = dataset, seed, 0
        self.batch_size = batch_size if isinstance(dataset, PatchDataset) else 1
        self.shuffle, self.augment, self.resample_every = shuffle, augment, resample_every
        self.drop_last = drop_last and len(dataset) >= self.batch_size

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        ds = self.dataset
        if self.resample_every and epoch and epoch % self.resample_every == 0 and isinstance(ds, PatchDataset):
            ds.resample(epoch // self.resample_every)
        g = torch.Generator().manual_seed(int(np.random.default_rng([self.seed, epoch]).integers(2**62)))
        n = len(ds)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if isinstance(ds, PatchDataset):
                d, c = ds.degraded[idx].float(), ds.clean[idx].float()
            else:
                d, c = ds[int(idx[0])]
                d, c = d[None], c[None]
            if self.augment:
                d, c = _augment_batch(d, c, g)
            yield d, c


def _augment_batch(d: torch.Tensor, c: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample gets one of the 8 symmetries of the square (4 flips for non-square batches)."""
    b = d.shape[0]
    square = d.shape[-1] == d.shape[-2]
    ks = torch.randint(0, 8 if square else 4, (b,), generator=g)
    if not square:
        ks = torch.tensor([0, 2, 4, 6])[ks]  # rot180 and the two flips keep the shape
    out_d, out_c = torch.empty_like(d), torch.empty_like(c)
    for k in ks.unique().tolist():  # at most 8 groups: a few whole-tensor ops per batch
        idx = (ks == k).nonzero().squeeze(1)
        out_d[idx] = _dihedral(d[idx], k)
        out_c[idx] = _dihedral(c[idx], k)
    return out_d, out_c


# ----------------------------------------------------------------------------- public API


def load_pairs(
    task: Task | str,
    data_dir: str | Path | None = None,
    split: str = "train",
    patch_size: int | None = None,
    seed: int = 0,
    num_patches: int | None = None,
    *,
    layout: str = "auto",
    full_images: bool = False,
    augment: bool | None = None,
    workers: int | None = None,
) -> PairDataset:
    """One split of a task's data (see the module docstring).

    ``task``: a :class:`Task` or its name. ``data_dir``: a dataset folder, or None for the embedded
    default. ``split``: ``"train"`` or ``"val"``. ``patch_size``: default ``task.patch_size``; must be
    a multiple of ``task.scale``. ``num_patches``: default 2048 (train) / 32 (val). ``layout``:
    ``auto``, ``gopro``, ``sidd``, ``paired`` or ``clean`` (see :mod:`ens.data.layouts`).
    ``full_images``: whole images instead of patches. ``augment``: random
    symmetries in ``__getitem__`` (default: on for train). ``workers``: threads for generation/reading.
    Returns a :class:`PatchDataset` (or an :class:`ImageDataset` for full images).
    """
    task = get_task(task)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    patch = _check_patch(task, patch_size)
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"the seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    n = num_patches if num_patches is not None else (DEFAULT_TRAIN_PATCHES if split == "train" else DEFAULT_VAL_PATCHES)
    if n < 1:
        raise DataError(f"num_patches must be at least 1, got {n}")
    workers = workers or min(2, os.cpu_count() or 1)
    augment = (split == "train") if augment is None else augment

    if data_dir is None:
        if layout not in (None, "auto"):
            raise DataError(f"--layout {layout} needs --data")
        if full_images:
            return _embedded_full(task, split, seed)
        build, info = _embedded_source(task, split, patch, n, seed, workers)
    else:
        spec = scan_dataset(data_dir, layout, scale=task.scale)
        check_task_layouts(spec, task.name, task.layouts)
        info = {"source": str(spec.root), "layout": spec.layout, "split_source": spec.split_source,
                "pairs": len(spec.train if split == "train" else spec.val), "skipped": spec.skipped}
        if full_images:
            return _folder_full(task, spec, info, split, seed)
        build = _folder_source(task, spec, split, patch, n, seed, workers)
    deg, clean = build()
    info.update(
        {
            "task": task.name,
            "split": split,
            "degradation": task.degradation,
            "patch_size": patch,
            "num_patches": len(clean),
            "seed": seed if split == "train" else VAL_SEED,
        }
    )
    return PatchDataset(
        deg,
        clean,
        task=task,
        split=split,
        info=info,
        augment=augment,
        seed=seed,
        factory=build if split == "train" else None,
    )


def _embedded_source(task: Task, split: str, patch: int, n: int, seed: int,
                     workers: int) -> tuple[Callable[[int], tuple[torch.Tensor, torch.Tensor]], dict]:
    """The patch factory (``round -> pool``) and the provenance of the embedded data's ``split``."""
    key = ("embedded", task, split, patch, n, seed if split == "train" else VAL_SEED)

    def build(round_: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        if split == "train":
            return _cached(key + (round_,), lambda: _embedded_patches(task, "train", patch, n, seed, round_, workers))
        return _cached(key, lambda: _embedded_patches(task, "val", patch, n, VAL_SEED, 0, workers))

    info = {
        "source": "embedded",
        "images": embedded.train_image_names() if split == "train" else list(embedded.VAL_IMAGES),
        "scales": list(embedded.TRAIN_SCALES) if split == "train" else [1.0],
    }
    return build, info


def _folder_source(task: Task, spec: DatasetSpec, split: str, patch: int, n: int, seed: int,
                   workers: int) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """The patch factory (``round -> pool``) of a dataset folder's ``split``."""
    pairs = spec.train if split == "train" else spec.val

    def build(round_: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        s = seed if split == "train" else VAL_SEED
        chosen, per_image = _choose_pairs(pairs, n, s, round_, split)
        key = ("folder", task, split, patch, n, s, round_, pairs_fingerprint(chosen))
        return _cached(key, lambda: _folder_patches(task, chosen, per_image, patch, n, s, round_, split, workers))

    return build


def make_loaders(
    task: Task | str,
    data_dir: str | Path | None = None,
    *,
    patch_size: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    num_train: int | None = None,
    num_val: int | None = None,
    layout: str = "auto",
    val_full_images: bool = False,
    resample_every: int = 0,
) -> tuple[PairBatches, PairBatches]:
    """``(train_batches, val_batches)``: shuffled, augmented training batches; fixed, ordered validation batches."""
    train = load_pairs(task, data_dir, "train", patch_size, seed, num_train, layout=layout, augment=False)
    val = load_pairs(task, data_dir, "val", patch_size, seed, num_val, layout=layout, full_images=val_full_images)
    return (
        PairBatches(
            train, batch_size, shuffle=True, augment=True, drop_last=True, seed=seed, resample_every=resample_every
        ),
        PairBatches(val, batch_size, shuffle=False, augment=False, drop_last=False, seed=seed),
    )


# ----------------------------------------------------------------------------- internals


def _check_patch(task: Task, patch_size: int | None) -> int:
    patch = task.patch_size if patch_size is None else int(patch_size)
    if patch < 8:
        raise DataError(f"patch size must be at least 8, got {patch}")
    if patch % task.scale:
        raise DataError(f"patch size {patch} must be a multiple of task {task.name!r}'s scale {task.scale}")
    return patch


_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 4


def _cached(key, build: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    value = build()
    _CACHE[key] = value
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return value


def clear_cache() -> None:
    _CACHE.clear()


def _task_code(task: Task) -> int:
    return zlib.crc32(task.name.encode())


def _patch_rng(seed: int, task: Task, split: str, round_: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, _task_code(task), _SPLIT_CODE[split], round_, i])


def _textured_crop(rng: np.random.Generator, img: np.ndarray, size: int) -> np.ndarray:
    """A random ``size`` x ``size`` crop; flat ones (std < MIN_PATCH_STD) are redrawn up to 10 times."""
    h, w = img.shape[:2]
    best, best_std = None, -1.0
    for _ in range(10):
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        crop = img[y : y + size, x : x + size]
        s = float(crop.std())
        if s >= MIN_PATCH_STD:
            return crop
        if s > best_std:
            best, best_std = crop, s
    return best


def _degrade_patch(task: Task, crop: np.ndarray, rng: np.random.Generator, patch: int,
                   tries: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Degrade the crop and cut the centre patch. A patch the degradation left untouched (rain streaks
    that all fell outside it) is drawn again: it teaches nothing, and its input PSNR is infinite."""
    m = (crop.shape[0] - patch) // 2
    clean = crop[m : m + patch, m : m + patch]
    src = np.ascontiguousarray(crop)
    for _ in range(tries):
        deg = task.degrade(src, rng)[m : m + patch, m : m + patch]
        if not np.array_equal(deg.astype(np.float16), clean.astype(np.float16)):
            break
    return deg, clean


def _run_chunks(fn: Callable[[int, int], None], n: int, workers: int) -> None:
    if workers <= 1 or n < 64:
        fn(0, n)
        return
    bounds = np.linspace(0, n, workers * 4 + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda ab: fn(*ab), zip(bounds[:-1], bounds[1:], strict=True)))


def _to_tensors(deg: np.ndarray, clean: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    # [N, P, P, 3] float16 -> [N, 3, P, P]
    return (
        torch.from_numpy(deg).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(clean).permute(0, 3, 1, 2).contiguous(),
    )


def _embedded_patches(
    task: Task, split: str, patch: int, n: int, seed: int, round_: int, workers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    size = patch + 2 * task.margin
    if split == "train":
        sources = []
        for _name, imgs, weight in embedded.train_images():
            fit = [im for im in imgs if min(im.shape[:2]) >= size]
            if fit:
                sources.append((fit, weight))
    else:
        sources = [([im], 1.0) for _name, im in embedded.val_images() if min(im.shape[:2]) >= size]
    if not sources:
        raise DataError(
            f"patch size {patch} (plus a {task.margin} px margin) is larger than the embedded images; "
            "use a smaller patch or --data"
        )
    weights = np.array([w for _, w in sources], dtype=np.float64)
    weights /= weights.sum()
    deg = np.empty((n, patch, patch, 3), dtype=np.float16)
    clean = np.empty_like(deg)

    def work(a: int, b: int) -> None:
        for i in range(a, b):
            rng = _patch_rng(seed, task, split, round_, i)
            if split == "train":
                imgs = sources[int(rng.choice(len(sources), p=weights))][0]
            else:
                imgs = sources[i % len(sources)][0]
            img = imgs[int(rng.integers(len(imgs)))]
            deg[i], clean[i] = _degrade_patch(task, _textured_crop(rng, img, size), rng, patch)

    _run_chunks(work, n, workers)
    return _to_tensors(deg, clean)


def _embedded_full(task: Task, split: str = "val", seed: int = 0) -> ImageDataset:
    mult = _lcm(8, task.scale)
    images = embedded.val_images() if split == "val" else embedded.train_whole_images()
    seed, key = (VAL_SEED, "val_full") if split == "val" else (seed, "train_full")
    loaders = []
    for i, (_name, img) in enumerate(images):
        clean = _center_crop_multiple(img, mult)

        def load(clean=clean, i=i) -> tuple[np.ndarray, np.ndarray]:
            return task.degrade(np.ascontiguousarray(clean), _patch_rng(seed, task, key, 0, i)), clean

        loaders.append(lru_cache(maxsize=1)(load))
    info = {
        "source": "embedded",
        "images": [name for name, _ in images],
        "full_images": True,
        "task": task.name,
        "split": split,
        "degradation": task.degradation,
        "seed": seed,
    }
    return ImageDataset(loaders, task=task, info=info, split=split)


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def _center_crop_multiple(img: np.ndarray, mult: int) -> np.ndarray:
    h, w = img.shape[:2]
    nh, nw = h - h % mult, w - w % mult
    y, x = (h - nh) // 2, (w - nw) // 2
    return img[y : y + nh, x : x + nw]


# --- folders


@lru_cache(maxsize=2)
def _load_mat(path: str) -> np.ndarray:
    try:
        from scipy.io import loadmat

        mat = loadmat(path)
    except Exception as exc:
        raise ImageReadError(
            f"cannot read {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from None
    key = Path(path).stem
    arr = mat.get(key)
    if arr is None:
        raise ImageReadError(f"cannot read {path}: no variable {key!r} in it")
    if arr.ndim != 5 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ImageReadError(f"cannot read {path}: expected uint8 blocks [images, blocks, H, W, 3], got {arr.shape}")
    return arr


def _read_mat_block(path: Path, index: tuple[int, int]) -> np.ndarray:
    arr = _load_mat(str(path))
    i, j = index
    if i >= arr.shape[0] or j >= arr.shape[1]:
        raise ImageReadError(f"{path} has {arr.shape[0]}x{arr.shape[1]} blocks, not block [{i},{j}]")
    return arr[i, j].astype(np.float32) / 255.0


def read_pair(pair: Pair, task: Task, min_size: int = 0) -> tuple[np.ndarray | None, np.ndarray]:
    """Read one pair as float32 ``[H, W, 3]`` images (``None`` as the input of the ``clean`` layout).

    For SR tasks, an input exactly ``scale`` times smaller than its target is bicubic-upsampled to it.
    Different sizes otherwise, or an image smaller than ``min_size``, raise an error naming the files.
    """
    if pair.index is not None:
        clean, deg = _read_mat_block(pair.target, pair.index), _read_mat_block(pair.input, pair.index)
    else:
        clean = read_image(pair.target)
        deg = read_image(pair.input) if pair.input is not None else None
    h, w = clean.shape[:2]
    if deg is not None and deg.shape != clean.shape:
        dh, dw = deg.shape[:2]
        if task.scale > 1 and (dh, dw) == (h // task.scale, w // task.scale):
            deg = np.clip(imresize(deg, (h, w)), 0.0, 1.0)
        else:
            raise PairingError(f"size mismatch: {pair.input} is {dw}x{dh} but {pair.name} is {w}x{h} (width x height)")
    if min(h, w) < min_size:
        raise DataError(f"{pair.name} is {w}x{h}, smaller than the {min_size}x{min_size} patch (plus margin)")
    return deg, clean


def _choose_pairs(pairs: list[Pair], n: int, seed: int, round_: int, split: str) -> tuple[list[Pair], int]:
    if not pairs:
        raise DataError("no pairs in this split")
    if split == "train":
        k = min(len(pairs), max(1, math.ceil(n / CROPS_PER_IMAGE)))
        rng = np.random.default_rng([seed, 7, round_])
        idx = np.sort(rng.choice(len(pairs), size=k, replace=False))
    else:
        k = min(len(pairs), n)
        idx = np.unique(np.linspace(0, len(pairs) - 1, k).round().astype(int))
    return [pairs[int(i)] for i in idx], math.ceil(n / len(idx))


def pairs_fingerprint(pairs: list[Pair]) -> tuple:
    """(path, size, mtime) of every file of ``pairs``: changes when any of them is replaced or edited."""
    out = []
    for p in pairs:
        for f in (p.input, p.target):
            if f is not None:
                try:
                    st = f.stat()
                    out.append((str(f), st.st_size, st.st_mtime_ns))
                except OSError:
                    out.append((str(f), -1, -1))
    return tuple(out)


def _folder_patches(
    task: Task, pairs: list[Pair], per_image: int, patch: int, n: int, seed: int, round_: int, split: str, workers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    synthetic = pairs[0].input is None
    margin = task.margin if synthetic else 0
    size = patch + 2 * margin
    deg = np.empty((len(pairs) * per_image, patch, patch, 3), dtype=np.float16)
    clean = np.empty_like(deg)

    def one(j: int) -> None:
        d_img, c_img = read_pair(pairs[j], task, min_size=size)
        h, w = c_img.shape[:2]
        for k in range(per_image):
            i = j * per_image + k
            rng = _patch_rng(seed, task, split, round_, i)
            y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            if synthetic:
                deg[i], clean[i] = _degrade_patch(task, c_img[y : y + size, x : x + size], rng, patch)
            else:
                deg[i], clean[i] = d_img[y : y + size, x : x + size], c_img[y : y + size, x : x + size]

    if workers > 1 and len(pairs) > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(len(pairs))))
    else:
        for j in range(len(pairs)):
            one(j)
    # equally many crops per image, trimmed to n, in a seeded order
    keep = np.random.default_rng([seed, 11, round_]).permutation(len(deg))[:n] if split == "train" else np.arange(n)
    keep = np.sort(keep)
    return _to_tensors(deg[keep], clean[keep])


def _folder_full(task: Task, spec: DatasetSpec, info: dict, split: str = "val", seed: int = 0) -> ImageDataset:
    mult = _lcm(8, task.scale)
    seed, key = (VAL_SEED, "val_full") if split == "val" else (seed, "train_full")
    loaders = []
    for i, pair in enumerate(spec.val if split == "val" else spec.train):

        def load(pair=pair, i=i) -> tuple[np.ndarray, np.ndarray]:
            deg, clean = read_pair(pair, task, min_size=mult)
            clean = _center_crop_multiple(clean, mult)
            if deg is None:
                deg = task.degrade(np.ascontiguousarray(clean), _patch_rng(seed, task, key, 0, i))
            else:
                deg = _center_crop_multiple(deg, mult)
            return deg, clean

        loaders.append(load)
    info = {**info, "full_images": True, "task": task.name, "split": split, "degradation": task.degradation}
    return ImageDataset(loaders, task=task, info=info, split=split)


__all__ = [
    "DEFAULT_TRAIN_PATCHES",
    "DEFAULT_VAL_PATCHES",
    "VAL_SEED",
    "ImageDataset",
    "PairBatches",
    "PairDataset",
    "PatchDataset",
    "clear_cache",
    "load_pairs",
    "make_loaders",
    "read_pair",
]
