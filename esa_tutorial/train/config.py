"""A training run's settings, validated when they are made."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..ldnet import ATTENTIONS

AMP_DTYPES = ("fp16", "bf16")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _finite(name: str, value: Any, low: float, *, strict: bool) -> None:
    """``value`` a finite number, > low (strict) or >= low."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= low if strict else value < low):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


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
    """

    data: str | None = None
    val_data: str | None = None
    val_fraction: float = 0.2
    n_train: int = 800
    n_val: int = 200
    size: int = 224
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
    device: str | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    num_workers: int = 0
    progress: bool = True

    # Fields that do not change the result: a run may resume with other values.
    RUNTIME_FIELDS = ("device", "checkpoint_dir", "resume", "num_workers", "progress")

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "size", "width", "heads", "dim_head", "mlp_dim", "epochs", "batch_size"):
            _positive_int(name, getattr(self, name))
        if self.size % 32:
            raise ValueError(f"size must be a multiple of 32 (LDNet's encoder stride), got {self.size}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        _finite("lr", self.lr, 0.0, strict=True)
        for name in ("momentum", "weight_decay", "power"):
            _finite(name, getattr(self, name), 0.0, strict=False)
        if not (isinstance(self.val_fraction, (int, float)) and 0 < self.val_fraction < 1):
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer, got {self.num_workers!r}")
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {AMP_DTYPES} or None, got {self.amp!r}")
        if self.data is None:
            check_batch_norm_batch(self.size, min(self.batch_size, self.n_train))

    @property
    def augments(self) -> bool:
        """Whether training images are augmented (``augment``, or its default for the data source)."""
        return self.data is not None if self.augment is None else bool(self.augment)

    def model_kwargs(self) -> dict[str, Any]:
        """Arguments of :class:`~esa_tutorial.ldnet.LDNet` for this run."""
        return dict(width=self.width, heads=self.heads, dim_head=self.dim_head, mlp_dim=self.mlp_dim,
                    attention=self.attention, use_lca=self.use_lca)

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
