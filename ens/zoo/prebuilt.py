"""Zoos that ship inside the package, built by ``ens zoo build`` on the embedded default data.

Like once-for-all's trained supernets: a user's first ``ens search`` on the embedded data searches a
zoo that was trained well past a first command's budget. Each lives in ``ens/zoo/prebuilt/TASK-PRESET/``
(safetensors weights, manifest with the build command, wall time, machine and sha256; quality report).

:func:`resolve_zoo` decides which zoo a command uses:

1. ``--zoo DIR`` or ``--data DIR`` given: ``DIR/TASK-PRESET`` (or ``zoo/TASK-PRESET``), built there if missing;
2. a local ``zoo/TASK-PRESET`` exists: that one;
3. a prebuilt zoo exists for (task, preset) and ``from_scratch`` is off: the prebuilt one;
4. otherwise one is built into ``zoo/TASK-PRESET``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ens.zoo.manifest import MANIFEST

PREBUILT_ROOT = Path(__file__).with_name("prebuilt")
DEFAULT_ROOT = "zoo"


def prebuilt_dir(task: str, preset: str) -> Path | None:
    """The shipped zoo for (task, preset), or None."""
    d = PREBUILT_ROOT / f"{task}-{preset}"
    return d if (d / MANIFEST).is_file() else None


def prebuilt_names() -> list[str]:
    if not PREBUILT_ROOT.is_dir():
        return []
    return sorted(d.name for d in PREBUILT_ROOT.iterdir() if (d / MANIFEST).is_file())


@dataclass(frozen=True)
class ZooChoice:
    path: Path
    origin: str  # "local": found on disk; "prebuilt": shipped with ens; "build": to be built at ``path``
    root: str  # the folder of zoos it lives in (or is built into)


def resolve_zoo(task: str, preset: str, data: str | Path | None, zoo_root: str | Path | None,
                from_scratch: bool = False) -> ZooChoice:
    root = str(zoo_root) if zoo_root is not None else DEFAULT_ROOT
    local = Path(root) / f"{task}-{preset}"
    if zoo_root is not None or data is not None or (local / MANIFEST).is_file():
        return ZooChoice(local, "local" if (local / MANIFEST).is_file() else "build", root)
    pre = None if from_scratch else prebuilt_dir(task, preset)
    if pre is not None:
        return ZooChoice(pre, "prebuilt", str(PREBUILT_ROOT))
    return ZooChoice(local, "build", root)


def announce(choice: ZooChoice, zoo_id: str, log: Callable[[str], None]) -> None:
    if choice.origin == "prebuilt":
        log(f"using the prebuilt zoo {zoo_id} shipped with ens ({choice.path.name}); "
            "--from-scratch builds your own")


def study_zoo_dir(attrs: dict, explicit: str | Path | None, log: Callable[[str], None]) -> Path | None:
    """The zoo a study was searched with: ``--zoo`` if given, else the folder it recorded, else (for a study
    made on a prebuilt zoo, its install moved) the prebuilt zoo of its (task, preset)."""
    if explicit:
        return Path(explicit)
    recorded = Path(str(attrs.get("zoo_dir") or ""))
    if str(attrs.get("zoo_dir") or "") and (recorded / MANIFEST).is_file():
        if attrs.get("zoo_origin") == "prebuilt":
            log(f"using the prebuilt zoo {attrs.get('zoo_id')} shipped with ens ({recorded.name})")
        return recorded
    if attrs.get("zoo_origin") == "prebuilt":
        pre = prebuilt_dir(str(attrs.get("task")), str(attrs.get("preset")))
        if pre is not None:
            log(f"using the prebuilt zoo {attrs.get('zoo_id')} shipped with ens ({pre.name})")
            return pre
    return None
