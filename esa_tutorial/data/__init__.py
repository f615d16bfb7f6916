"""Polyp segmentation data: a synthetic generator, the public folder layout, augmentation, a download helper.

``SyntheticPolyps`` (``esa_tutorial.data.synthetic``)
    endoscopy-like images drawn with NumPy, each with its exact mask. No
    files, no download: every chapter and test can train on it anywhere.
``PolypFolder`` (``esa_tutorial.data.folder``)
    the ``images/`` + ``masks/`` layout of Kvasir-SEG and CVC-ClinicDB. Files
    are read by the rules of :mod:`esa_tutorial.data.images` (every bit
    depth scaled to [0, 1]; masks binarised by explicit rules, ambiguous ones
    rejected with the file named).
``AugmentRecipe``, ``augment_pair``, ``Augmented`` (``esa_tutorial.data.augment``)
    the steps, order and probabilities of LDNet's training transform
    (resize, flips, rotation in [-90, 90] degrees, zoom, random crop), applied
    to image and mask together; sizes scale to smaller images.
``download_kvasir`` (``esa_tutorial.data.download``)
    fetch and unpack Kvasir-SEG safely (needs internet; these build machines have none).
``write_synthetic_folder``, ``split_folder`` (``esa_tutorial.data.kvasir_layout``)
    a generated stand-in in Kvasir-SEG's folder layout; a seeded train/val/test split of such a folder.

Every sample is ``(image, mask)``: image float32 (3, size, size) in [0, 1],
mask float32 (1, size, size) in {0, 1}. Images are not normalised; a model
that wants ImageNet statistics applies them itself.
"""

from .augment import LDNET_RECIPE, AugmentParams, AugmentRecipe, augment_pair
from .download import KVASIR_URL, download_kvasir
from .augment import Augmented
from .folder import IMAGE_SUFFIXES, PolypFolder
from .images import binarise_mask, read_image, read_mask
from .kvasir_layout import split_folder, split_plan, write_synthetic_folder
from .synthetic import SyntheticPolyps, synthetic_polyp

__all__ = [
    "AugmentParams",
    "AugmentRecipe",
    "Augmented",
    "IMAGE_SUFFIXES",
    "KVASIR_URL",
    "LDNET_RECIPE",
    "PolypFolder",
    "SyntheticPolyps",
    "augment_pair",
    "binarise_mask",
    "download_kvasir",
    "read_image",
    "read_mask",
    "split_folder",
    "split_plan",
    "synthetic_polyp",
    "write_synthetic_folder",
]
