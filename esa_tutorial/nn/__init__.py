"""The model library: ESA and the network it lives in, as ``torch.nn`` modules.

``ppm`` (pyramid pooling, mask pooling), ``attention`` (the pixel-attention base; MHSA, LCA),
``folded`` (ESA's fast exact form), ``esa``, ``blocks`` (ESA and LCA blocks),
``encoder``, ``dynamic_head``, ``ldnet`` and ``init`` (per-part seeding).
Nothing here imports the book's helpers, the command lines or the course.
"""

from .attention import LCA, MHSA, PixelAttention
from .blocks import ESABlock, LCABlock
from .esa import ESA
from .ldnet import LDNet
from .ppm import PPM, adaptive_bins, mask_average_pool, num_tokens, pooling_matrix, pyramid_pool

__all__ = ["ESA", "ESABlock", "LCA", "LCABlock", "LDNet", "MHSA", "PPM", "PixelAttention", "adaptive_bins",
           "mask_average_pool", "num_tokens", "pooling_matrix", "pyramid_pool"]
