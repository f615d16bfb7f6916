"""Data-parallel training: one process per device, started by ``torchrun``.

``torchrun --nproc_per_node N -m esa_tutorial.train ...`` starts N copies of
the training command with ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` set. Each
copy trains the same model on its share of every global batch; ``DistributedDataParallel``
averages the gradients, so the weights after a step are those of one process
taking the whole global batch (``--batch-size`` stays the global batch). Batch
normalisation is synchronised too (torch's ``SyncBatchNorm`` on GPUs,
:class:`DistributedBatchNorm` on the CPU, where torch's does not run), so
that its statistics are those of the global batch as well. Logging and
checkpoints come from rank 0 only.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """Where this process stands: its ``rank`` among ``size`` processes (0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process logs and writes files (rank 0)."""
        return self.rank == 0


def world_from_env(environ: dict[str, str] | None = None) -> World:
    """The :class:`World` that ``torchrun``'s variables describe; one process when they are absent.

    Raises ``ValueError`` for variables that are not integers or are inconsistent.
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return World()
    try:
        size, rank, local = int(env["WORLD_SIZE"]), int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun), got "
                         f"{env.get('WORLD_SIZE')!r}, {env.get('RANK')!r}, {env.get('LOCAL_RANK')!r}") from None
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ValueError(f"inconsistent torchrun variables: WORLD_SIZE={size}, RANK={rank}, LOCAL_RANK={local}")
    return World(rank, size, local)


def init_process_group(world: World, device: torch.device) -> None:
    """Join the process group of ``world`` (NCCL for CUDA devices, gloo otherwise), once."""
    if world.size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=world.rank, world_size=world.size,
                                timeout=datetime.timedelta(minutes=10))


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is the sum over processes of the gradients (public ops only)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class DistributedBatchNorm(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the global batch, on any device.

    The per-channel count, sum and sum of squares are all-reduced with a
    differentiable all-reduce, so gradients flow through the global mean
    and variance exactly as in one process holding the whole batch. Same
    parameters and buffers as ``BatchNorm2d``: checkpoints are interchangeable.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xf = x.float()
        count = torch.full((1,), x.numel() // x.shape[1], dtype=torch.float32, device=x.device)
        stats = torch.cat([count, xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3))])
        stats = _AllReduceSum.apply(stats)  # backward all-reduces the gradients of every process's loss
        c = x.shape[1]
        n, total, squares = stats[0], stats[1 : 1 + c], stats[1 + c :]
        mean = total / n
        var = squares / n - mean * mean
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr,operator]
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        shape = (1, c, 1, 1)
        out = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def sync_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every ``BatchNorm2d`` of ``model`` synchronised across processes (in place where possible).

    CUDA: ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``. Other devices:
    each ``BatchNorm2d`` becomes a :class:`DistributedBatchNorm` with the same
    weights and statistics.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            new = DistributedBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats, device=device)
            new.load_state_dict(child.state_dict())
            setattr(model, name, new)
        else:
            sync_batch_norm(child, device)
    return model


class EpochBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of dataset indices for one epoch, the same on every process, each taking its share.

    Epoch ``e`` shuffles ``range(n)`` with a generator seeded by
    ``seed + e + 1`` (exactly the order of a shuffled ``DataLoader`` whose
    generator has that seed) and cuts it into global batches of
    ``batch_size``. A process of rank ``r`` among ``world`` takes the ``r``-th
    of ``world`` equal parts of each global batch, so the processes together
    see exactly the global batch that one process would. ``drop_last``: drop
    a final partial batch (else it is kept, and split as evenly as it goes).
    """

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool, world: World = World()) -> None:
        if batch_size % world.size:
            raise ValueError(f"the global batch size {batch_size} must be divisible by the number of "
                             f"processes {world.size}")
        self.n, self.batch_size, self.seed, self.drop_last, self.world = n, batch_size, seed, drop_last, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order from the next iteration on."""
        self.epoch = epoch

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last and rest >= self.world.size else 0)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch + 1)
        # A shuffled DataLoader draws its workers' base seed from the generator before the order; drawing
        # it here too keeps the batches of every run made before this sampler existed.
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(self.n, generator=generator)
        for k in range(len(self)):
            batch = order[k * self.batch_size : (k + 1) * self.batch_size]
            yield torch.tensor_split(batch, self.world.size)[self.world.rank].tolist()


__all__ = ["DistributedBatchNorm", "EpochBatches", "World", "init_process_group",
           "sync_batch_norm", "world_from_env"]
