"""Data for restoration tasks: dataset folders as distributed, the embedded default, image I/O.

Public API (details in each module):

- :func:`load_pairs` ``(task, data_dir=None, split="train", patch_size=None, seed=0, num_patches=None,
  *, layout="auto", full_images=False, augment=None, workers=None) -> PairDataset``
- :func:`make_loaders` ``(task, data_dir=None, *, patch_size=None, batch_size=16, seed=0, num_train=None,
  num_val=None, layout="auto", val_full_images=False, resample_every=0) -> (PairBatches, PairBatches)``
- :class:`PairDataset` (``PatchDataset``, ``ImageDataset``): ``ds[i] -> (degraded, clean)``, float32
  ``[3, H, W]`` in [0, 1]; :class:`PairBatches`: iterable of ``[B, 3, P, P]`` batches, one epoch per ``iter``.
- :func:`scan_dataset` ``(data_dir, layout="auto") -> DatasetSpec`` (layouts and splits of a folder)
- :func:`read_image` ``(path) -> float32 [H, W, 3]``, :func:`write_image` ``(path, img)``
- :func:`preview_grid` ``(task, ...) -> float32 [H, W, 3]``, :func:`write_preview`
- errors: :class:`DataError` (an ``EnsError``), :class:`ImageReadError`, :class:`PairingError`,
  :class:`LayoutError`
"""

from ens.data.datasets import (
    DEFAULT_TRAIN_PATCHES,
    DEFAULT_VAL_PATCHES,
    VAL_SEED,
    ImageDataset,
    PairBatches,
    PairDataset,
    PatchDataset,
    clear_cache,
    load_pairs,
    make_loaders,
    read_pair,
)
from ens.data.embedded import TRAIN_SOURCES, VAL_IMAGES
from ens.data.errors import DataError, ImageReadError, LayoutError, PairingError
from ens.data.io import read_image, write_image
from ens.data.layouts import LAYOUTS, DatasetSpec, Pair, scan_dataset
from ens.data.preview import preview_grid, write_preview

__all__ = [
    "DEFAULT_TRAIN_PATCHES",
    "DEFAULT_VAL_PATCHES",
    "LAYOUTS",
    "TRAIN_SOURCES",
    "VAL_IMAGES",
    "VAL_SEED",
    "DataError",
    "DatasetSpec",
    "ImageDataset",
    "ImageReadError",
    "LayoutError",
    "Pair",
    "PairBatches",
    "PairDataset",
    "PairingError",
    "PatchDataset",
    "clear_cache",
    "load_pairs",
    "make_loaders",
    "preview_grid",
    "read_image",
    "read_pair",
    "scan_dataset",
    "write_image",
    "write_preview",
]
