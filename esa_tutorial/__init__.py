"""esa_tutorial: Efficient Self-Attention (LDNet, MICCAI 2022), built step by step.

The package behind the ESA tutorial book. Every module the notebooks derive
lives here once; the notebooks rebuild it in plain code and check they agree.

Layers, one folder each: ``nn`` (the model library: ESA, its blocks, LDNet),
``train`` (the one training loop, LDNet's recipe, several GPUs), ``data``,
``metrics``, ``cost``, ``files`` and ``checkpoints`` (the library's other
parts); ``book`` (the chapters' figures and analyses), ``experiments`` and
``bench`` (the book's stored runs and timings); ``course`` (the exercises'
grader). Command lines are ``python -m esa_tutorial.<name>`` (``__main__.py``).
"""

from importlib.metadata import PackageNotFoundError, version

from .cost import attention_matrix_bytes, count_flops, flops_by_operator
from .nn import (
    ESA, LCA, MHSA, PPM, ESABlock, LCABlock, LDNet, PixelAttention, adaptive_bins, mask_average_pool, num_tokens,
    pooling_matrix, pyramid_pool,
)
from .nn import folded  # as esa_tutorial.folded: the performance chapter runs its blocks by hand
from .runtime import check_shape, default_device, seed_everything

from . import data, metrics  # submodules: esa_tutorial.data, esa_tutorial.metrics

try:
    __version__ = version("esa-tutorial")  # one source: pyproject.toml's version, via the installed metadata
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "adaptive_bins",
    "attention_matrix_bytes",
    "check_shape",
    "count_flops",
    "default_device",
    "ESA",
    "ESABlock",
    "flops_by_operator",
    "LCA",
    "LCABlock",
    "LDNet",
    "mask_average_pool",
    "MHSA",
    "num_tokens",
    "PixelAttention",
    "pooling_matrix",
    "PPM",
    "pyramid_pool",
    "seed_everything",
]
