"""The training loop in readable steps: build, load data, train an epoch, evaluate, save, resume.

:func:`run_experiment` strings the steps together. Randomness comes only from
``config.seed``: the model is initialised and each epoch runs under
``torch.random.fork_rng``, seeded with ``seed`` and ``seed + epoch``, so the
caller's global random state is the same afterwards as before and a resumed
run repeats an uninterrupted one exactly on the same machine.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from ..cost import saved_for_backward_bytes as saved_activation_bytes
from ..checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from ..data import Augmented, AugmentRecipe, PolypFolder, SyntheticPolyps
from ..nn.ldnet import LDNet
from ..metrics import segmentation_scores
from ..runtime import resolve_device
from .config import TrainConfig, check_batch_norm_batch
from .distributed import EpochBatches, World, init_process_group, sync_batch_norm, world_from_env
from .fitting import FitLog, TrainingDiverged, fit, to_device
from .losses import deep_supervision_loss
from .schedule import poly_schedule

VAL_SEED_OFFSET = 10_000  # synthetic validation images come from another seed than training ones


# --------------------------------------------------------------------------- checks before any work


def check_device(name: str | torch.device | None, amp: str | None = None) -> torch.device:
    """The device a run trains on: ``cpu``, ``cuda[:i]`` or ``mps``, available here; else ``ValueError``.

    ``amp`` needs CUDA: the CPU trains in float32 only (bfloat16 autocast on
    most CPUs is slower than float32 and changes results), so it is refused there.
    """
    try:
        device = resolve_device(name)
    except RuntimeError as err:  # torch.device("foo")
        raise ValueError(f"device {str(name)!r} is not a device torch knows ({err})") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {str(name)!r} cannot train: use 'cpu' or 'cuda'"
                         + (" ('meta' tensors hold shapes but no data)" if device.type == "meta" else ""))
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(name)!r} requested but MPS is not available; use 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(name)!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if amp is not None and device.type != "cuda":
        raise ValueError(f"amp={amp!r} (mixed precision) needs a CUDA device, got {device.type!r}; "
                         "train without it on the CPU")
    return device


def check_checkpoint_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check that files can be written there; else ``ValueError`` naming it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"checkpoint_dir {str(path)!r} is a file, expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # a name of its own: several processes may check at once
            pass
    except OSError as err:
        raise ValueError(f"checkpoint_dir {str(path)!r} is not writable ({err.strerror or err})") from None
    return path


# --------------------------------------------------------------------------- building


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block with torch's default generators seeded by ``seed``, restoring them afterwards."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def build_model(config: TrainConfig, device: torch.device) -> LDNet:
    """LDNet of ``config``, its weights drawn from ``config.seed`` (global random state untouched)."""
    with seeded(config.seed, device):
        return LDNet(**config.model_kwargs(), pretrained_backbone=config.pretrained_backbone).to(device)


def make_datasets(config: TrainConfig) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """Training and validation sets of a config (synthetic or from folders).

    The training set is augmented when ``config.augments``: folders with
    their own :class:`~esa_tutorial.data.PolypFolder` augmentation, synthetic
    data wrapped in :class:`~esa_tutorial.data.Augmented`; both use
    ``AugmentRecipe.for_size(config.size)`` (LDNet's steps; sizes scaled to ``size``).
    """
    if config.data is None:
        train: Dataset = SyntheticPolyps(config.n_train, config.size, seed=config.seed)
        if config.augments:
            train = Augmented(train, AugmentRecipe.for_size(config.size))
        return train, SyntheticPolyps(config.n_val, config.size, seed=config.seed + VAL_SEED_OFFSET)
    augment = config.augments
    if config.val_data is not None:
        return (PolypFolder(config.data, config.size, train=augment),
                PolypFolder(config.val_data, config.size, train=False))
    train, val = PolypFolder(config.data, config.size, train=augment), PolypFolder(config.data, config.size, train=False)
    n_val = max(1, round(len(train) * config.val_fraction))
    if n_val >= len(train):
        raise ValueError(f"{config.data} has {len(train)} images: too few to hold out a validation split")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed)).tolist()
    return Subset(train, order[n_val:]), Subset(val, order[:n_val])


def make_loaders(config: TrainConfig, train_set: torch.utils.data.Dataset, val_set: torch.utils.data.Dataset,
                 world: World = World(), device: torch.device | None = None,
                 ) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """Shuffled training batches and validation batches in order.

    Training batches come from :class:`~esa_tutorial.train.distributed.EpochBatches`
    (set to each epoch by :func:`train_epoch`): ``config.batch_size`` is the
    global batch, of which this process (``world``) takes its share. A final
    partial batch is dropped unless ``config.keep_last_batch`` (LDNet's code keeps
    it) or it is the only one. On CUDA the loaders pin their memory, so batches
    copy to the GPU while it computes.
    """
    n = len(train_set)  # type: ignore[arg-type]
    check_batch_norm_batch(config.size, min(config.batch_size, n) // world.size)
    pin = device is not None and device.type == "cuda"
    batches = EpochBatches(n, config.batch_size, config.seed, drop_last=not config.keep_last_batch
                           and n > config.batch_size, world=world)
    train_loader = DataLoader(train_set, batch_sampler=batches, num_workers=config.num_workers, pin_memory=pin)
    val_loader = DataLoader(val_set, config.batch_size, shuffle=False, num_workers=config.num_workers,
                            pin_memory=pin)
    return train_loader, val_loader


# --------------------------------------------------------------------------- measuring


@torch.no_grad()
def evaluate(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device,
             targets: str = "area") -> dict[str, float]:
    """Mean validation scores of the finest output plus the deep-supervision ``loss``.

    ``targets``: how the loss resizes the mask for coarser outputs (see
    :func:`~esa_tutorial.train.deep_supervision_loss`).
    """
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    for images, masks in loader:
        images, masks = to_device(images, device), to_device(masks, device)
        outputs = model(images)
        scores = segmentation_scores(torch.sigmoid(outputs[0].float()), masks)
        scores["loss"] = float(deep_supervision_loss(outputs, masks, resize=targets))
        n = images.shape[0]
        for k, v in scores.items():
            totals[k] = totals.get(k, 0.0) + float(v) * n
        count += n
    return {k: v / count for k, v in totals.items()}


# --------------------------------------------------------------------------- training


@dataclass
class TrainState:
    """What changes while training, and what ``last.pt`` stores to resume."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    history: dict[str, list[float]] = field(default_factory=lambda: {"step_loss": []})
    epoch: int = 0
    best_epoch: int = 0
    best: dict[str, float] = field(default_factory=lambda: {"miou": -1.0})
    best_state: dict[str, torch.Tensor] | None = None
    net: nn.Module | None = None  # what trains: ``model`` itself, or ``model`` wrapped for several processes

    def __post_init__(self) -> None:
        if self.net is None:
            self.net = self.model


def _diverged(what: str, step: int, total: int, epoch: int, lr: float, config: TrainConfig) -> TrainingDiverged:
    hint = " With amp='fp16', try amp='bf16' or none." if config.amp == "fp16" else ""
    return TrainingDiverged(
        f"training diverged at step {step + 1} of {total} (epoch {epoch + 1}): {what}. The usual cause is a "
        f"learning rate too high for this model: it was {lr:.3g} at this step (base lr {config.lr:g}); "
        f"try a smaller lr (--lr).{hint} Checkpoints hold the last finite epoch; nothing of this epoch was saved."
    )


def train_epoch(state: TrainState, loader: torch.utils.data.DataLoader, config: TrainConfig, device: torch.device,
                bar: Any = None) -> tuple[list[float], list[float]]:
    """One epoch through :func:`~esa_tutorial.train.fit`: (loss per step, seconds per step).

    The batch order of epoch ``e`` comes from ``config.seed + e + 1`` (see
    :class:`~esa_tutorial.train.distributed.EpochBatches`); the scheduler steps per step or, with
    ``config.schedule == "per_epoch"`` (LDNet's code), once at the epoch's end.
    ``bar``, a tqdm progress bar or ``None``, advances by one per step.

    Raises :class:`TrainingDiverged` as soon as the loss or a weight is not finite.
    """
    epoch, steps_per_epoch = state.epoch, len(loader)
    total = steps_per_epoch * config.epochs
    loader.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
    for d in (loader.dataset, getattr(loader.dataset, "dataset", None)):
        if hasattr(d, "set_epoch"):
            d.set_epoch(epoch)

    def report(what: str, step: int, lr: float) -> TrainingDiverged:
        return _diverged(what, step, total, epoch, lr, config)

    def show_loss(step: int, log: FitLog) -> None:
        if bar is not None and log.loss:
            bar.set_postfix(loss=f"{log.loss[-1]:.3f}", refresh=False)

    per_step = config.schedule == "per_step"
    loss = functools.partial(deep_supervision_loss, resize=config.targets)
    log = fit(state.net, loader, loss, state.optimizer, scheduler=state.scheduler if per_step else None,
              device=device, amp=config.amp, scaler=state.scaler, first_step=epoch * steps_per_epoch,
              read_every=config.read_every, diverged=report, on_step=show_loss, bar=bar)
    if not per_step:
        state.scheduler.step()
    return log.loss, log.seconds


# --------------------------------------------------------------------------- checkpoints


def save_best(state: TrainState, config: TrainConfig, ckpt_dir: Path) -> None:
    """Write ``best.pt``: the best epoch's weights, its scores and the config."""
    assert state.best_state is not None
    save_checkpoint(ckpt_dir / "best.pt", state.best_state, dataclasses.asdict(config),
                    {"epoch": state.best_epoch, "scores": state.best, "model_kwargs": config.model_kwargs()})


def save_last(state: TrainState, config: TrainConfig, ckpt_dir: Path) -> None:
    """Write ``last.pt``: everything :func:`resume` needs to continue exactly."""
    save_checkpoint(ckpt_dir / "last.pt", state.model.state_dict(), dataclasses.asdict(config), {
        "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(), "epoch": state.epoch,
        "history": state.history, "best_epoch": state.best_epoch, "best": state.best,
        "model_kwargs": config.model_kwargs(),
    })


def resume(state: TrainState, config: TrainConfig, ckpt_dir: Path) -> None:
    """Load ``last.pt`` (and ``best.pt``) into ``state``; refuse a different recipe or a damaged file."""
    path = ckpt_dir / "last.pt"
    ckpt = load_checkpoint(path)
    saved, extra = ckpt["config"], ckpt["extra"]
    changed = sorted(k for k, v in config.recipe().items() if saved.get(k) != v)
    if changed:
        raise ValueError(f"cannot resume {path}: the config differs in {changed}")
    missing = [k for k in ("optimizer", "scheduler", "epoch", "history", "best_epoch", "best") if k not in extra]
    if missing:
        raise CheckpointError(f"cannot resume {path}: it lacks {missing} (not a last.pt written by training)")
    epoch, best_epoch = extra["epoch"], extra["best_epoch"]
    if not (isinstance(epoch, int) and isinstance(best_epoch, int) and 0 <= best_epoch <= epoch):
        raise CheckpointError(f"cannot resume {path}: epoch {epoch!r} / best_epoch {best_epoch!r} are not "
                              "integers with 0 <= best_epoch <= epoch")
    try:
        state.model.load_state_dict(ckpt["model"])
        state.optimizer.load_state_dict(extra["optimizer"])
        state.scheduler.load_state_dict(extra["scheduler"])
        if "scaler" in extra:
            state.scaler.load_state_dict(extra["scaler"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(f"cannot resume {path}: its weights or optimizer state do not fit ({err})") from None
    state.history, state.epoch, state.best_epoch, state.best = extra["history"], epoch, best_epoch, extra["best"]
    if best_epoch:
        state.best_state = load_checkpoint(ckpt_dir / "best.pt")["model"]


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LDNet:
    """Rebuild the LDNet of a ``best.pt``/``last.pt`` (its ``model_kwargs``) with its weights, in eval mode.

    Raises :class:`~esa_tutorial.checkpoints.CheckpointError` naming the file
    if it lacks ``model_kwargs`` or its weights do not fit the network they describe.
    """
    ckpt = load_checkpoint(path)
    kwargs = ckpt["extra"].get("model_kwargs")
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"checkpoint {path} has no 'model_kwargs' in its extra: it does not say which LDNet "
                              "to build (save it with extra={'model_kwargs': ...})")
    try:
        model = LDNet(**kwargs)
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path}: its weights do not fit LDNet(**{kwargs}) ({err})") from None
    return model.to(device).eval()


# --------------------------------------------------------------------------- the experiment


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` returns.

    ``model`` holds the weights of the best epoch (highest validation mean
    IoU), in eval mode. ``history`` maps names to per-epoch lists: ``epoch``,
    ``train_loss``, ``lr`` (at the epoch's end), ``seconds_per_step`` (median),
    ``val_<score>`` for every score of :func:`evaluate`; ``step_loss`` has one
    entry per step. ``saved_activation_mb`` is :func:`~esa_tutorial.cost.saved_for_backward_bytes`
    for one training batch, ``cuda_peak_mb`` the CUDA peak (``None`` on CPU).
    """

    model: nn.Module
    history: dict[str, list[float]]
    best_epoch: int
    best: dict[str, float]
    config: TrainConfig
    saved_activation_mb: float
    cuda_peak_mb: float | None = None


def _record(state: TrainState, losses: list[float], times: list[float], scores: dict[str, float]) -> dict[str, Any]:
    row = {"epoch": state.epoch + 1, "train_loss": sum(losses) / len(losses),
           "lr": state.optimizer.param_groups[0]["lr"], "seconds_per_step": sorted(times)[len(times) // 2],
           **{f"val_{k}": v for k, v in scores.items()}}
    for k, v in row.items():
        state.history.setdefault(k, []).append(v)
    state.history["step_loss"].extend(losses)
    return row


def run_experiment(config: TrainConfig, log: Callable[[str], None] | None = None) -> ExperimentResult:
    """Train and validate LDNet as ``config`` says; resumable from ``checkpoint_dir``.

    Steps: check the device and checkpoint folder, build the model and data,
    resume if asked, then per epoch :func:`train_epoch`, :func:`evaluate`,
    keep the best epoch (highest validation mean IoU) and write ``best.pt`` /
    ``last.pt`` (see :mod:`esa_tutorial.checkpoints`). ``log`` receives one
    line per epoch; ``config.progress`` shows a progress bar on stdout.

    Under ``torchrun`` (several processes, see
    :mod:`esa_tutorial.train.distributed`) each process trains on its share of
    every batch with synchronised gradients and batch statistics; only rank 0
    shows progress, logs and writes checkpoints.

    Raises :class:`TrainingDiverged` if the loss or a weight stops being
    finite: no checkpoint of that epoch is written. Global random state is left
    as it was (see the module docstring).
    """
    world = world_from_env()
    device = check_device(config.device, config.amp)
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)  # one process per GPU
    init_process_group(world, device)
    ckpt_dir = check_checkpoint_dir(config.checkpoint_dir) if config.checkpoint_dir else None
    if config.resume and ckpt_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    write_dir = ckpt_dir if world.main else None  # every process reads to resume; rank 0 alone writes and logs
    log = log if world.main else None
    model = build_model(config, device)
    net: nn.Module = model
    if world.size > 1:
        model = sync_batch_norm(model, device)
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    train_set, val_set = make_datasets(config)
    train_loader, val_loader = make_loaders(config, train_set, val_set, world, device)
    steps = len(train_loader)
    schedule_length = config.epochs * (steps if config.schedule == "per_step" else 1)
    state = TrainState(model, optimizer, poly_schedule(optimizer, schedule_length, config.power),
                       torch.amp.GradScaler(device.type, enabled=config.amp == "fp16"), net=net)
    if config.resume:
        resume(state, config, ckpt_dir)  # type: ignore[arg-type]
    if state.best_state is None:
        state.best_state = copy.deepcopy(model.state_dict())

    with seeded(config.seed, device):
        images, _ = next(iter(DataLoader(train_set, config.batch_size)))
    activation_mb = saved_activation_bytes(model, images.to(device)) / 2**20
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    bar = tqdm(total=steps * config.epochs, initial=state.epoch * steps, disable=not (config.progress and world.main),
               desc="train", file=sys.stdout, dynamic_ncols=True)
    try:
        while state.epoch < config.epochs:
            with seeded(config.seed + state.epoch + 1, device):  # dropout and augmentation of this epoch
                losses, times = train_epoch(state, train_loader, config, device, bar)
                scores = evaluate(model, val_loader, device, config.targets)
            row = _record(state, losses, times, scores)
            if scores["miou"] > state.best["miou"]:
                state.best_epoch, state.best = state.epoch + 1, scores
                state.best_state = copy.deepcopy(model.state_dict())
            state.epoch += 1
            if write_dir:
                if state.best_epoch == state.epoch:
                    save_best(state, config, write_dir)
                save_last(state, config, write_dir)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_dice=f"{scores['dice']:.3f}")
            if log:
                log(f"epoch {state.epoch}/{config.epochs} loss={row['train_loss']:.3f} "
                    f"val dice={scores['dice']:.3f} miou={scores['miou']:.3f}")
    finally:
        bar.close()

    cuda_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    model.load_state_dict(state.best_state)
    return ExperimentResult(model.eval(), state.history, state.best_epoch, state.best, config, activation_mb,
                            cuda_peak)
