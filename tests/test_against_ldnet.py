"""The side-by-side benchmark against LDNet's own network, run on a generated stand-in of a clone.

LDNet's code has no licence, so neither the package nor its tests hold it. The
stand-in written here has a clone's layout and its two obstacles: a
``models/__init__.py`` that cannot be imported (LDNet's imports torchvision)
and an encoder factory that fails when asked for its weights file
(``pretrained=True`` reads a path of the authors' machine). Its ``LDNet``
wraps the package's network in LDNet's key layout, optionally off by a known
amount, so the measured difference can be checked against a value we chose.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from esa_tutorial.bench.__main__ import main
from esa_tutorial.bench.against_ldnet import LDNET_FILES, forward_side_by_side, load_ldnet_network

pytestmark = pytest.mark.usefixtures("one_thread")

INIT = 'raise ImportError("No module named torchvision (the clone\'s __init__.py must not run)")\n'
MODULES = "MARKER = 'modules imported as models.modules'\n"
RES2NET = '''
from pathlib import Path

from torch import nn


def res2net50_v1b_26w_4s(pretrained=False, **kwargs):
    with open(Path(__file__).parent / "calls.txt", "a") as calls:
        calls.write(f"pretrained={pretrained}\\n")
    if pretrained:
        raise FileNotFoundError("/data2/zhangruifei/backbone/res2net50_v1b_26w_4s-3cf99910.pth")
    return nn.Identity()
'''
LDNET = '''
import torch
from torch import nn

from models.modules import MARKER
from models.res2net import res2net50_v1b_26w_4s
from esa_tutorial import LDNet as PackageLDNet
from esa_tutorial.nn.ldnet_weights import ldnet_state_dict

OFFSET = {offset}


class LDNet(nn.Module):
    def __init__(self):
        super().__init__()
        res2net50_v1b_26w_4s(pretrained=True)  # as LDNet's code asks for its encoder
        self.inner = PackageLDNet.full()

    def state_dict(self, *args, **kwargs):
        return ldnet_state_dict(self.inner)

    def forward(self, x):
        probs = [torch.sigmoid(o) for o in self.inner(x)]
        return (probs[0] * (1 - OFFSET),) + tuple(probs[1:])
'''


def write_clone(root: Path, offset: float = 0.0) -> Path:
    """A folder in the layout of a clone of LDNet (see the module docstring)."""
    models = root / "models"
    models.mkdir(parents=True)
    for name, text in (("__init__.py", INIT), ("modules.py", MODULES), ("res2net.py", RES2NET),
                       ("LDNet.py", LDNET.format(offset=offset))):
        (models / name).write_text(text)
    return root


def test_loader_skips_the_clones_init_and_its_weights_file(tmp_path, monkeypatch):
    own = types.ModuleType("models")  # a reader's own package of that common name survives
    monkeypatch.setitem(sys.modules, "models", own)
    network = load_ldnet_network(write_clone(tmp_path / "clone"))
    assert type(network).__name__ == "LDNet" and type(network).__module__ == "models.LDNet"
    assert sys.modules["models"] is own and not [k for k in sys.modules if k.startswith("models.")]
    # asked for with pretrained=True, as LDNet's code does; built without the authors' file
    assert (tmp_path / "clone" / "models" / "calls.txt").read_text() == "pretrained=False\n"
    assert network.forward.__globals__["MARKER"] == "modules imported as models.modules"


def test_loader_names_the_files_a_clone_lacks(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "LDNet.py").write_text("")
    with pytest.raises(FileNotFoundError, match=r"is not a clone of github.com/ReaFly/LDNet: it has no "
                                                r"models/modules.py, models/res2net.py"):
        load_ldnet_network(tmp_path)
    assert LDNET_FILES == ("models/LDNet.py", "models/modules.py", "models/res2net.py")


@pytest.mark.slow
@pytest.mark.parametrize("offset", [0.0, 0.25])
def test_side_by_side_measures_the_difference_of_the_outputs(tmp_path, offset):
    """Same weights through LDNet's state-dict layout: the difference is the one planted, and nothing else."""
    side = forward_side_by_side(write_clone(tmp_path, offset), size=32, rounds=2, min_run_time=0.01)
    assert side.shape == (1, 3, 32, 32) and len(side.rounds) == 2
    assert all(side.seconds[k] == min(r[k] for r in side.rounds) > 0 for k in ("ldnet", "package"))
    torch.manual_seed(0)  # the weights forward_side_by_side drew
    net = load_ldnet_network(write_clone(tmp_path / "again", offset)).eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # and its input
    with torch.no_grad():  # the planted difference: OFFSET times the largest finest-scale probability
        largest = float(torch.sigmoid(net.inner(x)[0]).max())
    assert side.max_abs_diff == pytest.approx(offset * largest, rel=1e-5, abs=1e-6)
    assert (side.max_abs_diff > 0.1) == bool(offset)


@pytest.mark.slow
def test_command_line_writes_the_side_by_side_and_checks_the_clone(tmp_path, capsys):
    out = tmp_path / "out"
    main(["--against-ldnet", str(write_clone(tmp_path / "clone")), "--device", "cpu", "--ldnet-size", "32",
          "--repeats", "1", "--min-run-time", "0.01", "--out", str(out)])
    run = json.loads((out / "against-ldnet.json").read_text())
    assert run["shape"] == [1, 3, 32, 32] and run["device"] == "cpu" and run["max_abs_diff"] < 1e-6
    assert "forward at 1x3x32x32 on cpu (1 threads): LDNet's code" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--against-ldnet", str(tmp_path), "--device", "cpu", "--out", str(out)])
    assert "is not a clone of github.com/ReaFly/LDNet: it has no models/LDNet.py" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--against-ldnet", str(tmp_path / "clone"), "--ldnet-size", "50", "--out", str(out)])
    assert "--ldnet-size must be a multiple of 32, got 50" in capsys.readouterr().err
