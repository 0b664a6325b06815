"""The hybrid U-Net: Restormer's layout where every block position is a slot of any kind.

    x -> conv3x3 -> enc1 -> down -> enc2 -> down -> enc3 -> down -> lat
      -> up -> cat(enc3) -> 1x1 -> dec3 -> up -> cat(enc2) -> 1x1 -> dec2
      -> up -> cat(enc1) -> dec1 -> ref -> conv3x3 -> + x

Widths: enc1 C, enc2 2C, enc3 4C, lat 8C, dec3 4C, dec2 2C, dec1 and ref 2C (as Restormer, level 1
of the decoder keeps the concatenated 2C). Down is ``conv3x3(c, c/2) + PixelUnshuffle(2)``, up is
``conv3x3(c, 2c) + PixelShuffle(2)``. Inputs whose sides are not multiples of 8 are reflect-padded
and cropped back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from blocks.ops import Concat
from blocks.registry import build_block

STAGES: tuple[str, ...] = ("enc1", "enc2", "enc3", "lat", "dec3", "dec2", "dec1", "ref")
#: the stages at full resolution, whose path to the output image stays at full resolution (:meth:`HybridUNet.tail`)
FULL_RES_STAGES: tuple[str, ...] = ("enc1", "dec1", "ref")


@dataclass(frozen=True)
class UNetConfig:
    dim: int = 48
    num_blocks: tuple[int, int, int, int] = (4, 6, 6, 8)
    num_refinement_blocks: int = 4
    heads: tuple[int, int, int, int] = (1, 2, 4, 8)
    ffn_expansion: float = 2.66
    bias: bool = False
    layernorm: str = "withbias"
    in_channels: int = 3
    out_channels: int = 3
    # extra keyword arguments per block kind, e.g. {"M": {"d_state": 16}}
    block_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["num_blocks"] = list(self.num_blocks)
        d["heads"] = list(self.heads)
        d["block_options"] = {k: dict(v) for k, v in self.block_options.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UNetConfig:
        d = dict(d)
        d["num_blocks"] = tuple(d["num_blocks"])
        d["heads"] = tuple(d["heads"])
        return cls(**d)


PRESETS: dict[str, UNetConfig] = {
    "tiny": UNetConfig(dim=16, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2)),
    "small": UNetConfig(dim=24, num_blocks=(2, 2, 2, 4), num_refinement_blocks=2, heads=(1, 2, 4, 8)),
    "paper": UNetConfig(),
}


def get_preset(name: str) -> UNetConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})") from None


@dataclass(frozen=True)
class StageInfo:
    name: str
    dim: int
    heads: int
    depth: int


def stage_layout(cfg: UNetConfig) -> list[StageInfo]:
    c, nb, hd = cfg.dim, cfg.num_blocks, cfg.heads
    return [
        StageInfo("enc1", c, hd[0], nb[0]),
        StageInfo("enc2", 2 * c, hd[1], nb[1]),
        StageInfo("enc3", 4 * c, hd[2], nb[2]),
        StageInfo("lat", 8 * c, hd[3], nb[3]),
        StageInfo("dec3", 4 * c, hd[2], nb[2]),
        StageInfo("dec2", 2 * c, hd[1], nb[1]),
        StageInfo("dec1", 2 * c, hd[0], nb[0]),
        StageInfo("ref", 2 * c, hd[0], cfg.num_refinement_blocks),
    ]


def uniform_kinds(cfg: UNetConfig, kind: str) -> dict[str, list[str]]:
    return {s.name: [kind] * s.depth for s in stage_layout(cfg)}


def block_options_for(cfg: UNetConfig, kind: str) -> dict[str, Any]:
    common: dict[str, Any] = {"layernorm": cfg.layernorm}
    if kind == "T":
        common.update(ffn_expansion=cfg.ffn_expansion, bias=cfg.bias)
    common.update(cfg.block_options.get(kind, {}))
    return common


class SlotBlock(nn.Module):
    """One block position. Holds one or more candidate kinds and runs the active one."""

    def __init__(self, dim: int, heads: int, candidates: Sequence[str], cfg: UNetConfig) -> None:
        super().__init__()
        self.choices = nn.ModuleDict(
            {k: build_block(k, dim, heads, **block_options_for(cfg, k)) for k in candidates}
        )
        self.active = candidates[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.choices[self.active](x)


class Downsample(nn.Sequential):
    def __init__(self, c: int) -> None:
        super().__init__(nn.Conv2d(c, c // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))


class Upsample(nn.Sequential):
    def __init__(self, c: int) -> None:
        super().__init__(nn.Conv2d(c, c * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))


class HybridUNet(nn.Module):
    """U-Net whose block at position ``stages[s][i]`` is of kind ``kinds[s][i]``.

    ``kinds`` maps each stage name to one kind letter per block (``None``: all transformer).
    ``candidates`` (optional) gives several kinds per position: that is the zoo's supernet, whose
    parameters are named ``stages.<stage>.<i>.choices.<kind>.*``; a plain network holds only the
    active kind, under the same names, so its weights are a subset of the supernet's.
    """

    def __init__(
        self,
        cfg: UNetConfig,
        kinds: Mapping[str, Sequence[str]] | None = None,
        candidates: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        layout = stage_layout(cfg)
        kinds = dict(kinds) if kinds is not None else uniform_kinds(cfg, "T")
        for s in layout:
            if len(kinds.get(s.name, ())) != s.depth:
                raise ValueError(f"stage {s.name} has {s.depth} blocks, got kinds {kinds.get(s.name)!r}")
        c = cfg.dim
        self.patch_embed = nn.Conv2d(cfg.in_channels, c, 3, padding=1, bias=cfg.bias)
        self.stages = nn.ModuleDict()
        for s in layout:
            blocks = []
            for k in kinds[s.name]:
                cands = [k] + [x for x in (candidates or ()) if x != k]
                blocks.append(SlotBlock(s.dim, s.heads, cands, cfg))
            self.stages[s.name] = nn.Sequential(*blocks)
        self.down1_2, self.down2_3, self.down3_4 = Downsample(c), Downsample(2 * c), Downsample(4 * c)
        self.up4_3, self.up3_2, self.up2_1 = Upsample(8 * c), Upsample(4 * c), Upsample(2 * c)
        self.reduce3 = nn.Conv2d(8 * c, 4 * c, 1, bias=cfg.bias)
        self.reduce2 = nn.Conv2d(4 * c, 2 * c, 1, bias=cfg.bias)
        self.join3, self.join2, self.join1 = Concat(), Concat(), Concat()  # the skip joins (blocks.ops)
        self.output = nn.Conv2d(2 * c, cfg.out_channels, 3, padding=1, bias=cfg.bias)

    # -- choosing kinds -------------------------------------------------------------------------
    def kinds(self) -> dict[str, list[str]]:
        return {name: [b.active for b in seq] for name, seq in self.stages.items()}

    def set_kinds(self, kinds: Mapping[str, Sequence[str]]) -> None:
        for name, seq in self.stages.items():
            for block, k in zip(seq, kinds[name], strict=True):
                if k not in block.choices:
                    raise ValueError(f"{name}: kind {k!r} is not a candidate here ({list(block.choices)})")
                block.active = k

    def slot_blocks(self) -> list[tuple[str, int, SlotBlock]]:
        return [(name, i, b) for name, seq in self.stages.items() for i, b in enumerate(seq)]

    # -- forward --------------------------------------------------------------------------------
    def tail(self, stage: str, index: int, h: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
        """The full-resolution rest of the network after block ``index`` of ``stage`` (one of
        :data:`FULL_RES_STAGES`), given that block's output ``h``: the image residual that ``forward``
        adds to its (padded) input. After an ``enc1`` block the path is the skip connection, joined by
        ``up`` (the output of ``up2_1``, held fixed), then ``dec1``, ``ref`` and the output convolution.
        """
        st = self.stages
        if stage not in FULL_RES_STAGES:
            raise ValueError(f"no full-resolution tail after stage {stage!r} (one of {', '.join(FULL_RES_STAGES)})")
        if stage == "enc1":
            if up is None:
                raise ValueError("the tail after an enc1 block needs up, the output of up2_1")
            h = self.join1(up, st["enc1"][index + 1:](h))
            stage, index = "dec1", -1
        if stage == "dec1":
            h = st["dec1"][index + 1:](h)
            index = -1
        return self.output(st["ref"][index + 1:](h))

    def forward(self, x: torch.Tensor, return_latent: bool = False):
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        inp = F.pad(x, (0, pw, 0, ph), mode="reflect") if (ph or pw) else x
        st = self.stages
        e1 = st["enc1"](self.patch_embed(inp))
        e2 = st["enc2"](self.down1_2(e1))
        e3 = st["enc3"](self.down2_3(e2))
        lat = st["lat"](self.down3_4(e3))
        d3 = st["dec3"](self.reduce3(self.join3(self.up4_3(lat), e3)))
        d2 = st["dec2"](self.reduce2(self.join2(self.up3_2(d3), e2)))
        d1 = st["dec1"](self.join1(self.up2_1(d2), e1))
        out = self.output(st["ref"](d1)) + inp
        if ph or pw:
            out = out[..., :h, :w]
        return (out, lat) if return_latent else out
