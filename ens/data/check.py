"""Reading every pair of a dataset folder once, before anything is trained or written.

``ens data check`` prints the result; ``ens search`` and ``ens zoo build`` call :func:`check_dataset_once`
so that a corrupt file, a missing counterpart or a too-small image in either split is a one-line error
before a study database or a zoo folder exists. A folder that passed is remembered (by its files'
paths, sizes and modification times) under ``$ENS_CACHE_DIR/data-checks``, so it is read once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ens.data.datasets import pairs_fingerprint, read_pair
from ens.data.layouts import DatasetSpec, check_task_layouts, scan_dataset
from ens.tasks import Task, get_task

SPLITS = ("train", "val")


@dataclass(frozen=True)
class SplitCheck:
    pairs: int  # in the split
    read: int  # read and checked (all, unless limited)
    smallest: tuple[int, int]  # (height, width) of the smallest target read
    largest: tuple[int, int]


@dataclass(frozen=True)
class DatasetCheck:
    spec: DatasetSpec
    splits: dict[str, SplitCheck]


def _pairs(spec: DatasetSpec, split: str) -> list:
    return spec.train if split == "train" else spec.val


def check_dataset(task: Task | str, data_dir: str | Path, layout: str = "auto", min_size: int | None = None,
                  limit: int | None = None,
                  on_pair: Callable[[str, int, int], None] | None = None) -> DatasetCheck:
    """Read every pair (or the first ``limit``) of both splits; raises the reader's ``DataError``.

    ``min_size``: the smallest side an image may have (default: the task's patch size).
    ``on_pair(split, done, total)`` is called after each pair (for a progress bar)."""
    task = get_task(task)
    spec = scan_dataset(data_dir, layout, scale=task.scale)
    check_task_layouts(spec, task.name, task.layouts)
    splits = {}
    for split in SPLITS:
        pairs = _pairs(spec, split)[:limit] if limit else _pairs(spec, split)
        lo = hi = None
        base = task.patch_size if min_size is None else min_size
        for i, p in enumerate(pairs):
            # a clean-only pair is degraded on the fly, which needs a margin around the patch
            _, clean = read_pair(p, task, min_size=base + (task.margin if p.input is None else 0))
            hw = clean.shape[:2]
            lo = hw if lo is None or hw[0] * hw[1] < lo[0] * lo[1] else lo
            hi = hw if hi is None or hw[0] * hw[1] > hi[0] * hi[1] else hi
            if on_pair is not None:
                on_pair(split, i + 1, len(pairs))
        splits[split] = SplitCheck(len(_pairs(spec, split)), len(pairs), tuple(lo or (0, 0)), tuple(hi or (0, 0)))
    return DatasetCheck(spec, splits)


def check_dataset_once(task: Task | str, data_dir: str | Path, min_size: int,
                       log: Callable[[str], None] = print) -> None:
    """:func:`check_dataset` on both splits, skipped when these very files already passed."""
    from profilers.cache import cache_root

    task = get_task(task)
    spec = scan_dataset(data_dir, "auto", scale=task.scale)
    key = hashlib.sha256(json.dumps([task.name, min_size, pairs_fingerprint(spec.train), pairs_fingerprint(spec.val)],
                                    default=str).encode()).hexdigest()[:32]
    mark = cache_root() / "data-checks" / f"{key}.ok"
    if mark.is_file():
        return
    n = len(spec.train) + len(spec.val)
    log(f"checking the {n} pairs of {spec.root} (both splits, once)")
    check_dataset(task, data_dir, min_size=min_size)
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.write_text(str(Path(data_dir).resolve()) + "\n")
