"""Author and run the book's notebooks.

    python tools/notebooks.py execute notebooks/01_self_attention_cost.ipynb [...]
    python tools/notebooks.py header 01_self_attention_cost "Title"   # print the two header cells

Every notebook starts with the same two cells: a title with an "Open in
Colab" badge, and a guarded install cell that does nothing outside Colab.
``header_cells`` makes them from the repository URL in ``_config.yml`` so
that the badge, the install and the book's launch buttons agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
import yaml
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
RELEASE = "v0.1.0"  # the tag Colab installs the package from


def repository_url() -> str:
    """The repository URL set once in ``_config.yml``."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    try:
        return config["repository"]["url"].rstrip("/")
    except (KeyError, TypeError, AttributeError):
        raise RuntimeError("_config.yml has no repository.url") from None


def colab_url(notebook_stem: str, subdir: str = "notebooks") -> str:
    """Colab address of a notebook in the repository (the .ipynb, never a MyST source)."""
    repo = repository_url().removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{repo}/blob/main/{subdir}/{notebook_stem}.ipynb"


def header_cells(notebook_stem: str, title: str, subdir: str = "notebooks") -> list:
    """The title-and-badge cell and the guarded install cell."""
    badge = (
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"({colab_url(notebook_stem, subdir)})"
    )
    install = (
        "# Colab only: install this book's package at a pinned release, keeping Colab's own torch.\n"
        "# Anywhere else this cell does nothing.\n"
        "import sys\n\n"
        'IN_COLAB = "google.colab" in sys.modules\n'
        "if IN_COLAB:\n"
        f'    %pip install -q "esa-tutorial @ git+{repository_url()}@{RELEASE}"'
    )
    return [
        nbformat.v4.new_markdown_cell(f"# {title}\n\n{badge}"),
        nbformat.v4.new_code_cell(install),
    ]


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
    hd = sub.add_parser("header", help="print the two header cells as JSON")
    hd.add_argument("stem")
    hd.add_argument("title")
    args = parser.parse_args(argv)
    if args.cmd == "execute":
        for p in args.paths:
            print(f"{p}: {execute(p):.1f} s", flush=True)
    else:
        nbformat.write(nbformat.v4.new_notebook(cells=header_cells(args.stem, args.title)), sys.stdout)


if __name__ == "__main__":
    main()
