"""GPU paths as a Colab or lab GPU user takes them (``make test-gpu``; skipped without CUDA).

- One LDNet training step under ``torch.autocast`` on CUDA (float16 with a
  gradient scaler, bfloat16 without), with the training library's loss.
- A short run of the training library on CUDA, in float32 and with each ``amp``.
- A chapter executed top to bottom on CUDA through the same tool that stores
  the notebooks' outputs.

Last run: passed on an NVIDIA H200, torch 2.11.0+cu130 (``tools/gpu_numbers.sh``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from esa_tutorial.data import SyntheticPolyps
from esa_tutorial.nn.ldnet import LDNet
from esa_tutorial.train import deep_supervision_loss, fit, quick_config, run_experiment

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
def test_ldnet_training_steps_under_autocast(dtype):
    """A few steps through the package's loop: fp16 with GradScaler (which may skip its first,
    overflowing steps: that is how it finds its scale), bf16 without."""
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    torch.manual_seed(0)
    model = LDNet(width=16).cuda().train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    images, masks = _batch()
    with torch.autocast("cuda", dtype=dtype):
        outputs = model(images)
    assert [o.shape[-1] for o in outputs] == [64, 32, 16, 8, 4]
    amp = "fp16" if dtype == torch.float16 else "bf16"
    log = fit(model, [(images, masks)] * 8, deep_supervision_loss, optimizer, device="cuda", amp=amp,
              scaler=scaler)
    assert log.skipped < 8 and all(v == v for v in log.loss[log.skipped:])  # finite once the scale is found
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters()), \
        "parameters and their gradients stay float32"
    # every parameter that receives a gradient moved (LCA's query weights get none: chapter 4)
    still = [n for n, p in model.named_parameters()
             if p.grad is not None and p.grad.abs().sum() > 0 and torch.equal(before[n], p)]
    assert not still, f"parameters with a gradient did not move: {still[:5]}"


@pytest.mark.parametrize("amp", [None, "fp16", "bf16"])
def test_a_short_training_run_on_cuda(amp):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    config = quick_config(device="cuda", n_train=32, n_val=16, epochs=2, batch_size=8, progress=False, amp=amp)
    result = run_experiment(config)
    losses = result.history["step_loss"]
    assert len(losses) == 2 * 4
    assert result.cuda_peak_mb is not None and result.cuda_peak_mb > 0
    assert next(result.model.parameters()).device.type == "cuda"
    assert all(v == v for v in result.history["val_dice"])  # validation scores are numbers on CUDA too


def test_chapter_9_runs_on_cuda(tmp_path):
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
