"""Training: loss against hand computation, poly schedule, atomic checkpoints, resume, CLI."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import esa_tutorial.train as train
import esa_tutorial.train.__main__ as cli
import esa_tutorial.train.loop as loop
from esa_tutorial.checkpoints import load_checkpoint
from esa_tutorial.train import (
    TrainConfig,
    bce_dice_loss,
    deep_supervision_loss,
    lr_values,
    poly_schedule,
    run_experiment,
    saved_activation_bytes,
)

TINY = dict(size=32, n_train=8, n_val=4, batch_size=4, epochs=2, width=4, heads=1, dim_head=4, mlp_dim=8,
            lr=0.01, device="cpu", progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def _bce_dice_by_hand(logits: list[list[float]], targets: list[list[float]]) -> float:
    """BCE over every pixel of every image, plus 1 - mean over images of the smoothed Dice."""
    pixels = [(z, t) for zs, ts in zip(logits, targets) for z, t in zip(zs, ts)]
    bce = -sum(t * math.log(_sigmoid(z)) + (1 - t) * math.log(1 - _sigmoid(z)) for z, t in pixels) / len(pixels)
    dices = []
    for zs, ts in zip(logits, targets):
        p = [_sigmoid(z) for z in zs]
        dices.append((2 * sum(a * b for a, b in zip(p, ts)) + 1) / (sum(p) + sum(ts) + 1))
    return bce + 1 - sum(dices) / len(dices)


def test_bce_dice_loss_matches_hand_computation() -> None:
    logits = [[2.0, -1.0, 0.5, -3.0], [0.0, 1.5, -0.5, 4.0]]
    targets = [[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
    got = bce_dice_loss(torch.tensor(logits).view(2, 1, 2, 2), torch.tensor(targets).view(2, 1, 2, 2))
    assert got.item() == pytest.approx(_bce_dice_by_hand(logits, targets), rel=1e-6)


def test_deep_supervision_sums_losses_against_area_averaged_targets() -> None:
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    fine = torch.tensor([[2.0, 1.0, -1.0, -2.0], [1.0, -1.0, -2.0, -2.0], [-1.0, -2.0, 1.0, 2.0], [0.0, -1.0, 2.0, 3.0]])
    coarse = torch.tensor([[1.0, -2.0], [-1.0, 2.0]])
    # Each coarse pixel covers 2x2 fine ones: its target is the lesion fraction there.
    coarse_target = [0.75, 0.0, 0.0, 1.0]
    expected = _bce_dice_by_hand([fine.flatten().tolist()], [target.flatten().tolist()]) + _bce_dice_by_hand(
        [coarse.flatten().tolist()], [coarse_target]
    )
    got = deep_supervision_loss([fine.view(1, 1, 4, 4), coarse.view(1, 1, 2, 2)], target.view(1, 1, 4, 4))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_loss_errors() -> None:
    with pytest.raises(ValueError, match=r"one shape, got \(1, 1, 2, 2\) and \(1, 1, 4, 4\)"):
        bce_dice_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="3x3 does not divide the target size 4x4"):
        deep_supervision_loss([torch.zeros(1, 1, 3, 3)], torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="at least one output"):
        deep_supervision_loss([], torch.zeros(1, 1, 4, 4))


def test_poly_schedule_values() -> None:
    # torch's PolynomialLR against the formula lr * (1 - k / total) ** power, by hand
    values = lr_values(1e-3, 100)
    assert len(values) == 100 and values[0] == pytest.approx(1e-3)
    assert values[50] == pytest.approx(1e-3 * 0.5**0.9)
    assert lr_values(0.1, 100, power=2.0)[75] == pytest.approx(0.1 * 0.25**2)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    scheduler = poly_schedule(optimizer, 4)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.0
    with pytest.raises(ValueError, match="total must be a positive integer, got 0"):
        poly_schedule(optimizer, 0)
    with pytest.raises(ValueError, match="power must be a finite number >= 0, got nan"):
        poly_schedule(optimizer, 3, float("nan"))


# --------------------------------------------------------------------------- checkpoints


def test_resume_after_a_crash_repeats_the_uninterrupted_run(tmp_path: Path, monkeypatch) -> None:
    straight = run_experiment(TrainConfig(**TINY, checkpoint_dir=str(tmp_path / "a")))

    real_evaluate, calls = loop.evaluate, []

    def crash_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after epoch 1's checkpoint, before epoch 2's
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(TrainConfig(**TINY, checkpoint_dir=str(tmp_path / "b")))
    assert load_checkpoint(tmp_path / "b" / "last.pt")["extra"]["epoch"] == 1
    monkeypatch.setattr(loop, "evaluate", real_evaluate)
    resumed = run_experiment(TrainConfig(**TINY, checkpoint_dir=str(tmp_path / "b"), resume=True))

    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["extra"]["epoch"] == b["extra"]["epoch"] == 2
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=0, atol=0)
    torch.testing.assert_close(b["extra"]["optimizer"]["state"], a["extra"]["optimizer"]["state"], rtol=0, atol=0)
    assert resumed.history["step_loss"] == straight.history["step_loss"]
    assert resumed.history["val_dice"] == straight.history["val_dice"]
    assert (resumed.best_epoch, resumed.best) == (straight.best_epoch, straight.best)


def test_resume_refuses_a_different_recipe(tmp_path: Path) -> None:
    run_experiment(TrainConfig(**{**TINY, "epochs": 1}, checkpoint_dir=str(tmp_path)))
    with pytest.raises(ValueError, match=r"config differs in \['lr'\]"):
        run_experiment(TrainConfig(**{**TINY, "epochs": 1, "lr": 0.5}, checkpoint_dir=str(tmp_path), resume=True))


def test_history_and_best_model(tmp_path: Path) -> None:
    result = run_experiment(TrainConfig(**TINY, checkpoint_dir=str(tmp_path)))
    h = result.history
    assert h["epoch"] == [1, 2] and len(h["step_loss"]) == 4  # 8 images, batches of 4, 2 epochs
    assert result.best["miou"] == max(h["val_miou"]) == h["val_miou"][result.best_epoch - 1]
    best = load_checkpoint(tmp_path / "best.pt")
    for name, value in best["model"].items():
        torch.testing.assert_close(result.model.state_dict()[name], value, rtol=0, atol=0)


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="size must be a multiple of 32.*got 100"):
        TrainConfig(size=100)
    with pytest.raises(ValueError, match="epochs must be a positive integer, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="attention must be one of"):
        TrainConfig(attention="full")


def test_saved_activation_bytes_counts_what_backward_keeps() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    small = saved_activation_bytes(model, torch.randn(4, 4))
    large = saved_activation_bytes(model, torch.randn(8, 4))
    # Four more rows: Linear keeps its input (4 floats a row), ReLU its output (3 floats a row).
    assert large - small == 4 * (4 + 3) * 4


def test_saved_activation_bytes_leaves_batch_norm_statistics_alone() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    before = model[1].running_mean.clone()
    assert saved_activation_bytes(model, torch.randn(2, 3, 8, 8)) > 0
    torch.testing.assert_close(model[1].running_mean, before)


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "one of the arguments --synthetic --data is required"),
        (["--synthetic", "--data", "x"], "not allowed with argument"),
        (["--data", "/no/such/folder"], "--data: no folder at '/no/such/folder'"),
        (["--synthetic", "--size", "100"], "size must be a multiple of 32"),
        (["--synthetic", "--attention", "full"], "invalid choice: 'full'"),
        (["--synthetic", "--val-data", "x"], "--val-data needs --data"),
    ],
)
def test_cli_argument_errors(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_resume_without_checkpoint(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--synthetic", "--resume", "--checkpoint-dir", str(tmp_path)])
    assert "--resume: no checkpoint at" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_cuda_without_gpu(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--synthetic", "--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err


def test_cli_quick_defaults_and_overrides() -> None:
    args = cli.build_parser().parse_args(["--synthetic", "--quick", "--epochs", "3", "--no-lca"])
    config = cli.config_from_args(args)
    assert (config.size, config.lr, config.epochs, config.use_lca, config.batch_size) == (64, 0.05, 3, False, 8)
    assert cli.config_from_args(cli.build_parser().parse_args(["--synthetic"])).lr == 1e-3


def test_cli_tiny_run_ends_with_the_scores_line(tmp_path: Path, capsys) -> None:
    argv = ["--synthetic", "--size", "32", "--n-train", "8", "--n-val", "4", "--batch-size", "4", "--epochs", "1",
            "--width", "4", "--heads", "1", "--dim-head", "4", "--mlp-dim", "8", "--device", "cpu",
            "--no-progress", "--checkpoint-dir", str(tmp_path)]
    cli.main(argv)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"val dice=\d\.\d{3} miou=\d\.\d{3}", last)
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()


def _write_folder(root: Path, n: int) -> None:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy()
        mask = torch.zeros(32, 32, dtype=torch.uint8)
        mask[8 + i : 20 + i, 6:18] = 255
        Image.fromarray(image).save(root / "images" / f"{i}.png")
        Image.fromarray(mask.numpy()).save(root / "masks" / f"{i}.png")


def test_trains_on_a_folder_with_a_held_out_split(tmp_path: Path) -> None:
    _write_folder(tmp_path / "polyps", 10)
    config = TrainConfig(**{**TINY, "epochs": 1, "batch_size": 2}, data=str(tmp_path / "polyps"))
    train_set, val_set = train.make_datasets(config)
    assert (len(train_set), len(val_set)) == (8, 2)  # val_fraction 0.2 of 10
    assert sorted(train_set.indices + val_set.indices) == list(range(10))
    assert train_set.dataset.train and not val_set.dataset.train  # augment the training part only
    result = run_experiment(config)
    assert len(result.history["step_loss"]) == 4 and 0.0 <= result.best["dice"] <= 1.0


# --------------------------------------------------------------------------- divergence, options, global state


def test_a_diverging_run_stops_naming_the_step_and_the_learning_rate(tmp_path: Path) -> None:
    """B1: lr 1e6 used to train on NaN weights, exit 0 and save them as best.pt."""
    with pytest.raises(train.TrainingDiverged, match=r"diverged at step \d+ of 4 \(epoch 1\): .*learning rate") as info:
        run_experiment(TrainConfig(**{**TINY, "lr": 1e6}, checkpoint_dir=str(tmp_path)))
    assert "try a smaller lr" in str(info.value)
    assert not (tmp_path / "best.pt").exists() and not (tmp_path / "last.pt").exists()


def test_divergence_in_a_later_epoch_keeps_the_finite_checkpoints(tmp_path: Path, monkeypatch) -> None:
    """The NaN epoch is never chosen as best: the checkpoints keep the last finite epoch."""
    real_step, calls = torch.optim.SGD.step, []

    def poison_in_epoch_two(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # the first step of epoch 2 (2 steps per epoch)
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", poison_in_epoch_two)
    with pytest.raises(train.TrainingDiverged, match=r"step 3 of 4 \(epoch 2\): weight '.*' holds NaN or inf"):
        run_experiment(TrainConfig(**TINY, checkpoint_dir=str(tmp_path)))
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(tmp_path / name)
        assert ckpt["extra"]["epoch"] == 1
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_cli_exits_non_zero_on_divergence(tmp_path: Path, capsys) -> None:
    argv = ["--synthetic", "--size", "32", "--n-train", "8", "--n-val", "4", "--batch-size", "4", "--epochs", "1",
            "--width", "4", "--heads", "1", "--dim-head", "4", "--mlp-dim", "8", "--device", "cpu",
            "--no-progress", "--lr", "1e6", "--checkpoint-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 1
    assert "training diverged at step" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lr", "inf"], "lr must be a finite number > 0, got inf"),
        (["--lr", "nan"], "lr must be a finite number > 0, got nan"),
        (["--power", "nan"], "power must be a finite number >= 0, got nan"),
        (["--momentum", "-1"], "momentum must be a finite number >= 0"),
        (["--seed", "-1"], r"seed must be an integer in \[0, 2\*\*32\)"),
        (["--num-workers", "-1"], "num_workers must be a non-negative integer"),
        (["--heads", "0"], "heads must be a positive integer"),
        (["--device", "meta"], "device 'meta' cannot train: use 'cpu' or 'cuda'"),
        (["--device", "foo"], "device 'foo' is not a device torch knows"),
        (["--size", "32", "--n-train", "1"], r"batch of 1 image at size 32 .*--batch-size\) >= 2"),
        (["--size", "32", "--batch-size", "1"], r"batch of 1 image at size 32 .*--batch-size\) >= 2"),
        (["--amp", "bf16", "--device", "cpu"], "amp='bf16' .* needs a CUDA device"),
        (["--val-data", "/no/such"], None),
        # fuzz round 2, R10: huge values used to trace back from inside torch
        (["--width", "99999999999999999999"], "width must be an integer from 1 to 1024"),
        (["--n-train", "99999999999999999999"], "n_train must be an integer from 1 to 10000000"),
        (["--epochs", "99999999999999999999"], "epochs must be an integer from 1 to 1000000"),
        (["--lr", "1e308"], r"lr must be a finite number in \[0, 1e\+06\], got 1e\+308"),
        (["--momentum", "5"], r"momentum must be a finite number in \[0, 1\]"),
    ],
)
def test_cli_checks_every_option_before_work(extra: list[str], message: str | None, capsys, tmp_path: Path) -> None:
    """C3/C6: options used to fail after an epoch, or deep inside torch; exit 2 with the option named."""
    argv = ["--synthetic", "--no-progress", "--checkpoint-dir", str(tmp_path / "runs"), *extra]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err) if message else "error:" in err


def test_cli_refuses_a_file_as_checkpoint_dir_at_once(tmp_path: Path, capsys) -> None:
    """C3: a file given as --checkpoint-dir used to fail after the first epoch."""
    (tmp_path / "file").write_text("x")
    for target in ("file", "file/sub"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["--synthetic", "--checkpoint-dir", str(tmp_path / target)])
        assert exit_info.value.code == 2
        assert "checkpoint_dir" in capsys.readouterr().err


def test_config_checks_batch_norm_batch_in_the_library() -> None:
    with pytest.raises(ValueError, match="batch of 1 image at size 32"):
        TrainConfig(size=32, n_train=1)
    TrainConfig(size=64, n_train=1)  # a 2x2 top map is fine


def _corrupt(path: Path, mode: str) -> None:
    raw = bytearray(path.read_bytes())
    if mode == "flip":
        raw[len(raw) // 2] ^= 0x01
        path.write_bytes(bytes(raw))
    elif mode == "empty":
        path.write_bytes(b"")
    else:
        path.write_text("not a checkpoint\n")


@pytest.mark.parametrize("mode, message", [("flip", "is corrupted"), ("empty", "is empty"),
                                           ("text", "is not a checkpoint")])
def test_cli_resume_from_a_damaged_checkpoint_names_it(tmp_path: Path, capsys, mode: str, message: str) -> None:
    """B7/C4: damaged last.pt files loaded silently or failed with EOFError / KeyError."""
    argv = ["--synthetic", "--size", "32", "--n-train", "8", "--n-val", "4", "--batch-size", "4", "--epochs", "1",
            "--width", "4", "--heads", "1", "--dim-head", "4", "--mlp-dim", "8", "--device", "cpu",
            "--no-progress", "--checkpoint-dir", str(tmp_path)]
    cli.main(argv)
    _corrupt(tmp_path / "last.pt", mode)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--resume"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "last.pt") in err and message in err


def test_resume_refuses_a_checkpoint_without_training_state(tmp_path: Path) -> None:
    from esa_tutorial.checkpoints import CheckpointError, save_checkpoint

    config = TrainConfig(**TINY, checkpoint_dir=str(tmp_path), resume=True)
    model = train.build_model(config, torch.device("cpu"))
    save_checkpoint(tmp_path / "last.pt", model.state_dict(), config.recipe(), {"epoch": 1})
    with pytest.raises(CheckpointError, match=r"cannot resume .*last.pt: it lacks \['optimizer', 'scheduler', 'history'"):
        run_experiment(config)
    extra = {"optimizer": {}, "scheduler": {}, "epoch": -5, "history": {}, "best_epoch": 0, "best": {}}
    save_checkpoint(tmp_path / "last.pt", model.state_dict(), config.recipe(), extra)
    with pytest.raises(CheckpointError, match=r"epoch -5 / best_epoch 0 are not integers"):
        run_experiment(config)


def test_run_experiment_leaves_global_random_state_alone() -> None:
    """No global seeding in the library: the caller's RNG is untouched and does not change the result."""
    config = TrainConfig(**{**TINY, "epochs": 1})
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = run_experiment(config)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)
    second = run_experiment(config)
    assert first.history["step_loss"] == second.history["step_loss"]


def test_progress_goes_to_stdout(capsys) -> None:
    run_experiment(TrainConfig(**{**TINY, "epochs": 1, "progress": True}))
    captured = capsys.readouterr()
    assert "train" in captured.out and "train" not in captured.err


def test_synthetic_training_can_use_the_scaled_augmentation() -> None:
    from esa_tutorial.data import Augmented

    config = TrainConfig(**{**TINY, "epochs": 1, "size": 64, "augment": True})
    train_set, _ = train.make_datasets(config)
    assert isinstance(train_set, Augmented) and (train_set.recipe.resize, train_set.recipe.crop) == (73, 64)
    assert not isinstance(train.make_datasets(TrainConfig(**TINY))[0], Augmented)  # off by default for synthetic
    result = run_experiment(config)
    assert len(result.history["step_loss"]) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_amp_training_on_cuda(amp: str) -> None:
    result = run_experiment(TrainConfig(**{**TINY, "device": "cuda", "amp": amp}))
    assert all(math.isfinite(x) for x in result.history["step_loss"])


def test_cli_names_an_ambiguous_mask_and_exits_1(tmp_path: Path, capsys) -> None:
    from PIL import Image
    import numpy as np

    _write_folder(tmp_path / "polyps", 4)
    label_map = np.zeros((32, 32), np.uint8)
    label_map[4:12, 4:12], label_map[20:24, 20:24] = 1, 2  # two foreground ids: which one is the polyp?
    Image.fromarray(label_map).save(tmp_path / "polyps" / "masks" / "0.png")
    argv = ["--data", str(tmp_path / "polyps"), "--size", "32", "--batch-size", "2", "--epochs", "1",
            "--width", "4", "--heads", "1", "--dim-head", "4", "--mlp-dim", "8", "--device", "cpu",
            "--no-progress", "--no-augment", "--checkpoint-dir", str(tmp_path / "runs")]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "masks/0.png looks like a label map with several foreground ids {0:" in err


def test_model_from_checkpoint_rebuilds_the_best_model(tmp_path: Path) -> None:
    from esa_tutorial.checkpoints import CheckpointError, save_checkpoint

    result = run_experiment(TrainConfig(**{**TINY, "epochs": 1}, checkpoint_dir=str(tmp_path)))
    model = train.model_from_checkpoint(tmp_path / "best.pt")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], result.model(x)[0], rtol=0, atol=0)
    save_checkpoint(tmp_path / "bare.pt", model.state_dict(), {})
    with pytest.raises(CheckpointError, match="bare.pt has no 'model_kwargs'"):
        train.model_from_checkpoint(tmp_path / "bare.pt")
    save_checkpoint(tmp_path / "wrong.pt", model.state_dict(), {}, {"model_kwargs": {"width": 8}})
    with pytest.raises(CheckpointError, match=r"wrong.pt: its weights do not fit LDNet\(\*\*\{'width': 8\}\)"):
        train.model_from_checkpoint(tmp_path / "wrong.pt")
