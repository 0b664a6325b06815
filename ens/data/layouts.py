"""Dataset folders, read as they are distributed.

Layouts (``layout="auto"`` detects them; an explicit one is checked):

``paired``
    ``DIR/input/`` and ``DIR/target/``, matched by file name (or by stem, e.g. ``x.jpg``/``x.png``;
    for SR tasks also DIV2K's ``0001x2.png``/``0001.png``). This is how Rain13K, Rain100H/L,
    Test100/1200/2800 (Restormer's ``Datasets/``) are distributed, and the generic ``--data DIR``.
    Accepted aliases of the two folder names: ``input_crops|target_crops``, ``lq|gt``,
    ``noisy|clean``, ``noisy|gt``, ``rain|norain``, ``degraded|clean``.
``gopro``
    GoPro_Large: ``train|test/<scene>/blur|sharp`` (``blur_gamma/`` is ignored).
``sidd``
    SIDD Medium/Small sRGB: ``[Data/]<scene-instance>/*NOISY*.PNG`` with the ``*GT*`` file of the
    same name, and/or the validation blocks ``ValidationNoisyBlocksSrgb.mat`` +
    ``ValidationGtBlocksSrgb.mat`` (40 images x 32 blocks of 256x256).
``clean`` (explicit only, never detected)
    a folder of clean images; the task's synthetic degradation is applied.

Any of these may be wrapped in a collection folder (``test/Rain100H``, ``test/Rain100L``, ...).

Splits: if ``DIR`` has ``train/`` and ``val/`` (or ``test/``) subfolders, those are the splits (for
SIDD, ``Data/`` trains and the ``.mat`` blocks validate). Otherwise a fixed tenth of the *groups*
is held out for validation: a group is a GoPro scene, a SIDD scene instance, or one file of a
paired folder, so frames of one scene never straddle the split. Which groups are held out depends
only on their names (CRC32), not on the seed or on the other files.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ens.data.errors import DataError, ImageReadError, LayoutError, PairingError
from ens.data.io import is_image_file

LAYOUTS: dict[str, str] = {
    "gopro": "GoPro: train|test/<scene>/blur|sharp",
    "sidd": "SIDD: <scene>/*NOISY*|*GT* files, or Validation{Noisy,Gt}BlocksSrgb.mat",
    "paired": "input/ + target/ matched by file name (Rain13K, Rain100H/L, any folder of pairs)",
    "clean": "a folder of clean images, degraded synthetically (explicit --layout clean only)",
}
LAYOUT_ALIASES = {"rain13k": "paired", "rain100": "paired", "rain": "paired", "generic": "paired"}

PAIR_DIR_NAMES: tuple[tuple[str, str], ...] = (
    ("input", "target"),
    ("input_crops", "target_crops"),
    ("blur", "sharp"),
    ("lq", "gt"),
    ("noisy", "clean"),
    ("noisy", "gt"),
    ("rain", "norain"),
    ("degraded", "clean"),
)
_VAL_DIR_NAMES = ("val", "valid", "validation", "test")
_SIDD_MATS = ("ValidationNoisyBlocksSrgb.mat", "ValidationGtBlocksSrgb.mat")
HOLDOUT_MODULUS = 10


@dataclass(frozen=True)
class Pair:
    """One degraded/clean pair. ``input`` is None for the ``clean`` layout; ``index`` picks a block in a .mat."""

    input: Path | None
    target: Path
    group: str
    index: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        return str(self.target) + (f"[{self.index[0]},{self.index[1]}]" if self.index else "")


@dataclass
class DatasetSpec:
    """What a data folder holds: its layout(s), and the pairs of each split."""

    root: Path
    layouts: tuple[str, ...]
    train: list[Pair]
    val: list[Pair]
    split_source: str
    skipped: list[str] = field(default_factory=list)

    @property
    def layout(self) -> str:
        return "+".join(self.layouts)


@dataclass
class _Set:
    path: Path
    layout: str
    pairs: list[Pair]


def normalise_layout(layout: str | None) -> str:
    key = (layout or "auto").strip().lower()
    key = LAYOUT_ALIASES.get(key, key)
    if key != "auto" and key not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r} (choose from auto, {', '.join(LAYOUTS)})")
    return key


def _child(d: Path, name: str) -> Path | None:
    """The subfolder of ``d`` called ``name``, case-insensitively."""
    for c in _subdirs(d):
        if c.name.lower() == name:
            return c
    return None


def _subdirs(d: Path) -> list[Path]:
    try:
        return sorted(c for c in d.iterdir() if c.is_dir() and not c.name.startswith("."))
    except OSError as exc:
        raise DataError(f"cannot list folder {d}: {exc.strerror or exc}") from None


def _images(d: Path) -> list[Path]:
    try:
        return sorted(c for c in d.iterdir() if is_image_file(c))
    except OSError as exc:
        raise DataError(f"cannot list folder {d}: {exc.strerror or exc}") from None


def _match(in_dir: Path, tgt_dir: Path, scale: int) -> list[tuple[Path, Path]]:
    inputs, targets = _images(in_dir), _images(tgt_dir)
    if not inputs and not targets:
        raise DataError(f"no images in {in_dir} or {tgt_dir}")
    by_name = {p.name: p for p in targets}
    by_stem: dict[str, list[Path]] = {}
    for p in targets:
        by_stem.setdefault(p.stem, []).append(p)
    pairs, used, missing = [], set(), []
    for p in inputs:
        t = by_name.get(p.name)
        if t is None:
            stem = p.stem
            if scale > 1 and stem.lower().endswith(f"x{scale}") and stem[: -len(f"x{scale}")] in by_stem:
                stem = stem[: -len(f"x{scale}")]
            cands = by_stem.get(stem, [])
            if len(cands) > 1:
                raise PairingError(f"ambiguous partner for {p}: {', '.join(c.name for c in cands)} in {tgt_dir}")
            t = cands[0] if cands else None
        if t is None:
            missing.append(p)
            continue
        if t in used:
            raise PairingError(f"{t} is the partner of two inputs in {in_dir}; rename one")
        used.add(t)
        pairs.append((p, t))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise PairingError(f"no clean partner for {missing[0]} in {tgt_dir}{more}")
    orphans = [t for t in targets if t not in used]
    if orphans:
        more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
        raise PairingError(f"no degraded partner for {orphans[0]} in {in_dir}{more}")
    return pairs


def _pair_dirs(d: Path) -> tuple[Path, Path, str] | None:
    for a, b in PAIR_DIR_NAMES:
        ca, cb = _child(d, a), _child(d, b)
        if ca is not None and cb is not None:
            return ca, cb, ("gopro" if (a, b) == ("blur", "sharp") else "paired")
    return None


def _sidd_files(d: Path) -> list[Path]:
    return [p for p in _images(d) if "NOISY" in p.name.upper()]


def _sidd_set(d: Path) -> list[_Set]:
    """SIDD scene-instance folders below ``d`` (or ``d/Data``), or ``d`` itself holding NOISY/GT files."""
    data = _child(d, "data") or d
    folders = [c for c in _subdirs(data) if _sidd_files(c)]
    if _sidd_files(data):
        folders = [data, *folders]
    sets = []
    for f in folders:
        pairs = []
        gts = {p.name.upper(): p for p in _images(f) if "GT" in p.name.upper() and "NOISY" not in p.name.upper()}
        for noisy in _sidd_files(f):
            want = noisy.name.upper().replace("NOISY", "GT")
            gt = gts.pop(want, None)
            if gt is None:
                raise PairingError(f"no clean partner for {noisy}: expected {noisy.name.replace('NOISY', 'GT')}")
            pairs.append(Pair(noisy, gt, group=f.name))
        if gts:
            orphan = sorted(gts.values())[0]
            raise PairingError(f"no degraded partner for {orphan}: expected {orphan.name.replace('GT', 'NOISY')}")
        sets.append(_Set(f, "sidd", pairs))
    return sets


def _sidd_mat_set(d: Path) -> _Set | None:
    noisy, gt = (d / _SIDD_MATS[0]), (d / _SIDD_MATS[1])
    if not (noisy.is_file() or gt.is_file()):
        return None
    if not (noisy.is_file() and gt.is_file()):
        have, lack = (noisy, gt) if noisy.is_file() else (gt, noisy)
        raise PairingError(f"{have} needs its partner {lack}")
    n_img, n_blk = _mat_blocks(noisy)
    if _mat_blocks(gt) != (n_img, n_blk):
        raise PairingError(f"{noisy} and {gt} hold different numbers of blocks")
    pairs = [Pair(noisy, gt, group=f"{d.name}/image{i:02d}", index=(i, j)) for i in range(n_img) for j in range(n_blk)]
    return _Set(d, "sidd", pairs)


def _mat_blocks(path: Path) -> tuple[int, int]:
    """(images, blocks per image) of a SIDD block file, from its header (40 x 32 as distributed)."""
    try:
        from scipy.io import whosmat

        shapes = {name: shape for name, shape, _ in whosmat(str(path))}
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(f"cannot read {path}: {reason}") from None
    shape = shapes.get(path.stem)
    if shape is None or len(shape) != 5 or shape[-1] != 3:
        raise ImageReadError(f"cannot read {path}: expected a variable {path.stem} of blocks [images, blocks, H, W, 3]")
    return int(shape[0]), int(shape[1])


def _scan(d: Path, depth: int, scale: int, skipped: list[str]) -> list[_Set]:
    found = _pair_dirs(d)
    if found is not None:
        in_dir, tgt_dir, layout = found
        matched = _match(in_dir, tgt_dir, scale)
        if layout == "gopro":
            pairs = [Pair(i, t, group=d.name) for i, t in matched]
        else:
            pairs = [Pair(i, t, group=f"{d.name}/{t.stem}") for i, t in matched]
        return [_Set(d, layout, pairs)]
    sets = _sidd_set(d)
    mat = _sidd_mat_set(d)
    if mat is not None:
        sets.append(mat)
    if sets:
        return sets
    if depth > 0:
        out: list[_Set] = []
        for c in _subdirs(d):
            sub = _scan(c, depth - 1, scale, skipped)
            if sub:
                out.extend(sub)
            else:
                skipped.append(str(c))
        return out
    return []


def _holdout(pairs: list[Pair]) -> tuple[list[Pair], list[Pair]]:
    groups = sorted({p.group for p in pairs})
    if len(groups) < 2:
        what = pairs[0].group if pairs else "?"
        raise DataError(
            f"cannot hold out a validation split from {what}: it is one scene/image; "
            "add more, or use train/ and test/ subfolders"
        )
    val_groups = {g for g in groups if zlib.crc32(g.encode()) % HOLDOUT_MODULUS == 0}
    if not val_groups:
        val_groups = {groups[-1]}
    if len(val_groups) == len(groups):
        val_groups = {groups[-1]}
    return [p for p in pairs if p.group not in val_groups], [p for p in pairs if p.group in val_groups]


def _clean_pairs(d: Path) -> list[Pair]:
    return [Pair(None, p, group=p.stem) for p in _images(d)]


def scan_dataset(data_dir: str | Path, layout: str | None = "auto", *, scale: int = 1) -> DatasetSpec:
    """Find the pairs of both splits in ``data_dir`` (see the module docstring)."""
    root = Path(data_dir).expanduser()
    want = normalise_layout(layout)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"--data {root} is not a folder")
    skipped: list[str] = []

    if want == "clean":
        tr, va = _child(root, "train"), next((c for n in _VAL_DIR_NAMES if (c := _child(root, n))), None)
        if tr is not None and va is not None:
            train, val, src = _clean_pairs(tr), _clean_pairs(va), f"{tr.name}/ and {va.name}/ folders"
        else:
            pairs = _clean_pairs(root)
            if not pairs:
                raise DataError(f"no images in {root}")
            train, val = _holdout(pairs)
            src = "held out 1/10 of the images"
        if not train or not val:
            raise DataError(f"no images in {tr if not train else va}")
        return DatasetSpec(root, ("clean",), train, val, src, skipped)

    tr = _child(root, "train")
    va = next((c for n in _VAL_DIR_NAMES if (c := _child(root, n))), None)
    mat = _sidd_mat_set(root)
    train_sets: list[_Set]
    val_sets: list[_Set]
    if tr is not None and (va is not None or mat is not None):
        train_sets = _scan(tr, 2, scale, skipped)
        val_sets = [mat] if mat is not None and va is None else _scan(va, 2, scale, skipped)
        split_source = f"{tr.name}/ and {va.name if va is not None else mat.path.name}/ folders"
        if mat is not None and va is None:
            split_source = f"{tr.name}/ trains, {_SIDD_MATS[0]} validates"
        for what, sets, where in (("training", train_sets, tr), ("validation", val_sets, va or root)):
            if not sets:
                raise LayoutError(f"no {what} pairs found in {where}: {_expected()}")
    else:
        sets = _scan(root, 3, scale, skipped)
        if not sets:
            raise LayoutError(f"cannot tell the dataset layout of {root}: {_expected()}")
        mats = [s for s in sets if s.pairs and s.pairs[0].index is not None]
        folders = [s for s in sets if s not in mats]
        if mats and folders:  # SIDD: Data/ trains, the .mat blocks validate
            train_sets, val_sets = folders, mats
            split_source = f"image folders train, {_SIDD_MATS[0]} validates"
        else:
            all_pairs = [p for s in sets for p in s.pairs]
            train, val = _holdout(all_pairs)
            layouts = tuple(dict.fromkeys(s.layout for s in sets))
            _check_layout(root, layouts, want)
            return DatasetSpec(root, layouts, train, val, "held out 1/10 of the scenes/images (by name)", skipped)
    layouts = tuple(dict.fromkeys(s.layout for s in train_sets + val_sets))
    _check_layout(root, layouts, want)
    train = [p for s in train_sets for p in s.pairs]
    val = [p for s in val_sets for p in s.pairs]
    return DatasetSpec(root, layouts, train, val, split_source, skipped)


def _check_layout(root: Path, found: tuple[str, ...], want: str) -> None:
    if want != "auto" and any(f != want for f in found):
        raise LayoutError(f"{root} does not look like a {want} dataset (found: {', '.join(found)})")


def _expected() -> str:
    return (
        "expected input/ + target/ folders (paired, Rain13K/Rain100), <scene>/blur|sharp (GoPro), "
        "or *NOISY*/*GT* files (SIDD), optionally under train/ and test/"
    )


def check_task_layouts(spec: DatasetSpec, task_name: str, accepted: tuple[str, ...]) -> None:
    """Refuse a dataset whose layout the task does not take (``clean`` suits every task)."""
    bad = [lay for lay in spec.layouts if lay != "clean" and lay not in accepted]
    if bad:
        raise LayoutError(
            f"{spec.root} is a {bad[0]} dataset, which task {task_name!r} does not take "
            f"(it takes: {', '.join(accepted)})"
        )


__all__ = [
    "LAYOUTS",
    "DatasetSpec",
    "Pair",
    "check_task_layouts",
    "normalise_layout",
    "scan_dataset",
]
