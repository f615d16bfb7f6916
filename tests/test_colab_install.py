"""Play Colab: a fresh environment without our package runs a notebook's first cells.

What is real: a new virtual environment in which ``import esa_tutorial`` fails,
an IPython kernel running in it, the notebook's own install cell (only its
GitHub URL is pointed at a local git clone of this working tree, on branch
``main`` as the badge opens it), pip, git and the notebook's next cells. What
is faked: ``google.colab`` (an IPython start-up file puts an empty module in
``sys.modules``, as Colab's own kernel has it imported), and the "preinstalled"
packages, which are this project's ``.venv`` packages seen through a ``.pth``
file (Colab preinstalls torch, numpy and matplotlib; here they stand in for
them). pip runs offline (no index, no build isolation: the build uses the
setuptools already installed), so the test needs no network and takes seconds.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
GITHUB_SOURCE = f"git+{CONFIG['url'].rstrip('/')}@{CONFIG.get('branch', 'main')}"
NOTEBOOK = ROOT / "notebooks" / "02_self_attention_cost.ipynb"
KERNEL = "fake-colab"
STEP_SECONDS = 240  # a bound on every subprocess and cell; none needs a tenth of it

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(),
    reason="needs git and a git checkout of the repository")


def _git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True, timeout=STEP_SECONDS).stdout


def _clone_of_working_tree(dest: Path) -> Path:
    """A git repository whose ``main`` holds this working tree as it is now (uncommitted too)."""
    files = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    dest.mkdir()
    for name in filter(None, files.split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    _git("init", "-q", "-b", "main", cwd=dest)
    _git("add", "-A", cwd=dest)
    _git("commit", "-q", "-m", "working tree", cwd=dest)
    return dest


def _preinstalled(dest: Path) -> Path:
    """This environment's packages, minus ours, as links in one folder."""
    site = Path(sysconfig.get_paths()["purelib"])
    dest.mkdir()
    for entry in site.iterdir():
        name = entry.name.lower()
        if "esa_tutorial" in name or "esa-tutorial" in name or name.endswith(".pth"):
            continue
        (dest / entry.name).symlink_to(entry)
    return dest


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """A fresh environment and a kernel spec for it; yields (workdir, env prefix, clone)."""
    setuptools = importlib.metadata.version("setuptools")
    assert int(setuptools.split(".")[0]) >= 77, (
        f"the offline build needs setuptools>=77 here (pyproject's build requirement; "
        f"requirements.txt pins it), found {setuptools}")
    tmp = tmp_path_factory.mktemp("colab")
    clone = _clone_of_working_tree(tmp / "clone")
    env = tmp / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True,
                   timeout=STEP_SECONDS)
    python = env / "bin" / "python"
    env_site = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=STEP_SECONDS).stdout.strip())
    (env_site / "preinstalled.pth").write_text(f"{_preinstalled(tmp / 'preinstalled')}\n")
    # Nothing may lead the fresh environment to this checkout's package.
    mp = pytest.MonkeyPatch()
    try:
        yield from _prepared(tmp, env, python, clone, mp)
    finally:
        mp.undo()


def _prepared(tmp: Path, env: Path, python: Path, clone: Path, mp: pytest.MonkeyPatch):
    mp.delenv("PYTHONPATH", raising=False)
    missing = subprocess.run([str(python), "-c", "import esa_tutorial"], capture_output=True,
                             text=True, timeout=STEP_SECONDS, cwd=tmp)
    assert "No module named 'esa_tutorial'" in missing.stderr, "the fresh environment has it"

    ipython = tmp / "ipython"
    startup = ipython / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-google-colab.py").write_text(
        "import sys, types\n"
        "sys.modules['google.colab'] = types.ModuleType('google.colab')\n")
    spec = tmp / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        '{"argv": ["%s", "-m", "ipykernel_launcher", "-f", "{connection_file}"],'
        ' "display_name": "fake Colab", "language": "python"}' % python)

    mp.setenv("JUPYTER_PATH", str(tmp / "jupyter"))
    mp.setenv("IPYTHONDIR", str(ipython))
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        mp.delenv(key)
    mp.setenv("PIP_CONFIG_FILE", os.devnull)  # no machine pip config: no find-links, no index
    mp.setenv("PIP_NO_INDEX", "1")
    mp.setenv("PIP_NO_BUILD_ISOLATION", "0")  # pip reads this "0" as "--no-build-isolation"
    mp.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    mp.setenv("MPLBACKEND", "Agg")
    work = tmp / "content"  # Colab's working folder
    work.mkdir()
    yield work, env, clone


def _first_cells(source: str, probe: str) -> nbformat.NotebookNode:
    """The notebook's header, its cells up to the first import of our package, and ``probe``."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    install = nb.cells[1]
    assert install.source.count(GITHUB_SOURCE) == 1, "the install cell's source changed"
    install.source = install.source.replace(GITHUB_SOURCE, source)
    last = next(i for i, c in enumerate(nb.cells[2:], 2)
                if c.cell_type == "code" and "esa_tutorial" in c.source)
    nb.cells = nb.cells[:last + 1] + [nbformat.v4.new_code_cell(probe)]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def _run(nb: nbformat.NotebookNode, work: Path) -> nbformat.NotebookNode:
    NotebookClient(nb, timeout=STEP_SECONDS, startup_timeout=STEP_SECONDS, kernel_name=KERNEL,
                   resources={"metadata": {"path": str(work)}}).execute()
    return nb


def _stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_install_cell_installs_the_package_and_keeps_the_preinstalled_torch(colab):
    work, env, clone = colab
    probe = ("import esa_tutorial, torch\n"
             "print(esa_tutorial.__file__)\n"
             "print(torch.__file__)\n"
             "print(type(esa_tutorial.ESA(dim=64)).__name__)")
    nb = _run(_first_cells(f"git+file://localhost{clone}@main", probe), work)
    assert _stdout(nb.cells[1]) == f"installed esa-tutorial from git+file://localhost{clone}@main\n"
    package, torch_file, esa = _stdout(nb.cells[-1]).split()
    # Installed from the clone into the fresh environment, not found in the working tree.
    assert Path(package).resolve().is_relative_to(env.resolve()), package
    # The torch that was already there is the one in use; pip installed no other.
    assert "preinstalled" in Path(torch_file).parts, torch_file
    assert not list(env.glob("lib/python*/site-packages/torch")), "pip installed a torch"
    assert esa == "ESA"
    # The chapter's own cells after the install ran without an error.
    assert all(o.output_type != "error" for c in nb.cells for o in c.get("outputs", []))


def test_a_failed_install_stops_at_the_install_cell_with_pips_error(colab, tmp_path):
    work, _, _ = colab
    nowhere = tmp_path / "no-such-repository"
    nb = _first_cells(f"git+file://localhost{nowhere}@main", "print('not reached')")
    with pytest.raises(CellExecutionError) as failed:
        _run(nb, work)
    assert failed.value.ename == "RuntimeError"
    message = failed.value.evalue
    assert message.startswith(f"pip could not install esa-tutorial from git+file://localhost{nowhere}@main:")
    assert "ERROR" in message, "pip's own error is part of the message"
    # The error is the install cell's: nothing after it ran.
    assert [c.execution_count for c in nb.cells if c.cell_type == "code"][1:] == [None] * (
        sum(c.cell_type == "code" for c in nb.cells) - 1)


WHEEL_CHECK = """
import importlib.metadata as md, re, sys
from pathlib import Path
import esa_tutorial
from esa_tutorial.experiments import PRETRAINED, verified_path
from esa_tutorial.bench import results

missing = []
for req in md.requires("esa-tutorial") or []:
    if "extra ==" in req:
        continue
    name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
    try:
        md.version(name)
    except md.PackageNotFoundError:
        missing.append(name)
assert not missing, f"declared but not installed: {missing}"
manifest = (PRETRAINED / "manifest.json").read_text()
import json
for name in json.loads(manifest):
    verified_path(name, PRETRAINED)  # shipped and intact (SHA-256)
assert results.available(), "no shipped benchmark results"
print(Path(esa_tutorial.__file__).parent)
"""


def test_the_installed_package_has_its_dependencies_data_and_command_lines(colab):
    """A plain (non-editable) install: declared dependencies, package data, every command line."""
    work, env, clone = colab
    python = str(env / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", str(clone)], check=True, cwd=work,
                   capture_output=True, text=True, timeout=STEP_SECONDS)
    done = subprocess.run([python, "-c", WHEEL_CHECK], cwd=work, capture_output=True, text=True,
                          timeout=STEP_SECONDS)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve().is_relative_to(env.resolve()), done.stdout
    for command in ("bench", "train", "experiments", "course"):
        ran = subprocess.run([python, "-m", f"esa_tutorial.{command}", "--help"], cwd=work,
                             capture_output=True, text=True, timeout=STEP_SECONDS)
        assert ran.returncode == 0 and "usage:" in ran.stdout, (command, ran.stderr)
