"""esa_tutorial: Efficient Self-Attention (LDNet, MICCAI 2022), built step by step.

The package behind the ESA tutorial book. Every module the notebooks derive
lives here once; the notebooks rebuild it in plain code and check they agree.
"""

from .attention import MHSA, PixelAttention
from .blocks import LCA, ESABlock, LCABlock, mask_average_pool
from .esa import ESA
from .ppm import PPM, adaptive_bins, num_tokens
from .runtime import check_shape, default_device, seed_everything

__version__ = "0.1.0"

__all__ = [
    "ESABlock",
    "LCA",
    "LCABlock",
    "mask_average_pool",
    "ESA",
    "MHSA",
    "PPM",
    "PixelAttention",
    "adaptive_bins",
    "check_shape",
    "default_device",
    "num_tokens",
    "seed_everything",
]
