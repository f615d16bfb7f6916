"""Device choice, shape checks and seeding shared by the notebooks, training and the benchmark."""

import pytest
import torch

from esa_tutorial import check_shape, seed_everything
from esa_tutorial.bench.__main__ import main as bench_main
from esa_tutorial.runtime import default_device, resolve_device


def test_resolve_device():
    assert resolve_device(None) == default_device()
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_clear_error_in_training_and_benchmark(tmp_path, capsys):
    with pytest.raises(ValueError, match="device 'cuda' requested but CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(SystemExit):
        bench_main(["--quick", "--device", "cuda", "--no-memory", "--out", str(tmp_path)])
    assert "CUDA is not available" in capsys.readouterr().err


def test_check_shape():
    t = torch.zeros(2, 3)
    assert check_shape(t, (2, 3)) is t
    with pytest.raises(ValueError, match=r"expected shape \(2, 4\), got \(2, 3\)"):
        check_shape(t, [2, 4])


def test_seed_everything_repeats_draws_of_every_generator_it_names():
    import os
    import random

    import numpy as np

    def draws() -> tuple:
        return random.random(), float(np.random.rand()), torch.randn(4)

    seed_everything(3)
    first = draws()
    draws()  # move every generator on, so that only seeding can bring them back
    seed_everything(3)
    again = draws()
    assert again[0] == first[0] and again[1] == first[1]
    torch.testing.assert_close(again[2], first[2], rtol=0, atol=0)
    seed_everything(4)
    other = draws()
    assert other[0] != first[0] and other[1] != first[1] and not torch.equal(other[2], first[2])
    assert os.environ["PYTHONHASHSEED"] == "4"
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_version_comes_from_the_package_metadata():
    import tomllib
    from importlib.metadata import version
    from pathlib import Path

    import esa_tutorial

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert esa_tutorial.__version__ == version("esa-tutorial") == pyproject["project"]["version"]
