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
    passthrough: bool = False  # the block returns its input (no ops): its latency and distillation are nil


_KINDS: dict[str, BlockKind] = {}


def register_block(letter: str, name: str, description: str,
                   passthrough: bool = False) -> Callable[[BlockFactory], BlockFactory]:
    if len(letter) != 1 or not letter.isupper():
        raise ValueError(f"a block kind is one upper-case letter, got {letter!r}")

    def wrap(factory: BlockFactory) -> BlockFactory:
        if letter in _KINDS:
            raise ValueError(f"block kind {letter!r} is already registered as {_KINDS[letter].name}")
        _KINDS[letter] = BlockKind(letter, name, description, factory, passthrough)
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


# -- lighter choices per slot, distilled in the zoo like the others ------------------------------
# Latency at the tiny preset, 1x3x256x256, ONNX Runtime CPU, 1 thread, CPU clock, 5 interleaved rounds,
# every block of the U-Net of one kind, relative to all-T (507 ms; load average 4-7 while measured):
# M 1.02x, S 1.15x, E 2.01x, L 2.56x, I 10.2x (what remains is the skeleton: stem, samplers, output).
@register_block("S", "mamba-lite", "Mamba block without its gated-GELU branch: the scan alone (ffn_expansion 0)")
def _mamba_lite(dim: int, heads: int, **options: Any) -> nn.Module:
    from blocks.mamba import MambaBlock

    return MambaBlock(dim, heads, **{**options, "ffn_expansion": 0.0})


@register_block("L", "efm-lite", "EFM block at expansion 1 and FFN expansion 1 (E uses 2 and 2)")
def _efm_lite(dim: int, heads: int, **options: Any) -> nn.Module:
    from blocks.efm import EFMBlock

    return EFMBlock(dim, heads, **{"expansion": 1.0, "ffn_expansion": 1.0, **options})


@register_block("I", "skip", "no block: the position passes its input through (no parameters)", passthrough=True)
def _skip(dim: int, heads: int, **options: Any) -> nn.Module:
    from blocks.skip import SkipBlock

    return SkipBlock(dim, heads)


# -- EFM without its LayerNorms: the whole block runs in integer kernels on an INT8 runtime ---------
# Tiny preset, 1x3x256x256, ORT CPU, 2 threads, 5 interleaved rounds of 5 runs, every block one kind, against
# all-T FP32 (258 ms; load 0.0-1.7; bench/records/bench_networks-2026-12-02.json): FP32 E 1.83x, L 2.27x,
# F 2.56x, G 2.88x; as finalize's onnx_int8 graph E 3.10x, L 3.41x, F 3.95x, G 4.62x.
@register_block("F", "efm-nonorm", "EFM block without LayerNorms (its 1x1 convs take the residual stream as is)")
def _efm_nonorm(dim: int, heads: int, **options: Any) -> nn.Module:
    from blocks.efm import EFMBlock

    return EFMBlock(dim, heads, **{**options, "layernorm": "none"})


@register_block("G", "efm-lite-nonorm", "EFM-lite (L) without LayerNorms")
def _efm_lite_nonorm(dim: int, heads: int, **options: Any) -> nn.Module:
    from blocks.efm import EFMBlock

    return EFMBlock(dim, heads, **{"expansion": 1.0, "ffn_expansion": 1.0, **options, "layernorm": "none"})


# -- the gated conv branch alone: a full-resolution slot at a fraction of G's cost ---------------------
# Tiny preset, 1x3x256x256, ORT CPU, 2 threads, interleaved, every block one kind (load 1.05; python
# bench/bench_networks.py --presets tiny --kinds T,E,G,D,I --int8, 2026-12-03): FP32 all-T 298 ms, all-G 74, all-D 60,
# all-I 26; as the onnx_int8 graph all-G 31 ms, all-D 18.
@register_block("D", "efm-mini", "EFM's gated conv branch alone (PW, DW3x3, simple gate, PW): no LDG, FFN or norm")
def _efm_mini(dim: int, heads: int, **options: Any) -> nn.Module:
    from blocks.efm import EFMBlock

    return EFMBlock(dim, heads, **{"expansion": 1.0, **options, "ffn_expansion": 0.0, "ldg": False,
                                   "layernorm": "none"})


# -- global context, as the teacher's channel attention has it (opt-in: no shipped zoo holds C) ----------
# Aimed at derain's refinement slot, where M and E lose about 1 dB swapped in; distilled into that zoo (800 steps,
# 128-px patches; bench/records/kind_C-derain-2026-12-05.json) it lost 1.45 dB there, while all-C was -0.49 dB of the
# teacher (all-E -0.50) at all-E's MACs.
@register_block("C", "efm-sca", "EFM block with NAFNet's simplified channel attention in its conv branch")
def _efm_sca(dim: int, heads: int, **options: Any) -> nn.Module:
    from blocks.efm import EFMBlock

    return EFMBlock(dim, heads, **{**options, "sca": True})
