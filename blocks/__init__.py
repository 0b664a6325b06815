"""nn.Modules only: the block kinds, the exportable scans, and the hybrid U-Net."""

from blocks.registry import block_kinds, build_block, register_block
from blocks.unet import PRESETS, STAGES, HybridUNet, UNetConfig, get_preset, stage_layout

__all__ = [
    "PRESETS",
    "STAGES",
    "HybridUNet",
    "UNetConfig",
    "block_kinds",
    "build_block",
    "get_preset",
    "register_block",
    "stage_layout",
]
