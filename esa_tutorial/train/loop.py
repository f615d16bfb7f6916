"""Train LDNet: deep-supervision loss, SGD with a poly schedule, validation, checkpoints.

One code path for the command line and the notebooks::

    python -m esa_tutorial.train --synthetic --quick       # about a minute on a laptop CPU
    python -m esa_tutorial.train --data kvasir/ --epochs 80  # LDNet's recipe on a folder

and in Python ``run_experiment(TrainConfig(...))`` (chapters 5 and 6).

Defaults are the paper's: SGD, lr 1e-3, momentum 0.9, weight decay 1e-5,
poly schedule with power 0.9, batch 16, 80 epochs, the best epoch chosen by
mean IoU on the validation set. The schedule is applied per step rather than
per epoch (LDNet's code), which matters only for very short runs.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import TqdmWarning

with warnings.catch_warnings():
    # Without ipywidgets, tqdm.auto warns once and falls back to a text bar in notebooks: fine here.
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

from .data import PolypFolder, SyntheticPolyps
from .ldnet import ATTENTIONS, LDNet
from .metrics import segmentation_scores
from .runtime import resolve_device, seed_everything

DICE_SMOOTH = 1.0  # LDNet's Dice smoothing: an empty prediction of an empty mask scores 1
VAL_SEED_OFFSET = 10_000  # synthetic validation images come from another seed than training ones

# --------------------------------------------------------------------------- loss and schedule


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus Dice loss of one output: (B, 1, H, W) logits and targets in [0, 1] -> scalar.

    BCE is averaged over all pixels; the Dice loss ``1 - (2|P T| + 1) / (|P| + |T| + 1)``
    with ``P = sigmoid(logits)`` is computed per image and averaged over the batch.
    """
    if logits.shape != target.shape:
        raise ValueError(f"bce_dice_loss expects logits and target of one shape, got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p, t = torch.sigmoid(logits).flatten(1), target.flatten(1)
    dice = (2 * (p * t).sum(1) + DICE_SMOOTH) / (p.sum(1) + t.sum(1) + DICE_SMOOTH)
    return bce + 1 - dice.mean()


def deep_supervision_loss(outputs: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Sum of :func:`bce_dice_loss` over all outputs, each against the target at its size.

    ``outputs``: logits (B, 1, H/s, W/s), s = 1, 2, 4, ...; ``target`` (B, 1, H, W)
    in {0, 1}. The target is shrunk by area averaging, so a coarse pixel's target is
    the fraction of lesion it covers (LDNet's code uses bilinear resizing).
    """
    if len(outputs) == 0:
        raise ValueError("deep_supervision_loss needs at least one output")
    total = torch.zeros((), device=target.device)
    for logits in outputs:
        h, w = logits.shape[-2:]
        if target.shape[-2] % h or target.shape[-1] % w:
            raise ValueError(f"output of size {h}x{w} does not divide the target size "
                             f"{target.shape[-2]}x{target.shape[-1]}")
        scaled = target if (h, w) == target.shape[-2:] else F.interpolate(target, size=(h, w), mode="area")
        total = total + bce_dice_loss(logits, scaled)
    return total


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    """Poly schedule: ``base_lr * (1 - step / total_steps) ** power``; 0 from ``total_steps`` on."""
    if total_steps < 1 or step < 0:
        raise ValueError(f"poly_lr needs total_steps >= 1 and step >= 0, got {total_steps} and {step}")
    return base_lr * max(0.0, 1.0 - step / total_steps) ** power


# --------------------------------------------------------------------------- configuration


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in each checkpoint.

    ``data=None`` trains on :class:`~esa_tutorial.data.SyntheticPolyps`
    (``n_train`` and ``n_val`` images). With a folder (``images/``, ``masks/``),
    ``val_data`` names a validation folder, else ``val_fraction`` of ``data``
    is held out (a seeded split).
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
    device: str | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    num_workers: int = 0
    progress: bool = True

    # Fields that do not change the result: a run may resume with other values.
    RUNTIME_FIELDS = ("device", "checkpoint_dir", "resume", "num_workers", "progress")

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "size", "width", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.size % 32:
            raise ValueError(f"size must be a multiple of 32 (LDNet's encoder stride), got {self.size}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction!r}")

    def model_kwargs(self) -> dict[str, Any]:
        """Arguments of :class:`~esa_tutorial.ldnet.LDNet` for this run."""
        return dict(width=self.width, heads=self.heads, dim_head=self.dim_head, mlp_dim=self.mlp_dim,
                    attention=self.attention, use_lca=self.use_lca)

    def recipe(self) -> dict[str, Any]:
        """The fields that decide the result (all but the runtime ones)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.RUNTIME_FIELDS}


def quick_config(**overrides: Any) -> TrainConfig:
    """A run that learns in about a minute on a 2-core CPU: 64x64 synthetic polyps.

    Differences from the paper's recipe, for speed: 64x64 images, 256 training
    images, 12 epochs (192 steps) and a learning rate of 0.05 instead of 1e-3,
    which a network trained from scratch for so few steps needs to get
    anywhere. Anything can be overridden by keyword.
    """
    settings: dict[str, Any] = dict(size=64, n_train=256, n_val=64, epochs=12, batch_size=16, lr=0.05)
    return TrainConfig(**{**settings, **overrides})


# --------------------------------------------------------------------------- checkpoints


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``.

    A crash while writing leaves the previous checkpoint intact: the rename is
    atomic on POSIX and Windows, and the temporary file is removed on error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by :func:`run_experiment` (on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- data


def make_datasets(config: TrainConfig) -> tuple[Dataset, Dataset]:
    """Training and validation sets of a config (synthetic or from folders)."""
    if config.data is None:
        return (SyntheticPolyps(config.n_train, config.size, seed=config.seed),
                SyntheticPolyps(config.n_val, config.size, seed=config.seed + VAL_SEED_OFFSET))
    if config.val_data is not None:
        return PolypFolder(config.data, config.size, train=True), PolypFolder(config.val_data, config.size, train=False)
    train, val = PolypFolder(config.data, config.size, train=True), PolypFolder(config.data, config.size, train=False)
    n_val = max(1, round(len(train) * config.val_fraction))
    if n_val >= len(train):
        raise ValueError(f"{config.data} has {len(train)} images: too few to hold out a validation split")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed)).tolist()
    return Subset(train, order[n_val:]), Subset(val, order[:n_val])


# --------------------------------------------------------------------------- measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def saved_activation_bytes(model: nn.Module, images: torch.Tensor) -> int:
    """Bytes the autograd graph keeps for backward after one training forward of ``images``.

    This is what grows with batch and image size and dominates training memory;
    unlike the process's peak memory it can be measured the same way on a CPU
    and repeats exactly. Runs on a copy, so batch-norm statistics stay untouched.
    """
    probe = copy.deepcopy(model).train()
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()  # tensors saved twice or as views share a storage: count it once
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = probe(images)
    del outputs
    return sum(storages.values())


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Mean validation scores of the finest output plus the deep-supervision ``loss``."""
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    for images, masks in loader:
        images, masks = images.to(device), masks.to(device)
        outputs = model(images)
        scores = segmentation_scores(torch.sigmoid(outputs[0]), masks)
        scores["loss"] = float(deep_supervision_loss(outputs, masks))
        n = images.shape[0]
        for k, v in scores.items():
            totals[k] = totals.get(k, 0.0) + float(v) * n
        count += n
    return {k: v / count for k, v in totals.items()}


# --------------------------------------------------------------------------- the loop


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` returns.

    ``model`` holds the weights of the best epoch (highest validation mean
    IoU), in eval mode. ``history`` maps names to per-epoch lists: ``epoch``,
    ``train_loss``, ``lr`` (at the epoch's end), ``seconds_per_step`` (median),
    ``val_<score>`` for every score of :func:`evaluate`; ``step_loss`` has one
    entry per step. ``saved_activation_mb`` is :func:`saved_activation_bytes`
    for one training batch, ``cuda_peak_mb`` the CUDA peak (``None`` on CPU).
    """

    model: nn.Module
    history: dict[str, list[float]]
    best_epoch: int
    best: dict[str, float]
    config: TrainConfig
    saved_activation_mb: float
    cuda_peak_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def run_experiment(config: TrainConfig, log: Callable[[str], None] | None = None) -> ExperimentResult:
    """Train and validate LDNet as ``config`` says; resumable from ``checkpoint_dir``.

    Each epoch is seeded by ``seed + epoch`` (shuffling, augmentation), so a
    run resumed from a checkpoint repeats an uninterrupted one exactly on the
    same machine. With ``checkpoint_dir``, ``last.pt`` is written after every
    epoch and ``best.pt`` whenever the validation mean IoU improves, both atomically.
    """
    device = resolve_device(config.device)
    seed_everything(config.seed)
    model = LDNet(**config.model_kwargs()).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    train_set, val_set = make_datasets(config)
    shuffle = torch.Generator()
    train_loader = DataLoader(train_set, config.batch_size, shuffle=True, drop_last=len(train_set) > config.batch_size,
                              num_workers=config.num_workers, generator=shuffle)
    val_loader = DataLoader(val_set, config.batch_size, shuffle=False, num_workers=config.num_workers)
    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * config.epochs

    history: dict[str, list[float]] = {"step_loss": []}
    best_state, best_epoch, best = copy.deepcopy(model.state_dict()), 0, {"miou": -1.0}
    start_epoch = 0
    ckpt_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    if config.resume:
        if ckpt_dir is None:
            raise ValueError("resume=True needs a checkpoint_dir")
        state = load_checkpoint(ckpt_dir / "last.pt")
        saved = {k: v for k, v in state["config"].items() if k not in TrainConfig.RUNTIME_FIELDS}
        changed = sorted(k for k, v in config.recipe().items() if saved.get(k) != v)
        if changed:
            raise ValueError(f"cannot resume {ckpt_dir / 'last.pt'}: the config differs in {changed}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, start_epoch = state["history"], state["epoch"]
        best_epoch, best = state["best_epoch"], state["best"]
        best_state = load_checkpoint(ckpt_dir / "best.pt")["model"] if best_epoch else best_state

    images, _ = next(iter(DataLoader(train_set, config.batch_size)))
    activation_mb = saved_activation_bytes(model, images.to(device)) / 2**20
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, disable=not config.progress,
               desc="train", dynamic_ncols=True)
    for epoch in range(start_epoch, config.epochs):
        seed_everything(config.seed + epoch + 1)
        shuffle.manual_seed(config.seed + epoch + 1)
        model.train()
        losses, times = [], []
        for i, (images, masks) in enumerate(train_loader):
            step = epoch * steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(config.lr, step, total_steps, config.power)
            images, masks = images.to(device), masks.to(device)
            _sync(device)
            tic = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = deep_supervision_loss(model(images), masks)
            loss.backward()
            optimizer.step()
            _sync(device)
            times.append(time.perf_counter() - tic)
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        scores = evaluate(model, val_loader, device)
        row = {"epoch": epoch + 1, "train_loss": sum(losses) / len(losses), "lr": optimizer.param_groups[0]["lr"],
               "seconds_per_step": sorted(times)[len(times) // 2], **{f"val_{k}": v for k, v in scores.items()}}
        for k, v in row.items():
            history.setdefault(k, []).append(v)
        history["step_loss"].extend(losses)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_dice=f"{scores['dice']:.3f}")
        if scores["miou"] > best["miou"]:
            best_epoch, best, best_state = epoch + 1, scores, copy.deepcopy(model.state_dict())
            if ckpt_dir:
                atomic_save({"model": best_state, "epoch": best_epoch, "scores": best,
                             "config": dataclasses.asdict(config)}, ckpt_dir / "best.pt")
        if ckpt_dir:
            atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                         "history": history, "best_epoch": best_epoch, "best": best,
                         "config": dataclasses.asdict(config)}, ckpt_dir / "last.pt")
        if log:
            log(f"epoch {epoch + 1}/{config.epochs} loss={row['train_loss']:.3f} "
                f"val dice={scores['dice']:.3f} miou={scores['miou']:.3f}")
    bar.close()

    cuda_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    model.load_state_dict(best_state)
    return ExperimentResult(model.eval(), history, best_epoch, best, config, activation_mb, cuda_peak)


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m esa_tutorial.train",
        description="Train LDNet on synthetic polyps or on an images/ + masks/ folder.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", action="store_true", help="train on generated polyps")
    source.add_argument("--data", metavar="DIR", help="folder with images/ and masks/")
    p.add_argument("--val-data", metavar="DIR", help="validation folder (default: hold out --val-fraction of --data)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--quick", action="store_true",
                   help="64x64, 256 images, 12 epochs, lr 0.05: about a minute on a CPU")
    defaults = TrainConfig()
    for name in ("epochs", "batch_size", "size", "width", "heads", "dim_head", "mlp_dim", "seed",
                 "n_train", "n_val", "num_workers"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"default {getattr(defaults, name)}")
    for name in ("lr", "momentum", "weight_decay", "power"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, help=f"default {getattr(defaults, name)}")
    p.add_argument("--attention", choices=ATTENTIONS, help="self-attention on the skips (default esa)")
    p.add_argument("--no-lca", action="store_true", help="drop the lesion-aware cross-attention")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--checkpoint-dir", default="runs/ldnet",
                   help="where last.pt and best.pt go (default runs/ldnet, ignored by git)")
    p.add_argument("--resume", action="store_true", help="continue from CHECKPOINT_DIR/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Turn parsed arguments into a :class:`TrainConfig` (``--quick`` first, then explicit flags)."""
    given = {k: v for k, v in vars(args).items() if v is not None and k in TrainConfig.__dataclass_fields__}
    given.update(data=args.data, resume=args.resume, progress=not args.no_progress, use_lca=not args.no_lca)
    return quick_config(**given) if args.quick else TrainConfig(**given)


def main(argv: Sequence[str] | None = None) -> ExperimentResult:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data is not None and not Path(args.data).is_dir():
        parser.error(f"--data: no folder at {args.data!r}")
    if args.val_data is not None and args.data is None:
        parser.error("--val-data needs --data")
    if args.resume and not (Path(args.checkpoint_dir) / "last.pt").is_file():
        parser.error(f"--resume: no checkpoint at {Path(args.checkpoint_dir) / 'last.pt'}")
    try:
        config = config_from_args(args)
        resolve_device(config.device)
    except ValueError as err:
        parser.error(str(err))
    result = run_experiment(config, log=lambda line: tqdm.write(line, file=sys.stdout))
    print(f"best epoch {result.best_epoch}, saved in {Path(config.checkpoint_dir) / 'best.pt'}")
    print(f"val dice={result.best['dice']:.3f} miou={result.best['miou']:.3f}")
    return result


if __name__ == "__main__":
    main()
