"""Loading a zoo from disk (safetensors only) and building any ``Arch`` from it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from blocks.registry import block_kinds
from blocks.unet import HybridUNet, UNetConfig
from ens.zoo.manifest import ZooError, ZooManifest
from search_spaces.arch import Arch


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Zoo:
    path: Path | None
    manifest: ZooManifest
    state: dict[str, torch.Tensor]

    @classmethod
    def load(cls, zoo_dir: str | Path, verify_hash: bool = True) -> Zoo:
        zoo_dir = Path(zoo_dir)
        m = ZooManifest.read(zoo_dir)
        unknown = set(m.kinds) - set(block_kinds())
        if unknown:
            raise ZooError(f"zoo {m.zoo_id} uses block kinds {sorted(unknown)} that this ens does not have")
        if Path(m.weights).name != m.weights or m.weights in ("", ".", ".."):
            raise ZooError(f"zoo {zoo_dir}: the manifest's weights {m.weights!r} must be a file name inside the zoo")
        if verify_hash and not m.weights_sha256:
            raise ZooError(f"zoo {zoo_dir}: the manifest has no weights_sha256; rebuild the zoo")
        wpath = zoo_dir / m.weights
        if not wpath.is_file():
            raise ZooError(f"zoo {zoo_dir}: weights file {m.weights} is missing; rebuild the zoo")
        if verify_hash and file_sha256(wpath) != m.weights_sha256:
            raise ZooError(f"zoo {zoo_dir}: {m.weights} does not match the manifest's checksum (corrupt?)")
        try:
            state = load_file(str(wpath))
        except (SafetensorError, OSError) as exc:
            raise ZooError(f"zoo {zoo_dir}: cannot read {m.weights} ({exc})") from None
        zoo = cls(zoo_dir, m, state)
        zoo.supernet()  # shape check against the code
        return zoo

    @property
    def config(self) -> UNetConfig:
        return self.manifest.unet_config

    @property
    def zoo_id(self) -> str:
        return self.manifest.zoo_id

    def supernet(self) -> HybridUNet:
        net = HybridUNet(self.config, candidates=self.manifest.kinds)
        self._load_into(net)
        return net

    def build(self, arch: Arch | str) -> HybridUNet:
        """The hybrid network for ``arch`` with the zoo's weights, in eval mode; no training."""
        arch = Arch.parse(arch) if isinstance(arch, str) else arch
        arch.check_kinds(self.manifest.kinds)
        net = HybridUNet(self.config, arch.block_kinds(self.config))
        self._load_into(net)
        return net.eval()

    def _load_into(self, net: HybridUNet) -> None:
        want = net.state_dict()
        missing = [k for k in want if k not in self.state]
        bad = [k for k in want if k in self.state and self.state[k].shape != want[k].shape]
        if missing or bad:
            what = (missing or bad)[0]
            raise ZooError(
                f"zoo {self.zoo_id} does not match the code: {len(missing)} missing and {len(bad)} "
                f"mis-shaped tensors (first: {what}); rebuild the zoo"
            )
        net.load_state_dict({k: self.state[k] for k in want})
