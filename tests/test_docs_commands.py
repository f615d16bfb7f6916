"""The set-up the README and the book's intro promise matches the Makefile and pyproject.

- Every ``make <target>`` they show exists, and so does ``TORCH_INDEX``.
- The Python version they name is the one pyproject and the Makefile require.
- ``make`` explains a too-old Python and a machine without apt-get instead of
  failing with an unrelated error.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = {name: (ROOT / name).read_text() for name in ("README.md", "book/intro.md")}
MAKEFILE = (ROOT / "Makefile").read_text()
MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="needs make")


def _targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):(?!=)", MAKEFILE, re.M))


@pytest.mark.parametrize("doc", DOCS)
def test_every_make_command_shown_exists(doc):
    shown = set(re.findall(r"\bmake ((?:[a-z][\w-]*\s?)+)", DOCS[doc]))
    targets = {t for group in shown for t in group.split()}
    assert targets, f"{doc} shows no make command"
    assert targets <= _targets(), f"{doc} shows make targets the Makefile lacks: {targets - _targets()}"
    for var in re.findall(r"\bmake [\w-]+ ([A-Z_]+)=", DOCS[doc]):
        assert re.search(rf"^{var}\s*\?=", MAKEFILE, re.M), f"{doc}: no Makefile variable {var}"


def test_the_python_version_named_is_the_one_required():
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minor = int(re.fullmatch(r">=3\.(\d+)", required).group(1))
    assert f"sys.version_info < (3, {minor})" in MAKEFILE
    for doc, text in DOCS.items():
        assert f"Python 3.{minor} or newer" in " ".join(text.split()), doc
        older = [v for v in re.findall(r"Python 3\.(\d+)", text) if int(v) < minor]
        assert not older, f"{doc} names Python 3.{older} which is not supported"
    assert "macOS" in DOCS["book/intro.md"] and "not tested" in DOCS["book/intro.md"]


@needs_make
def test_make_says_which_python_it_needs(tmp_path):
    old = tmp_path / "python"
    old.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "Python 3.10.13" && exit 0\nexit 1\n')
    old.chmod(0o755)
    run = subprocess.run([MAKE, "-s", "python-check", f"PYTHON={old}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "needs Python 3.11 or newer" in run.stdout and "found: Python 3.10.13" in run.stdout
    ok = subprocess.run([MAKE, "-s", "python-check", f"PYTHON={sys.executable}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr


@needs_make
def test_make_test_names_what_to_install_without_apt_get(tmp_path):
    # A PATH with neither chromium, chromedriver nor apt-get (the shell is /bin/sh by path).
    empty = tmp_path / "bin"
    empty.mkdir()
    run = subprocess.run([MAKE, "-s", "browser-deps"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={"PATH": str(empty), "HOME": str(tmp_path)})
    assert run.returncode != 0
    assert "has no apt-get" in run.stdout
    assert "'chromium' and 'chromedriver'" in run.stdout
    assert "make test-unit test-notebooks test-book test-lab" in run.stdout


def _first_bash_block(text: str, after: str) -> str:
    return re.search(r"```bash\n(.*?)```", text[text.index(after):], re.S).group(1)


@pytest.mark.parametrize("doc,after", [("README.md", "## Set up"), ("book/intro.md", "**On your machine**")])
def test_cpu_only_readers_meet_torch_index_in_the_first_set_up_block(doc, after):
    """TORCH_INDEX counts only when .venv is first made, so it must come before any make."""
    block = _first_bash_block(DOCS[doc], after)
    first_make = next(line for line in block.splitlines() if line.lstrip().startswith("make "))
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cpu" in first_make, (doc, first_make)


def _pins(path: Path) -> dict[str, str]:
    lines = (ROOT / path).read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))


def test_every_pin_installs_on_the_oldest_python_make_accepts():
    """requirements.txt must install on the Python the Makefile lets through (Debian 12's
    3.11.2 for 3.11): each pinned release's Requires-Python must admit it."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.specifiers import SpecifierSet

    oldest = ".".join(re.search(r"sys\.version_info < \((\d+), (\d+)(?:, (\d+))?\)", MAKEFILE)
                      .group(1, 2)) + ".0"
    refused = {}
    for name, pinned in _pins(Path("requirements.txt")).items():
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            pytest.fail(f"{name}=={pinned} is pinned but not installed: run make venv")
        if dist.version.split("+")[0] != pinned.split("+")[0]:
            pytest.fail(f"{name}: {dist.version} installed, {pinned} pinned: run make venv")
        requires = dist.metadata.get("Requires-Python")
        if requires and oldest not in SpecifierSet(requires):
            refused[f"{name}=={pinned}"] = requires
    assert not refused, f"pins that do not install on Python {oldest}: {refused}"


@needs_make
def test_make_lab_adds_allow_root_only_for_root():
    """Jupyter refuses to run as root without --allow-root; as anyone else it is not needed."""
    run = subprocess.run([MAKE, "-n", "--no-print-directory", "lab"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    lab = [line for line in run.stdout.splitlines() if "jupyter-lab --notebook-dir=notebooks" in line]
    assert lab, run.stdout + run.stderr
    assert ("--allow-root" in lab[-1]) == (os.geteuid() == 0), lab[-1]
    chosen = subprocess.run([MAKE, "-n", "--no-print-directory", "lab", "LAB_ARGS=--no-browser"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert chosen.stdout.rstrip().splitlines()[-1].endswith("--notebook-dir=notebooks --no-browser")
