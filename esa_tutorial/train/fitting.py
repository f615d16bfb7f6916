"""The one training loop of the package: optimizer steps over a stream of batches.

Every run in the package trains through :func:`fit`: the command line and the
chapters (:func:`~esa_tutorial.train.run_experiment`, by epochs over a
``DataLoader``), the book's stored experiments
(:func:`~esa_tutorial.experiments.train_run`, by steps over tensors in
memory), LDNet's recipe and multi-GPU training (a model wrapped in
``DistributedDataParallel``). What differs between them is passed in: the
optimizer, the learning-rate scheduler (a ``torch.optim.lr_scheduler`` one,
stepped after every optimizer step, or ``None`` when the caller steps it per
epoch), the loss, and how a divergence is reported.

One host synchronisation per step. Each step stacks "is the loss finite" and
"are all weights finite" into one small tensor and reads it once; the
per-step losses are read in the same transfer every ``read_every`` steps. On
CUDA nothing else waits for the GPU: batches are copied with
``non_blocking=True`` (from pinned memory when the loader pins it).

Mixed precision: with ``amp="fp16"`` a ``GradScaler`` multiplies the loss
before backward and skips the optimizer step whose gradients overflowed,
halving its scale; that is how it finds its scale, so a skipped step is not a
divergence. Only a run of :data:`MAX_SKIPPED_STEPS` non-finite losses in a
row, or a weight that is not finite, stops training.

Several processes (``torch.distributed``): the check and the losses are
all-reduced in the same transfer, so every process stops at the same step
and the logged loss is that of the global batch.
"""

from __future__ import annotations

import contextlib
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

AMP_TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# GradScaler halves its scale on each overflow; from its default 2**16 it reaches 2**-4 in 20 steps:
# a loss that is still not finite then is not an fp16 overflow but a diverged run.
MAX_SKIPPED_STEPS = 20


class TrainingDiverged(RuntimeError):
    """The loss or a weight became NaN or inf; the message names the step and the likely cause."""


Diverged = Callable[[str, int, float], Exception]


def diverged_message(what: str, step: int, lr: float) -> TrainingDiverged:
    """The default report of a divergence at 0-based ``step`` with learning rate ``lr``."""
    return TrainingDiverged(f"training diverged at step {step + 1}: {what}; the learning rate was {lr:.3g}: "
                            "try a smaller one")


def weight_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every floating-point parameter and buffer of ``model``."""
    return [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_floating_point()]


def all_finite(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor on the tensors' device: no NaN or inf anywhere (no host sync, no copy).

    One sum per tensor: a NaN or inf anywhere makes its sum NaN or inf. (A sum
    can also overflow float32 for finite values above about 1e34; such weights
    count as diverged as well.)
    """
    sums = [t.detach().sum(dtype=torch.float32) for t in tensors]
    if not sums:
        return torch.ones((), dtype=torch.bool)
    return torch.isfinite(torch.stack(sums)).all()


def _first_non_finite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """Name of the first tensor holding NaN or inf (one host sync per tensor: for the failure path only)."""
    return next((n for n, t in named if not bool(torch.isfinite(t).all())), None)


def non_finite_weight(model: nn.Module) -> str | None:
    """Name of the first parameter or buffer holding NaN or inf, or ``None`` (one host sync)."""
    tensors = weight_tensors(model)
    if bool(all_finite(t for _, t in tensors)):
        return None
    return _first_non_finite(tensors)


def autocast_context(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``amp`` (``"fp16"``, ``"bf16"``) on ``device``, or a context doing nothing."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_TORCH_DTYPES[amp])


@contextlib.contextmanager
def _quiet_first_schedule_step() -> Iterator[None]:
    """Hide torch's "lr_scheduler.step() before optimizer.step()" warning (see :func:`fit`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()` before"))
        yield


def to_device(batch: Any, device: torch.device) -> Any:
    """Move a tensor, or the tensors of a tuple/list, to ``device`` without waiting for the copy."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    return type(batch)(to_device(b, device) for b in batch)


@dataclass
class FitLog:
    """What :func:`fit` measured: one entry per step taken.

    ``loss``: the step's loss (``nan`` for a step the fp16 scaler skipped).
    ``seconds``: wall time from the batch on the device to the step's check.
    ``lr``: the learning rate the step used. ``skipped``: steps the scaler skipped.
    """

    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    skipped: int = 0


def fit(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    device: torch.device | str = "cpu",
    amp: str | None = None,
    scaler: torch.amp.GradScaler | None = None,
    first_step: int = 0,
    read_every: int = 1,
    diverged: Diverged = diverged_message,
    on_step: Callable[[int, FitLog], None] | None = None,
    bar: Any = None,
) -> FitLog:
    """Train ``model`` on every (images, targets) batch of ``batches``; returns the per-step log.

    Per batch: move it to ``device``, zero the gradients, compute
    ``loss_fn(model(images), targets)`` under autocast (``amp``), backward
    through ``scaler`` (fp16) or directly, optimizer step, ``scheduler.step()``.

    ``first_step``: the global index of the first step (for messages when a
    run continues). ``read_every``: losses are copied to the host every this
    many steps and at the end (``on_step`` sees them then). ``on_step(step,
    log)`` runs after each step, e.g. to evaluate every N steps. ``bar``: a
    tqdm bar, advanced once per step.

    Raises what ``diverged(what, step, lr)`` returns when a weight stops
    being finite after a step, or when the loss is not finite (with an fp16
    scaler: :data:`MAX_SKIPPED_STEPS` times in a row).
    """
    device = torch.device(device)
    if read_every < 1:
        raise ValueError(f"read_every must be a positive integer, got {read_every!r}")
    scaling = scaler is not None and scaler.is_enabled()
    weights = [t for _, t in weight_tensors(model)]
    log, pending = FitLog(), []  # pending: device-side losses not yet read
    skipped_in_a_row = 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    model.train()
    step = first_step - 1
    for step_in_call, (images, targets) in enumerate(batches):
        step = first_step + step_in_call
        images, targets = to_device(images, device), to_device(targets, device)
        lr = optimizer.param_groups[0]["lr"]
        tic = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device, amp):
            loss = loss_fn(model(images), targets)
        (scaler.scale(loss) if scaling else loss).backward()
        if scaling:
            scaler.step(optimizer)  # skips the update when the scaled gradients overflowed
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            # The schedule advances on a step the fp16 scaler skipped, as torch's AMP recipe does. torch warns,
            # on a scheduler's first step only, when the optimizer did not step first: that is the skip itself,
            # not an error. The filter is set for that first step alone: leaving catch_warnings resets
            # Python's record of warnings already shown, so doing it every step would print a warning
            # that the model raises once per place (Python's default) again at every step.
            with _quiet_first_schedule_step() if scaling and step_in_call == 0 else contextlib.nullcontext():
                scheduler.step()
        loss = loss.detach().float()
        pending.append(loss)
        flags = torch.stack([torch.isfinite(loss), all_finite(weights)]).float()
        read = len(pending) >= read_every
        values = torch.cat([flags, torch.stack(pending)]) if read else flags
        if world > 1:  # every process takes the same decision, and logs the loss of the global batch
            dist.all_reduce(values)
            values = values / world
        values = values.tolist()  # the step's one host sync
        loss_ok, weights_ok = values[0] == 1.0, values[1] == 1.0
        if read:
            log.loss.extend(values[2:])
            pending = []
        log.seconds.append(time.perf_counter() - tic)
        log.lr.append(lr)
        if not loss_ok and not scaling:  # the cause first: a weight turns NaN after a NaN loss
            raise diverged(f"the loss is {float(loss)}", step, lr)
        if not weights_ok:
            name = _first_non_finite(weight_tensors(model))
            if name is not None:
                raise diverged(f"weight {name!r} holds NaN or inf after the update", step, lr)
        if not loss_ok:
            log.skipped += 1
            skipped_in_a_row += 1
            if skipped_in_a_row >= MAX_SKIPPED_STEPS:
                raise diverged(f"the loss was not finite in {skipped_in_a_row} steps in a row (the fp16 "
                               "gradient scaler skipped them all)", step, lr)
        else:
            skipped_in_a_row = 0
        if bar is not None:
            bar.update(1)
        if on_step is not None:
            on_step(step, log)  # log.loss holds the losses read so far
    if pending:
        losses = torch.stack(pending)
        if world > 1:
            dist.all_reduce(losses)
            losses = losses / world
        log.loss.extend(losses.tolist())
    return log
