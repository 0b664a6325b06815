"""``ZooManifest``: what a zoo on disk holds and how it was made (``manifest.json``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from blocks.unet import UNetConfig, stage_layout
from ens.errors import EnsError

ZOO_FORMAT = 1
MANIFEST = "manifest.json"
WEIGHTS = "zoo.safetensors"
QUALITY_JSON = "quality.json"
QUALITY_MD = "quality.md"


class ZooError(EnsError):
    """A zoo directory that is missing, corrupt, or does not match this code."""


@dataclass
class ZooManifest:
    zoo_id: str
    task: str
    preset: str
    config: dict[str, Any]
    kinds: list[str]
    slots: list[dict[str, Any]]  # one per block position: stage, index, dim, heads
    patch_size: int
    data_source: str
    seed: int
    teacher: dict[str, Any] = field(default_factory=dict)  # steps, loss, val psnr/ssim, input psnr/ssim
    distill: dict[str, Any] = field(default_factory=dict)  # steps, loss definition, per slot per kind
    calibration: dict[str, Any] = field(default_factory=dict)
    rank: dict[str, Any] = field(default_factory=dict)  # rank fidelity: n, finetune_steps, tau
    build: dict[str, Any] = field(default_factory=dict)  # command, machine, wall time, seconds per stage
    versions: dict[str, str] = field(default_factory=dict)
    wall_time_s: float = 0.0
    created: str = ""
    val_patches: int | None = None
    weights: str = WEIGHTS
    weights_sha256: str = ""
    format: int = ZOO_FORMAT

    @property
    def unet_config(self) -> UNetConfig:
        return UNetConfig.from_dict(self.config)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def read(cls, zoo_dir: str | Path) -> ZooManifest:
        path = Path(zoo_dir) / MANIFEST
        if not path.is_file():
            raise ZooError(f"{zoo_dir} is not a zoo: {MANIFEST} is missing (build one with 'ens zoo build')")
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ZooError(f"{path} is not valid JSON ({exc.__class__.__name__}): rebuild the zoo") from None
        if not isinstance(raw, dict) or raw.get("format") != ZOO_FORMAT:
            got = raw.get("format") if isinstance(raw, dict) else None
            raise ZooError(f"{path}: zoo format {got!r}, this ens reads format {ZOO_FORMAT}: rebuild the zoo")
        try:
            m = cls(**raw)
            m.unet_config  # noqa: B018  (validates the config)
        except (TypeError, KeyError, ValueError) as exc:
            raise ZooError(f"{path}: manifest does not match this ens ({exc}): rebuild the zoo") from None
        m.check_slots()
        return m

    def check_slots(self) -> None:
        want = slots_of(self.unet_config)
        if [(s["stage"], s["index"], s["dim"]) for s in self.slots] != [
            (s["stage"], s["index"], s["dim"]) for s in want
        ]:
            raise ZooError(f"zoo {self.zoo_id}: its slots do not match the U-Net this ens builds; rebuild it")


def slots_of(cfg: UNetConfig) -> list[dict[str, Any]]:
    return [
        {"stage": s.name, "index": i, "dim": s.dim, "heads": s.heads}
        for s in stage_layout(cfg)
        for i in range(s.depth)
    ]
