"""The set-up the README and the book's intro promise matches the Makefile and pyproject.

- Every ``make <target>`` they show exists, and so does ``TORCH_INDEX``.
- The Python version they name is the one pyproject and the Makefile require.
- ``make`` explains a too-old Python and a machine without apt-get instead of
  failing with an unrelated error.
"""

from __future__ import annotations

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
