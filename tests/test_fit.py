"""The one training loop (train.fit), LDNet's recipe, and data-parallel training on CPU processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from esa_tutorial.checkpoints import load_checkpoint
from esa_tutorial.train import (
    MAX_SKIPPED_STEPS,
    EpochBatches,
    TrainConfig,
    TrainingDiverged,
    World,
    build_model,
    deep_supervision_loss,
    fit,
    ldnet_recipe,
    run_experiment,
    world_from_env,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SYNCS = {"item", "tolist", "__bool__", "__float__", "__int__", "numpy"}


class CountSyncs(TorchFunctionMode):
    """Counts the Tensor methods that copy a value to the host (each one a device sync on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in SYNCS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1))


def batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(4, 3, 8, 8, generator=g), (torch.rand(4, 1, 8, 8, generator=g) > 0.5).float())
            for _ in range(n)]


def test_fit_makes_one_host_sync_per_step() -> None:
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with CountSyncs() as counter:
        log = fit(model, batches(6), F.binary_cross_entropy_with_logits, opt, read_every=3)
    assert counter.count == 6  # one per step, the losses read with the check every 3 steps
    assert len(log.loss) == len(log.seconds) == len(log.lr) == 6


def test_fit_records_every_loss_whatever_read_every() -> None:
    logs = []
    for read_every in (1, 4):
        model = tiny_net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        logs.append(fit(model, batches(6), F.binary_cross_entropy_with_logits, opt, read_every=read_every))
    assert logs[0].loss == logs[1].loss and len(logs[0].loss) == 6
    # and the loss it records is the loss of the batch before the step, computed by hand for step 1
    model = tiny_net()
    (x, y), = batches(1)
    expected = F.binary_cross_entropy_with_logits(model.train()(x), y).item()
    log = fit(model, [(x, y)], F.binary_cross_entropy_with_logits, torch.optim.SGD(model.parameters(), lr=0.1))
    assert log.loss == [pytest.approx(expected, rel=1e-6)]


def test_fit_steps_a_torch_scheduler_after_each_step() -> None:
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=4, power=1.0)
    log = fit(model, batches(4), F.binary_cross_entropy_with_logits, opt, scheduler=scheduler)
    assert log.lr == pytest.approx([0.1, 0.075, 0.05, 0.025])


def _scaler_and_overflowing_loss(overflow_steps: set[int]):
    calls = []

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        loss = F.binary_cross_entropy_with_logits(out, y)
        return loss * float("inf") if len(calls) - 1 in overflow_steps else loss

    return torch.amp.GradScaler("cpu", init_scale=2.0**16), loss_fn


def test_an_fp16_overflow_step_is_skipped_not_a_divergence() -> None:
    scaler, loss_fn = _scaler_and_overflowing_loss({1})
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    log = fit(model, batches(4), loss_fn, opt, scaler=scaler,
              on_step=lambda step, _: seen.append([p.detach().clone() for p in model.parameters()]))
    assert log.skipped == 1 and len(log.loss) == 4
    assert not torch.isfinite(torch.tensor(log.loss[1])) and all(map(lambda v: v == v, log.loss[2:]))
    for before, after in zip(seen[0], seen[1]):  # the overflowing step changed no weight
        torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert scaler.get_scale() < 2.0**16  # and the scaler lowered its scale


def test_a_skipped_first_step_advances_the_schedule_without_torchs_warning() -> None:
    """The scaler skips step 0 (overflow); the schedule still moves on, and torch's "scheduler before
    optimizer" warning, which that skip triggers, does not reach the reader."""
    scaler, loss_fn = _scaler_and_overflowing_loss({0})
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log = fit(model, batches(4), loss_fn, opt, scaler=scaler, scheduler=scheduler)
    assert log.skipped == 1 and log.lr == pytest.approx([0.1, 0.075, 0.05, 0.025])
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]


def test_a_loss_that_stays_non_finite_under_the_scaler_is_a_divergence() -> None:
    scaler, loss_fn = _scaler_and_overflowing_loss(set(range(100)))
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingDiverged, match=f"not finite in {MAX_SKIPPED_STEPS} steps in a row"):
        fit(model, batches(MAX_SKIPPED_STEPS + 5), loss_fn, opt, scaler=scaler)


def test_without_a_scaler_a_non_finite_loss_stops_at_once() -> None:
    _, loss_fn = _scaler_and_overflowing_loss({2})
    model = tiny_net()
    with pytest.raises(TrainingDiverged, match="at step 3: the loss is inf"):
        fit(model, batches(5), loss_fn, torch.optim.SGD(model.parameters(), lr=0.1))


# --------------------------------------------------------------------------- LDNet's recipe


def test_ldnet_recipe_is_ldnets_code() -> None:
    c = ldnet_recipe()
    assert (c.lr, c.momentum, c.weight_decay, c.power, c.epochs, c.batch_size, c.size) == \
        (1e-3, 0.9, 1e-5, 0.9, 80, 16, 224)
    assert (c.schedule, c.targets, c.keep_last_batch, c.augments) == ("per_epoch", "bilinear", True, True)
    assert c.model == "full" and c.model_kwargs()["encoder"] == "res2net50"
    default = TrainConfig()
    assert (default.schedule, default.targets, default.keep_last_batch) == ("per_step", "area", False)


@pytest.mark.slow
def test_the_train_command_trains_ldnets_whole_network_with_its_recipe(tmp_path: Path, capsys) -> None:
    """LDNet's recipe on a folder in Kvasir's layout, the full network (Res2Net-50), then evaluate scores it."""
    import numpy as np
    from PIL import Image

    from esa_tutorial.evaluate.__main__ import main as evaluate_main
    from esa_tutorial.train.__main__ import main as train_main

    folder = tmp_path / "kvasir"
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        image = rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)
        mask = np.zeros((80, 80), np.uint8)
        mask[20 + i : 50, 15 : 45 + i] = 255
        Image.fromarray(image).save(folder / "images" / f"{i}.jpg")
        Image.fromarray(mask).save(folder / "masks" / f"{i}.jpg")
    result = train_main(["--data", str(folder), "--recipe", "ldnet", "--size", "64", "--epochs", "1",
                         "--batch-size", "2", "--val-fraction", "0.34", "--device", "cpu", "--no-progress",
                         "--checkpoint-dir", str(tmp_path / "run")])
    assert sum(p.numel() for p in result.model.parameters()) == 33_375_608  # LDNet's count
    assert result.config.schedule == "per_epoch" and len(result.history["step_loss"]) == 2  # 4 images, batch 2
    capsys.readouterr()
    evaluate_main([str(tmp_path / "run" / "best.pt"), str(folder), "--device", "cpu"])
    assert "dice" in capsys.readouterr().out.lower()


def test_bilinear_targets_are_halved_in_a_chain_as_in_ldnets_loss() -> None:
    g = torch.Generator().manual_seed(1)
    target = (torch.rand(2, 1, 32, 32, generator=g) > 0.5).float()
    outputs = [torch.randn(2, 1, 32 // 2**i, 32 // 2**i, generator=g) for i in range(5)]
    expected, t = torch.zeros(()), target
    for i, out in enumerate(outputs):  # LDNet's DeepSupervisionLoss: BCE on sigmoid + per-image Dice
        if i:
            t = F.interpolate(t, scale_factor=0.5, mode="bilinear", align_corners=True)
        p = torch.sigmoid(out)
        dice = (2 * (p * t).flatten(1).sum(1) + 1) / (p.flatten(1).sum(1) + t.flatten(1).sum(1) + 1)
        expected = expected + F.binary_cross_entropy(p, t) + 1 - dice.mean()
    torch.testing.assert_close(deep_supervision_loss(outputs, target, resize="bilinear"), expected)
    area = deep_supervision_loss(outputs, target, resize="area")
    assert (area - expected).abs() > 1e-4  # the two choices differ on this target
    with pytest.raises(ValueError, match=r"resize must be one of \('area', 'bilinear'\), got 'nearest'"):
        deep_supervision_loss(outputs, target, resize="nearest")


TINY = dict(size=32, n_train=10, n_val=4, batch_size=4, epochs=3, width=4, heads=1, dim_head=4, mlp_dim=8,
            lr=0.01, device="cpu", progress=False)


def test_per_epoch_schedule_and_kept_partial_batch() -> None:
    result = run_experiment(TrainConfig(**TINY, schedule="per_epoch", keep_last_batch=True))
    assert len(result.history["step_loss"]) == 3 * 3  # 10 images in batches of 4: 4, 4 and the kept 2
    lrs = result.history["lr"]  # the learning rate after each epoch's step, as LDNet's LambdaLR gives it
    assert lrs == pytest.approx([0.01 * (1 - e / 3) ** 0.9 for e in (1, 2, 3)])
    dropped = run_experiment(TrainConfig(**TINY))
    assert len(dropped.history["step_loss"]) == 3 * 2


# --------------------------------------------------------------------------- data-parallel


def test_epoch_batches_follow_a_shuffled_dataloader_and_split_each_global_batch() -> None:
    g = torch.Generator()
    loader = torch.utils.data.DataLoader(range(10), 4, shuffle=True, drop_last=True, generator=g)
    g.manual_seed(7 + 2 + 1)
    sampler = EpochBatches(10, 4, seed=7, drop_last=True)
    sampler.set_epoch(2)
    assert [b.tolist() for b in loader] == list(sampler)
    parts = [list(EpochBatches(10, 4, 7, False, World(r, 2))) for r in range(2)]
    whole = EpochBatches(10, 4, 7, False)
    whole.set_epoch(0)
    for k, batch in enumerate(whole):
        assert parts[0][k] + parts[1][k] == batch  # the ranks' shares make up the global batch
    with pytest.raises(ValueError, match="global batch size 5 must be divisible by the number of processes 2"):
        EpochBatches(10, 5, 0, True, World(0, 2))


def test_world_from_torchrun_variables() -> None:
    assert world_from_env({}) == World(0, 1, 0)
    assert world_from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}) == World(1, 2, 1)
    with pytest.raises(ValueError, match="inconsistent torchrun variables: WORLD_SIZE=2, RANK=2"):
        world_from_env({"WORLD_SIZE": "2", "RANK": "2"})


WORKER = textwrap.dedent("""
    import sys, torch
    from esa_tutorial.train import TrainConfig, run_experiment
    torch.set_num_threads(1)
    config = TrainConfig(**eval(sys.argv[1]))
    run_experiment(config)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_two_gloo_processes_train_the_weights_of_one_process_with_the_global_batch(tmp_path: Path) -> None:
    """Two CPU processes (gloo) stand in for two GPUs: DDP plus synchronised batch norm."""
    # 64x64 and lr 0.01: at 32x32 LDNet's top map is 1x1, and batch norm over 4 values there (or a larger
    # rate) amplifies float rounding between the two summation orders into visible differences
    settings = {**TINY, "size": 64, "n_train": 16, "epochs": 2, "lr": 0.01}
    one = run_experiment(TrainConfig(**settings, checkpoint_dir=str(tmp_path / "one")))
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    config = repr({**settings, "checkpoint_dir": str(tmp_path / "two")})
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, config],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    a, b = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    # rank 0 logs the loss of the global batch (the mean over the processes)
    assert b["extra"]["history"]["step_loss"] == pytest.approx(one.history["step_loss"], rel=1e-4)
    start = build_model(TrainConfig(**settings), torch.device("cpu")).state_dict()
    changed = max(float((a["model"][k] - v).abs().max()) for k, v in start.items() if v.is_floating_point())
    assert changed > 1e-3  # the comparison above is between trained weights, not two copies of the start
