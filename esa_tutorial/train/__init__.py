"""Train LDNet: deep-supervision loss, SGD with a poly schedule, validation, checkpoints.

One code path for the command line and the notebooks::

    python -m esa_tutorial.train --synthetic --quick       # about a minute on a laptop CPU
    python -m esa_tutorial.train --data kvasir/ --epochs 80  # LDNet's recipe on a folder

and in Python ``run_experiment(TrainConfig(...))`` (chapters 6 and 7). The
library is in small modules: ``losses``, ``schedule``, ``config``, ``fitting`` (the
one loop, :func:`fit`), ``distributed`` and ``loop`` (epochs, validation,
checkpoints); the command line is ``__main__``. Library
code never seeds global random state; scripts and notebooks call
:func:`~esa_tutorial.seed_everything` themselves if they want to.

Defaults are the paper's: SGD, lr 1e-3, momentum 0.9, weight decay 1e-5,
poly schedule with power 0.9, batch 16, 80 epochs, the best epoch chosen by
mean IoU on the validation set. Three defaults differ from LDNet's code (the
schedule stepped per step, area-averaged targets, the partial batch dropped);
``ldnet_recipe()`` (``--recipe ldnet``) takes LDNet's choices. Every run,
the book's experiments included, trains through one loop, :func:`fit`;
``torchrun --nproc_per_node N -m esa_tutorial.train ...`` trains on N devices
(see :mod:`~esa_tutorial.train.distributed`).
"""

from .config import AMP_DTYPES, TrainConfig, check_batch_norm_batch, ldnet_recipe, quick_config
from .distributed import DistributedBatchNorm, EpochBatches, World, sync_batch_norm, world_from_env
from .fitting import MAX_SKIPPED_STEPS, FitLog, TrainingDiverged, all_finite, fit, non_finite_weight
from .losses import DICE_SMOOTH, bce_dice_loss, deep_supervision_loss
from .loop import (
    ExperimentResult,
    TrainState,
    build_model,
    check_checkpoint_dir,
    check_device,
    evaluate,
    make_datasets,
    make_loaders,
    model_from_checkpoint,
    resume,
    run_experiment,
    save_best,
    save_last,
    saved_activation_bytes,
    train_epoch,
)
from .schedule import lr_values, poly_schedule

__all__ = [
    "AMP_DTYPES",
    "MAX_SKIPPED_STEPS",
    "DICE_SMOOTH",
    "DistributedBatchNorm",
    "EpochBatches",
    "ExperimentResult",
    "FitLog",
    "TrainConfig",
    "TrainState",
    "TrainingDiverged",
    "World",
    "all_finite",
    "bce_dice_loss",
    "build_model",
    "check_batch_norm_batch",
    "check_checkpoint_dir",
    "check_device",
    "deep_supervision_loss",
    "evaluate",
    "fit",
    "ldnet_recipe",
    "make_datasets",
    "make_loaders",
    "model_from_checkpoint",
    "non_finite_weight",
    "lr_values",
    "poly_schedule",
    "quick_config",
    "resume",
    "run_experiment",
    "save_best",
    "save_last",
    "saved_activation_bytes",
    "sync_batch_norm",
    "train_epoch",
    "world_from_env",
]
