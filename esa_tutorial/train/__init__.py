"""Train LDNet: deep-supervision loss, SGD with a poly schedule, validation, checkpoints.

One code path for the command line and the notebooks::

    python -m esa_tutorial.train --synthetic --quick       # about a minute on a laptop CPU
    python -m esa_tutorial.train --data kvasir/ --epochs 80  # LDNet's recipe on a folder

and in Python ``run_experiment(TrainConfig(...))`` (chapters 6 and 7). The
library is in small modules: ``losses``, ``schedule``, ``config`` and
``loop``; the command line is ``__main__``. Library
code never seeds global random state; scripts and notebooks call
:func:`~esa_tutorial.seed_everything` themselves if they want to.

Defaults are the paper's: SGD, lr 1e-3, momentum 0.9, weight decay 1e-5,
poly schedule with power 0.9, batch 16, 80 epochs, the best epoch chosen by
mean IoU on the validation set. The schedule is applied per step; LDNet's
code steps it per epoch, which differs only for very short runs.
"""

from .config import AMP_DTYPES, TrainConfig, check_batch_norm_batch, quick_config
from .losses import DICE_SMOOTH, bce_dice_loss, deep_supervision_loss
from .loop import (
    ExperimentResult,
    TrainingDiverged,
    TrainState,
    build_model,
    check_checkpoint_dir,
    check_device,
    evaluate,
    make_datasets,
    make_loaders,
    model_from_checkpoint,
    non_finite_weight,
    resume,
    run_experiment,
    save_best,
    save_last,
    saved_activation_bytes,
    train_epoch,
)
from .schedule import poly_lr

__all__ = [
    "AMP_DTYPES",
    "DICE_SMOOTH",
    "ExperimentResult",
    "TrainConfig",
    "TrainState",
    "TrainingDiverged",
    "bce_dice_loss",
    "build_model",
    "check_batch_norm_batch",
    "check_checkpoint_dir",
    "check_device",
    "deep_supervision_loss",
    "evaluate",
    "make_datasets",
    "make_loaders",
    "model_from_checkpoint",
    "non_finite_weight",
    "poly_lr",
    "quick_config",
    "resume",
    "run_experiment",
    "save_best",
    "save_last",
    "saved_activation_bytes",
    "train_epoch",
]
