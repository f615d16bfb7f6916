"""GPU paths as a Colab or lab GPU user takes them (``make test-gpu``; skipped without CUDA).

- One LDNet training step under ``torch.autocast`` on CUDA (float16 with a
  gradient scaler, bfloat16 without), with the training library's loss.
- A short run of the training library on CUDA (with ``amp`` where the
  training config has it).
- A chapter executed top to bottom on CUDA through the same tool that stores
  the notebooks' outputs.

These have not been run on the machine that wrote them (it has no GPU).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from esa_tutorial.data import SyntheticPolyps
from esa_tutorial.ldnet import LDNet
from esa_tutorial.train import TrainConfig, deep_supervision_loss, quick_config, run_experiment

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _batch(n: int = 4, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    data = SyntheticPolyps(n, size=size, seed=0)
    images, masks = zip(*(data[i] for i in range(n)))
    return torch.stack(images).cuda(), torch.stack(masks).cuda()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_one_ldnet_training_step_under_autocast(dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    torch.manual_seed(0)
    model = LDNet(width=16).cuda().train()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    images, masks = _batch()
    with torch.autocast("cuda", dtype=dtype):
        outputs = model(images)
        loss = deep_supervision_loss(outputs, masks)
    assert [o.shape[-1] for o in outputs] == [64, 32, 16, 8, 4]
    scaler.scale(loss).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(g.dtype == torch.float32 for g in grads), "parameters stay float32"
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(loss) and loss.item() > 0
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert changed == len(before), f"{len(before) - changed} parameters did not move"


def test_a_short_training_run_on_cuda():
    amp = {"amp": True} if "amp" in {f.name for f in dataclasses.fields(TrainConfig)} else {}
    config = quick_config(device="cuda", n_train=32, n_val=16, epochs=2, batch_size=8,
                          progress=False, **amp)
    result = run_experiment(config)
    losses = result.history["step_loss"]
    assert len(losses) == 2 * 4 and all(loss == loss for loss in losses)  # no NaN
    assert result.cuda_peak_mb is not None and result.cuda_peak_mb > 0
    assert next(result.model.parameters()).device.type == "cuda"


def test_chapter_7_runs_on_cuda(tmp_path):
    """The chapter whose comparisons TF32 could break (Ampere and newer) runs to the end."""
    source = ROOT / "notebooks" / "09_making_esa_fast.ipynb"
    copy = tmp_path / source.name
    shutil.copy(source, copy)
    nb = nbformat.read(copy, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(source.parent)}}).execute()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.outputs if o.output_type == "stream")
    assert "device: cuda" in printed
