"""The commands behave as their help and the README say.

- ``python -m esa_tutorial`` lists every command of the package (each a module with
  a ``__main__``), and nothing that is not one.
- ``bench --help`` gives the measured duration of ``--quick`` and names no internal
  tracker ("issue 15").
- ``experiments`` writes a run into a fresh folder outside the package unless told
  otherwise, and its help shows examples and what each suite is.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import esa_tutorial
from esa_tutorial import __main__ as overview_cli
from esa_tutorial.bench import __main__ as bench_cli
from esa_tutorial.experiments import PRETRAINED
from esa_tutorial.experiments import __main__ as experiments_cli

PACKAGE = Path(esa_tutorial.__file__).parent


def test_python_m_esa_tutorial_lists_every_command():
    run = subprocess.run([sys.executable, "-m", "esa_tutorial"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    commands = {f"esa_tutorial.{p.parent.name}" for p in PACKAGE.glob("*/__main__.py")}
    listed = set(re.findall(r"python -m (esa_tutorial\.\w+)", run.stdout))
    assert listed == commands, f"listed {sorted(listed)}, the package has {sorted(commands)}"
    assert "from esa_tutorial import" in run.stdout and "ESA" in run.stdout


def test_python_m_esa_tutorial_refuses_unknown_arguments(capsys):
    with pytest.raises(SystemExit) as exit_:
        overview_cli.main(["--bogus"])
    assert exit_.value.code == 2 and "--bogus" in capsys.readouterr().err


def test_bench_help_gives_the_measured_quick_duration_and_no_tracker():
    text = " ".join(bench_cli.build_parser().format_help().split())
    quick = text[text.index("--quick batch"):]
    assert re.search(r"Measured .*?\d+ s when quiet \(load average [\d.]+\)", quick), quick[:200]
    assert not re.search(r"\bissue \d+", text, re.I), "help names an internal tracker"


def test_experiments_help_shows_examples_and_the_suites():
    text = experiments_cli.build_parser().format_help()
    for suite in ("context", "ablation", "manifest"):
        assert f"python -m esa_tutorial.experiments {suite}" in text
        assert re.search(rf"^    {suite}\s+\S", text, re.M), f"no description of {suite}"
    assert "experiment_runs/<suite>-<date>-<time>" in text


def test_experiments_default_out_is_a_fresh_folder_outside_the_package(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first = experiments_cli.fresh_out("context")
    first.mkdir(parents=True)
    second = experiments_cli.fresh_out("context")
    assert second != first and not second.exists() and second.parent == first.parent
    # A run without --out (stopped at an unknown variant, before training) made its folder here.
    assert experiments_cli.main(["context", "--variants", "nonexistent"]) == 2
    made = [p for p in (tmp_path / "experiment_runs").iterdir() if p.name != first.name]
    assert len(made) == 1 and made[0].name.startswith("context-")
    assert PRETRAINED.resolve() not in made[0].resolve().parents
    assert f"writing to {made[0].relative_to(tmp_path)}" in capsys.readouterr().out


def test_experiments_manifest_needs_an_explicit_folder(capsys):
    with pytest.raises(SystemExit) as exit_:
        experiments_cli.main(["manifest"])
    assert exit_.value.code == 2 and "manifest needs --out FOLDER" in capsys.readouterr().err
