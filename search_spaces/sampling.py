"""Turning an Optuna trial into an ``Arch``."""

from __future__ import annotations

from collections.abc import Sequence

import optuna

from blocks.unet import UNetConfig, stage_layout
from search_spaces.arch import Arch
from search_spaces.errors import ArchError

GRANULARITIES = ("stage", "block")


def param_names(cfg: UNetConfig, granularity: str = "stage") -> list[str]:
    """The Optuna parameter names the search space uses, e.g. ``enc1`` or ``enc1.0``."""
    if granularity not in GRANULARITIES:
        raise ArchError(f"unknown granularity {granularity!r} (choose from {', '.join(GRANULARITIES)})")
    if granularity == "stage":
        return [s.name for s in stage_layout(cfg)]
    return [f"{s.name}.{i}" for s in stage_layout(cfg) for i in range(s.depth)]


def sample_arch(
    trial: optuna.Trial,
    cfg: UNetConfig,
    kinds: Sequence[str] = ("T", "M", "E"),
    granularity: str = "stage",
) -> Arch:
    names = param_names(cfg, granularity)
    choices = list(kinds)
    picked = {n: trial.suggest_categorical(n, choices) for n in names}
    return arch_from_params(picked, cfg, granularity)


def arch_from_params(params: dict[str, str], cfg: UNetConfig, granularity: str = "stage") -> Arch:
    """Inverse of :func:`sample_arch` for a finished trial's ``params``."""
    kinds: dict[str, list[str]] = {}
    for s in stage_layout(cfg):
        if granularity == "stage":
            kinds[s.name] = [params[s.name]] * s.depth
        else:
            kinds[s.name] = [params[f"{s.name}.{i}"] for i in range(s.depth)]
    return Arch.from_block_kinds(kinds)


def arch_to_params(arch: Arch, cfg: UNetConfig, granularity: str = "stage") -> dict[str, str]:
    """Parameters that make :func:`sample_arch` return ``arch`` (for ``study.enqueue_trial``)."""
    bk = arch.block_kinds(cfg)
    if granularity == "stage":
        out = {}
        for name, ks in bk.items():
            if len(set(ks)) != 1:
                raise ArchError(f"{arch} mixes kinds inside stage {name}: use granularity 'block'")
            out[name] = ks[0]
        return out
    return {f"{name}.{i}": k for name, ks in bk.items() for i, k in enumerate(ks)}
