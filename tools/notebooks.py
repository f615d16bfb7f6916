"""Author and run the book's notebooks.

    python tools/notebooks.py execute notebooks/02_self_attention_cost.ipynb [...]
    python tools/notebooks.py headers notebooks/*.ipynb notebooks/exercises/*.ipynb
    python tools/notebooks.py header 02_self_attention_cost "Title"   # print the two header cells

Every notebook starts with the same two cells: a title with an "Open in
Colab" badge, and a guarded install cell that does nothing outside Colab.
``header_cells`` makes them from the repository URL and branch in
``_config.yml`` so that the badge, the install and the book's launch buttons
agree: the cell installs the package from the very branch the badge opens.
``headers`` rewrites those two cells (and the Colab runtime metadata) of
existing notebooks in place, without running anything else.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import nbformat
import yaml
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]

# Notebooks that train a network or time the variants: on Colab they ask for a GPU
# runtime (Colab's free tier offers a T4). The others run in seconds on a CPU runtime.
GPU_NOTEBOOKS = frozenset({"06_ldnet_small", "07_ablation", "09_making_esa_fast",
                           "10_ldnet_on_real_polyps", "ex5_ldnet_experiment"})
COLAB_GPU_METADATA = {"accelerator": "GPU", "colab": {"gpuType": "T4", "provenance": []}}


def _repository() -> dict:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = config.get("repository") if isinstance(config, dict) else None
    if not isinstance(repo, dict) or not repo.get("url"):
        raise RuntimeError("_config.yml has no repository.url")
    return repo


def repository_url() -> str:
    """The repository URL set once in ``_config.yml``."""
    return str(_repository()["url"]).rstrip("/")


def repository_branch() -> str:
    """The branch the badges open and the install cell installs (``repository.branch``)."""
    return str(_repository().get("branch") or "main")


def install_source() -> str:
    """The pip source the install cell uses: the repository at the branch the badge opens."""
    return f"git+{repository_url()}@{repository_branch()}"


def badge_subdir(subdir: str) -> str:
    """Folder whose notebook the badge opens: exercises open their student version."""
    subdir = subdir.strip("/")
    if subdir == "notebooks/exercises":
        return "notebooks/exercises/student"
    return subdir


def colab_url(notebook_stem: str, subdir: str = "notebooks") -> str:
    """Colab address of a notebook in the repository (the .ipynb, never a MyST source)."""
    repo = repository_url().removeprefix("https://github.com/")
    return (f"https://colab.research.google.com/github/{repo}/blob/{repository_branch()}/"
            f"{subdir}/{notebook_stem}.ipynb")


INSTALL_CELL = '''\
# On Colab: install this book's package from the branch the badge opened,
# keeping Colab's own torch. Anywhere else this cell does nothing.
import subprocess
import sys

if "google.colab" in sys.modules:
    source = "{source}"
    pip = [sys.executable, "-m", "pip", "install", "-q", f"esa-tutorial @ {{source}}"]
    done = subprocess.run(pip, capture_output=True, text=True)
    if done.returncode != 0:  # stop here, not with a ModuleNotFoundError one cell later
        raise RuntimeError(f"pip could not install esa-tutorial from {{source}}:\\n"
                           + done.stderr[-3000:])
    print(f"installed esa-tutorial from {{source}}")'''


def header_cells(notebook_stem: str, title: str, subdir: str = "notebooks") -> list:
    """The title-and-badge cell and the guarded install cell of a notebook in ``subdir``."""
    badge = (
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"({colab_url(notebook_stem, badge_subdir(subdir))})"
    )
    return [
        nbformat.v4.new_markdown_cell(f"# {title}\n\n{badge}"),
        # Collapsed on the site ("hide-input", as the exercises' solutions are): a reader
        # of the book needs no install; Colab and Jupyter ignore the tag and run it first.
        nbformat.v4.new_code_cell(INSTALL_CELL.format(source=install_source()),
                                  metadata={"tags": ["hide-input"]}),
    ]


def colab_metadata(notebook_stem: str) -> dict:
    """Top-level notebook metadata Colab reads to pick the runtime ({} = its default CPU)."""
    return COLAB_GPU_METADATA if notebook_stem in GPU_NOTEBOOKS else {}


def write_headers(path: Path) -> None:
    """Rewrite cells 0-1 and the Colab metadata of ``path`` in place; run nothing."""
    path = Path(path).resolve()
    nb = nbformat.read(path, as_version=4)
    title = re.match(r"# (.+)", nb.cells[0].source) if nb.cells else None
    if not title or len(nb.cells) < 2 or nb.cells[1].cell_type != "code":
        raise ValueError(f"{path}: expected a '# <title>' markdown cell then a code cell")
    subdir = path.parent.relative_to(ROOT).as_posix()
    new = header_cells(path.stem, title.group(1), subdir)
    for old, cell in zip(nb.cells[:2], new):
        old.source = cell.source
        old.metadata = cell.metadata
    # What the cell prints outside Colab, where notebooks are executed: nothing.
    nb.cells[1].outputs = []
    nb.cells[1].execution_count = 1
    for key in COLAB_GPU_METADATA:
        nb.metadata.pop(key, None)
    nb.metadata.update(colab_metadata(path.stem))
    nbformat.write(nb, path)


def execute(path: Path, timeout: int = 600) -> float:
    """Run a notebook top to bottom in its own folder and store its outputs. Returns seconds."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    start = time.perf_counter()
    # coalesce_streams: a progress bar is one output, not one per update.
    NotebookClient(nb, timeout=timeout, kernel_name="python3", coalesce_streams=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("execute", help="execute notebooks in place")
    ex.add_argument("paths", nargs="+", type=Path)
    hs = sub.add_parser("headers", help="rewrite the two header cells and Colab metadata in place")
    hs.add_argument("paths", nargs="+", type=Path)
    hd = sub.add_parser("header", help="print the two header cells as JSON")
    hd.add_argument("stem")
    hd.add_argument("title")
    hd.add_argument("--subdir", default="notebooks")
    args = parser.parse_args(argv)
    if args.cmd == "execute":
        for p in args.paths:
            print(f"{p}: {execute(p):.1f} s", flush=True)
    elif args.cmd == "headers":
        for p in args.paths:
            write_headers(p)
            print(f"{p}: header cells written", flush=True)
    else:
        cells = header_cells(args.stem, args.title, args.subdir)
        nbformat.write(nbformat.v4.new_notebook(cells=cells), sys.stdout)


if __name__ == "__main__":
    main()
