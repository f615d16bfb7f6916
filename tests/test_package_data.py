"""The exercises ship inside the wheel: ``release`` works from a plain ``pip install``.

Builds a wheel from a copy of the repository's packaging files (so that no
``build/`` folder is left in the checkout), then runs ``release`` from the
unpacked wheel, away from any repository, and compares with the committed
student versions byte for byte.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # builds a wheel and starts Python

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = ROOT / "notebooks" / "exercises"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(ROOT / "esa_tutorial", tree / "esa_tutorial", ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "notebooks" / "exercises").mkdir(parents=True)
    for path in EXERCISES.glob("*.ipynb"):
        shutil.copy(path, tree / "notebooks" / "exercises" / path.name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out, tree],
                   check=True, timeout=600)
    (found,) = out.glob("esa_tutorial-*.whl")
    return found


def test_the_wheel_holds_the_exercises_byte_identical(wheel):
    with zipfile.ZipFile(wheel) as z:
        packaged = {Path(n).name: z.read(n) for n in z.namelist() if n.startswith("esa_tutorial/course/exercises/")}
    assert packaged and packaged == {p.name: p.read_bytes() for p in EXERCISES.glob("*.ipynb")}


def test_release_from_the_installed_wheel_writes_the_committed_student_versions(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    where = subprocess.run([sys.executable, "-c", "from esa_tutorial.course import source; print(source.default_source())"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=True)
    assert Path(where.stdout.strip()) == site / "esa_tutorial" / "course" / "exercises"  # not the repository's
    out = tmp_path / "released"
    done = subprocess.run([sys.executable, "-m", "esa_tutorial.course", "release", out],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    committed = {p.name: p.read_bytes() for p in (EXERCISES / "student").glob("*.ipynb")}
    assert committed and {p.name: p.read_bytes() for p in out.glob("*.ipynb")} == committed
