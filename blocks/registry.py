"""Block kinds keyed by a one-letter code; a new kind is one ``register_block`` call.

Every kind is built as ``factory(dim, heads, **options)`` and maps [B, C, H, W] to [B, C, H, W],
so any kind plugs into any slot of the U-Net.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

BlockFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class BlockKind:
    letter: str
    name: str
    description: str
    factory: BlockFactory


_KINDS: dict[str, BlockKind] = {}


def register_block(letter: str, name: str, description: str) -> Callable[[BlockFactory], BlockFactory]:
    if len(letter) != 1 or not letter.isupper():
        raise ValueError(f"a block kind is one upper-case letter, got {letter!r}")

    def wrap(factory: BlockFactory) -> BlockFactory:
        if letter in _KINDS:
            raise ValueError(f"block kind {letter!r} is already registered as {_KINDS[letter].name}")
        _KINDS[letter] = BlockKind(letter, name, description, factory)
        return factory

    return wrap


def block_kinds() -> dict[str, BlockKind]:
    return dict(_KINDS)


def build_block(letter: str, dim: int, heads: int, **options: Any) -> nn.Module:
    try:
        kind = _KINDS[letter]
    except KeyError:
        raise KeyError(f"unknown block kind {letter!r} (known: {', '.join(sorted(_KINDS))})") from None
    return kind.factory(dim, heads, **options)


@register_block("T", "transformer", "Restormer block: MDTA channel attention + GDFN (the teacher's block)")
def _transformer(dim: int, heads: int, **options: Any) -> nn.Module:
    from blocks.transformer import TransformerBlock

    return TransformerBlock(dim, heads, **options)


@register_block("M", "mamba", "vision state-space block: multi-direction SSD scan + gated FFN")
def _mamba(dim: int, heads: int, **options: Any) -> nn.Module:
    from blocks.mamba import MambaBlock

    return MambaBlock(dim, heads, **options)


@register_block("E", "efm", "edge-friendly conv block with learnable degradation gating (QDR)")
def _efm(dim: int, heads: int, **options: Any) -> nn.Module:
    from blocks.efm import EFMBlock

    return EFMBlock(dim, heads, **options)
