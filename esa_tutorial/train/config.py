"""A training run's settings, validated when they are made."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..nn.ldnet import ATTENTIONS
from ..validation import (
    check_choice, check_finite, check_float_range, check_int_range, check_non_negative_int, check_positive_int,
    check_seed,
)

AMP_DTYPES = ("fp16", "bf16")
SCHEDULES = ("per_step", "per_epoch")
MODELS = ("small", "full")
PAPER_SIZES = dict(width=64, heads=8, dim_head=64, mlp_dim=512)  # LDNet.paper_sized's, for model="full"
TARGET_RESIZES = ("area", "bilinear")


# Upper bounds of the numeric options: far beyond any sensible run, below what torch cannot represent.
UPPER = dict(n_train=10**7, n_val=10**7, size=8192, width=1024, heads=256, dim_head=1024, mlp_dim=65536,
             epochs=10**6, batch_size=65536, read_every=10**6, lr=1e6, momentum=1.0, weight_decay=1.0,
             power=100.0)


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in each checkpoint.

    ``data=None`` trains on :class:`~esa_tutorial.data.SyntheticPolyps`
    (``n_train`` and ``n_val`` images). With a folder (``images/``, ``masks/``),
    ``val_data`` names a validation folder, else ``val_fraction`` of ``data``
    is held out (a seeded split).

    ``augment``: apply :class:`~esa_tutorial.data.AugmentRecipe` (the steps of
    LDNet's code, sizes scaled to ``size``) to the training images; ``None``
    means yes for a folder, no for synthetic data. ``amp``: ``"fp16"``
    (autocast with a gradient scaler) or ``"bf16"`` (autocast) on CUDA;
    ``None`` trains in float32. The CPU trains in float32 only.

    Where the package's defaults differ from LDNet's code (:func:`ldnet_recipe`
    sets LDNet's): ``schedule`` ``"per_step"`` (the poly schedule stepped after
    every optimizer step; LDNet's code steps it per epoch, ``"per_epoch"``),
    ``targets`` ``"area"`` (the mask shrunk for coarser outputs by area
    averaging; LDNet's code halves it bilinearly, ``"bilinear"``) and
    ``keep_last_batch`` ``False`` (a final partial batch is dropped; LDNet's
    code keeps it). ``read_every``: the losses are copied from the device every
    this many steps (fewer host synchronisations on a GPU); it changes nothing
    in the result.
    """

    data: str | None = None
    val_data: str | None = None
    val_fraction: float = 0.2
    n_train: int = 800
    n_val: int = 200
    size: int = 224
    model: str = "small"
    pretrained_backbone: str | None = None
    width: int = 16
    heads: int = 2
    dim_head: int = 16
    mlp_dim: int = 64
    attention: str = "esa"
    use_lca: bool = True
    epochs: int = 80
    batch_size: int = 16
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-5
    power: float = 0.9
    seed: int = 0
    augment: bool | None = None
    amp: str | None = None
    schedule: str = "per_step"
    targets: str = "area"
    keep_last_batch: bool = False
    device: str | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    num_workers: int = 0
    progress: bool = True
    read_every: int = 10

    # Fields that do not change the result: a run may resume with other values.
    RUNTIME_FIELDS = ("device", "checkpoint_dir", "resume", "num_workers", "progress", "read_every")

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "size", "width", "heads", "dim_head", "mlp_dim", "epochs", "batch_size",
                     "read_every"):
            check_positive_int(name, getattr(self, name))
            check_int_range(name, getattr(self, name), 1, UPPER[name])  # 10**20 would overflow inside torch
        if self.size % 32:
            raise ValueError(f"size must be a multiple of 32 (LDNet's encoder stride), got {self.size}")
        check_choice("attention", self.attention, ATTENTIONS)
        check_choice("model", self.model, MODELS)
        if self.pretrained_backbone is not None and not isinstance(self.pretrained_backbone, str):
            raise ValueError(f"pretrained_backbone must be a path (str) or None, got {self.pretrained_backbone!r}")
        check_finite("lr", self.lr, 0.0, strict=True)
        for name in ("momentum", "weight_decay", "power"):
            check_finite(name, getattr(self, name), 0.0)
        for name in ("lr", "momentum", "weight_decay", "power"):
            check_float_range(name, getattr(self, name), 0.0, UPPER[name])  # 1e308 overflows a float32
        check_finite("val_fraction", self.val_fraction)
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction!r}")
        check_seed(self.seed)
        check_non_negative_int("num_workers", self.num_workers)
        if self.amp is not None:
            check_choice("amp", self.amp, AMP_DTYPES)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("targets", self.targets, TARGET_RESIZES)
        if self.data is None:
            check_batch_norm_batch(self.size, min(self.batch_size, self.n_train))

    @property
    def augments(self) -> bool:
        """Whether training images are augmented (``augment``, or its default for the data source)."""
        return self.data is not None if self.augment is None else bool(self.augment)

    def model_kwargs(self) -> dict[str, Any]:
        """Arguments of :class:`~esa_tutorial.nn.ldnet.LDNet` for this run (without ``pretrained_backbone``).

        ``model="small"``: the package's small encoder at ``width``, ``heads``,
        ``dim_head``, ``mlp_dim``. ``model="full"``: LDNet's whole network
        (:meth:`~esa_tutorial.LDNet.full`: Res2Net-50 and LDNet's sizes;
        the four size fields are not used).
        """
        sizes = PAPER_SIZES if self.model == "full" else dict(width=self.width, heads=self.heads,
                                                              dim_head=self.dim_head, mlp_dim=self.mlp_dim)
        encoder = dict(encoder="res2net50") if self.model == "full" else {}
        return dict(**sizes, attention=self.attention, use_lca=self.use_lca, **encoder)

    def recipe(self) -> dict[str, Any]:
        """The fields that decide the result (all but the runtime ones)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RUNTIME_FIELDS}


def check_batch_norm_batch(size: int, smallest_batch: int) -> None:
    """Refuse a training batch of one image when LDNet's top feature map is 1x1 (``size`` 32).

    BatchNorm in training mode needs more than one value per channel; at size
    32 the encoder's last map is 1x1, so a batch of one gives it exactly one.
    """
    if smallest_batch < 2 and size // 32 == 1:
        raise ValueError(
            f"a training batch of 1 image at size {size} leaves LDNet's top feature map 1x1, and its BatchNorm "
            "needs more than one value per channel: use batch_size (--batch-size) >= 2 with at least 2 training "
            "images (--n-train), or size (--size) >= 64"
        )


def quick_config(**overrides: Any) -> TrainConfig:
    """A run that learns in about a minute of one CPU thread: 64x64 synthetic polyps.

    Differences from the paper's recipe, for speed: 64x64 images, 256 training
    images in batches of 8, 12 epochs (384 steps) and a learning rate of 0.05
    instead of 1e-3, which a network trained from scratch for so few steps
    needs to get anywhere. Batches of 8 rather than the paper's 16 give twice
    the updates for the same images and about the same CPU time (measured on
    one thread: val Dice 0.78 in 47 s, against 0.70 with batches of 16). Anything can be
    overridden by keyword.
    """
    settings: dict[str, Any] = dict(size=64, n_train=256, n_val=64, epochs=12, batch_size=8, lr=0.05)
    return TrainConfig(**{**settings, **overrides})


def ldnet_recipe(**overrides: Any) -> TrainConfig:
    """LDNet's training recipe as its public code runs it (``train.py``, ``utils/loss.py``).

    SGD with lr 1e-3, momentum 0.9, weight decay 1e-5; the poly schedule
    (power 0.9) stepped once per epoch; 80 epochs of batches of 16 with the
    last partial batch kept; 224x224 crops from images resized to 256 with
    flips, rotation and zoom; each coarser output's target halved bilinearly
    (``align_corners=True``), chained. The model is LDNet's whole network
    (``model="full"``; ``pretrained_backbone`` names ImageNet Res2Net-50 weights). Anything can be overridden by keyword.
    """
    settings: dict[str, Any] = dict(model="full", size=224, epochs=80, batch_size=16, lr=1e-3, momentum=0.9, weight_decay=1e-5,
                                    power=0.9, schedule="per_epoch", targets="bilinear", keep_last_batch=True,
                                    augment=True)
    return TrainConfig(**{**settings, **overrides})
