"""``python -m esa_tutorial.train``: train LDNet from the command line.

Every option is checked before any work (numbers finite and in range, the
device real and available, the checkpoint folder writable). A run that
diverges (NaN or inf loss or weights) stops with a message naming the step
and exits with status 1; checkpoints are written atomically and never hold
a non-finite model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ..checkpoints import CheckpointError
from ..nn.ldnet import ATTENTIONS
from ..runtime import seed_everything
from .config import AMP_DTYPES, MODELS, SCHEDULES, TARGET_RESIZES, TrainConfig, ldnet_recipe, quick_config
from .distributed import world_from_env
from .loop import ExperimentResult, TrainingDiverged, check_checkpoint_dir, check_device, run_experiment


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m esa_tutorial.train",
        description="Train LDNet on synthetic polyps or on an images/ + masks/ folder. On several GPUs: "
                    "torchrun --nproc_per_node N -m esa_tutorial.train ... (--batch-size is the global batch).",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--synthetic", action="store_true", help="train on generated polyps")
    source.add_argument("--data", metavar="DIR", help="folder with images/ and masks/")
    p.add_argument("--val-data", metavar="DIR", help="validation folder (default: hold out --val-fraction of --data)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    recipe = p.add_mutually_exclusive_group()
    recipe.add_argument("--quick", action="store_true",
                        help="64x64, 256 images in batches of 8, 12 epochs, lr 0.05: about a minute on one CPU thread")
    recipe.add_argument("--recipe", choices=("package", "ldnet"), default="package",
                        help="ldnet: LDNet's code's recipe (poly schedule per epoch, bilinear targets, "
                             "partial batches kept, augmentation 256 -> 224); default: the package's")
    defaults = TrainConfig()
    for name in ("epochs", "batch_size", "size", "width", "heads", "dim_head", "mlp_dim", "seed",
                 "n_train", "n_val", "num_workers"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"default {getattr(defaults, name)}")
    for name in ("lr", "momentum", "weight_decay", "power"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, help=f"default {getattr(defaults, name)}")
    p.add_argument("--model", choices=MODELS,
                   help="small: the package's small encoder (default); full: LDNet's whole network (Res2Net-50)")
    p.add_argument("--pretrained-backbone", metavar="FILE",
                   help="encoder weights to start from (for --model full: ImageNet Res2Net-50 v1b / timm res2net50d)")
    p.add_argument("--attention", choices=ATTENTIONS, help="self-attention on the skips (default esa)")
    p.add_argument("--no-lca", action="store_true", help="drop the lesion-aware cross-attention")
    augment = p.add_mutually_exclusive_group()
    augment.add_argument("--augment", action="store_true", default=None,
                         help="augment training images (default for --data)")
    augment.add_argument("--no-augment", action="store_false", dest="augment",
                         help="no augmentation (default for --synthetic)")
    p.add_argument("--schedule", choices=SCHEDULES, help="step the poly schedule per step or per epoch")
    p.add_argument("--targets", choices=TARGET_RESIZES, help="resize the mask for coarser outputs")
    p.add_argument("--amp", choices=AMP_DTYPES,
                   help="mixed precision on CUDA: fp16 (with a gradient scaler) or bf16; refused on the CPU")
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
    if args.quick:
        return quick_config(**given)
    return ldnet_recipe(**given) if args.recipe == "ldnet" else TrainConfig(**given)


def main(argv: Sequence[str] | None = None) -> ExperimentResult:
    """Parse ``argv``, check every option, train; exit status 2 for a bad option, 1 for a failed run."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data is not None and not Path(args.data).is_dir():
        parser.error(f"--data: no folder at {args.data!r}")
    if args.val_data is not None and args.data is None:
        parser.error("--val-data needs --data")
    if args.val_data is not None and not Path(args.val_data).is_dir():
        parser.error(f"--val-data: no folder at {args.val_data!r}")
    try:
        config = config_from_args(args)
        check_device(config.device, config.amp)
        check_checkpoint_dir(args.checkpoint_dir)
    except ValueError as err:
        parser.error(str(err))
    if args.pretrained_backbone is not None and not Path(args.pretrained_backbone).is_file():
        parser.error(f"--pretrained-backbone: no file at {args.pretrained_backbone!r}")
    if args.resume and not (Path(args.checkpoint_dir) / "last.pt").is_file():
        parser.error(f"--resume: no checkpoint at {Path(args.checkpoint_dir) / 'last.pt'}")
    seed_everything(config.seed)  # a script may seed globally; run_experiment itself never does
    main_process = world_from_env().main  # under torchrun only rank 0 prints
    try:
        result = run_experiment(config, log=print if main_process else None)
    except (TrainingDiverged, CheckpointError, ValueError, FileNotFoundError) as err:
        # Diverged runs, damaged checkpoints, unreadable data files: the message names the cause.
        parser.exit(1, f"{parser.prog}: error: {err}\n")
    if main_process:
        print(f"best epoch {result.best_epoch}, saved in {Path(config.checkpoint_dir) / 'best.pt'}")
        print(f"val dice={result.best['dice']:.3f} miou={result.best['miou']:.3f}")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
