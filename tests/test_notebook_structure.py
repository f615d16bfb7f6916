"""Every notebook is a page of the book and a Colab notebook: check both without running it.

- It starts with the two cells ``tools/notebooks.header_cells`` makes: a title with
  an "Open in Colab" badge pointing at this very notebook in the repository, and an
  install cell that, on Colab only, installs our package at a pinned release and
  leaves Colab's torch alone. Outside Colab that cell does nothing.
- A chapter (``notebooks/0*.ipynb``) opens with "What you will learn" and closes
  with "Summary" and "Exercises".
- Chapters refer to each other with {doc}/labels, never with a raw URL of our site.
- Every {cite} key is in ``book/references.bib``; the bibliography page lists them.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

import nbformat
import pytest
import yaml
from IPython.core.inputtransformer2 import TransformerManager

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
CHAPTERS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
BOOK_PAGES = sorted((ROOT / "book").glob("*.md"))

_spec = importlib.util.spec_from_file_location("book_notebook_tools", ROOT / "tools" / "notebooks.py")
nbtools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nbtools)

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"].rstrip("/")
SLUG = REPO_URL.removeprefix("https://github.com/")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$", re.M)
CITE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _markdown_sources() -> dict[str, str]:
    """Markdown of every notebook (all cells) and book page, by repository path."""
    sources = {_rel(p): p.read_text() for p in BOOK_PAGES}
    for path in NOTEBOOKS:
        cells = _read(path).cells
        sources[_rel(path)] = "\n\n".join(c.source for c in cells if c.cell_type == "markdown")
    return sources


def test_notebooks_exist_for_every_chapter_in_the_toc():
    toc = (ROOT / "_toc.yml").read_text()
    listed = re.findall(r"file:\s*(notebooks/\S+)", toc)
    assert listed, "_toc.yml lists no notebook"
    missing = [f for f in listed if not (ROOT / f"{f.removesuffix('.ipynb')}.ipynb").is_file()]
    assert not missing, f"chapters in _toc.yml without a notebook: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_rel)
def test_notebook_starts_with_the_badge_and_the_guarded_install(path):
    cells = _read(path).cells
    assert len(cells) >= 2 and cells[0].cell_type == "markdown" and cells[1].cell_type == "code"
    title = re.match(r"# (.+)", cells[0].source)
    assert title, f"{_rel(path)}: the first cell must start with '# <title>'"
    subdir = _rel(path.parent)
    if subdir == "notebooks/exercises":  # an exercise's badge opens its student version
        subdir += "/student"
    expected = nbtools.header_cells(path.stem, title.group(1), subdir=subdir)
    assert cells[0].source == expected[0].source
    assert cells[1].source == expected[1].source
    # Independently of the tool: the badge opens this very notebook (an exercise: its student version).
    colab = f"https://colab.research.google.com/github/{SLUG}/blob/main/{subdir}/{path.name}"
    assert f"]({colab})" in cells[0].source


def test_install_cell_pins_a_release_of_our_package_only():
    install = nbtools.header_cells("any", "Any")[1].source
    specs = re.findall(r"%pip install (.*)", install)
    assert specs == [f'-q "esa-tutorial @ git+{REPO_URL}@{nbtools.RELEASE}"']
    assert re.fullmatch(r"v\d+\.\d+\.\d+|[0-9a-f]{40}", nbtools.RELEASE), "pin a tag or a full commit"
    assert "torch" not in specs[0], "Colab's own torch must be kept"
    version = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    if nbtools.RELEASE.startswith("v"):
        assert nbtools.RELEASE == f"v{version}", "the pinned tag must be the package's version"


class _RecordingShell:
    """Stands in for ``get_ipython()``: records magics instead of running them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def run_line_magic(self, name: str, line: str) -> None:
        self.calls.append((name, line))

    def system(self, command: str) -> None:
        self.calls.append(("!", command))


def _run_install_cell(source: str) -> list[tuple[str, str]]:
    """Execute the cell as IPython would (magics become ``get_ipython()`` calls)."""
    shell = _RecordingShell()
    code = TransformerManager().transform_cell(source)
    exec(compile(code, "<install cell>", "exec"), {"get_ipython": lambda: shell})
    return shell.calls


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_rel)
def test_install_cell_does_nothing_outside_colab(path, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert _run_install_cell(_read(path).cells[1].source) == []


def test_install_cell_installs_on_colab(monkeypatch):
    """The converse, so that the test above cannot pass with a cell that never installs."""
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    source = nbtools.header_cells("any", "Any")[1].source
    assert _run_install_cell(source) == [
        ("pip", f'install -q "esa-tutorial @ git+{REPO_URL}@{nbtools.RELEASE}"')]


def _headings(cells: list) -> list[tuple[int, int, str]]:
    """(cell index, level, text) of every markdown heading."""
    return [(i, len(m.group(1)), m.group(2)) for i, c in enumerate(cells) if c.cell_type == "markdown"
            for m in HEADING.finditer(c.source)]


@pytest.mark.parametrize("path", CHAPTERS, ids=_rel)
def test_chapter_opens_with_what_you_will_learn(path):
    cells = _read(path).cells
    first = next(c for c in cells[2:] if c.cell_type == "markdown")
    # A heading ("## What you will learn") or a bold lead-in ("**What you will learn**").
    opening = re.compile(r"^(?:#{1,6}\s+|\*\*)what you will learn", re.I | re.M)
    assert opening.search(first.source), (
        f"{_rel(path)}: the first cell after the header must say 'What you will learn'")


@pytest.mark.parametrize("path", CHAPTERS, ids=_rel)
def test_chapter_closes_with_summary_and_exercises(path):
    cells = _read(path).cells
    sections = [(i, text) for i, level, text in _headings(cells) if level == 2]
    assert [t for _, t in sections[-2:]] == ["Summary", "Exercises"], (
        f"{_rel(path)}: the last sections must be '## Summary' then '## Exercises'")
    assert sections[-2][0] >= len(cells) - 3, f"{_rel(path)}: the summary must be near the end"


def test_chapters_refer_to_each_other_by_label_not_url():
    """A raw URL of our own pages breaks on a fork, a local build or a renamed file."""
    owner, name = SLUG.split("/")
    toc_docs = re.findall(r"file:\s*(\S+)", (ROOT / "_toc.yml").read_text())
    own_page = re.compile(
        rf"https?://{re.escape(owner)}\.github\.io/{re.escape(name)}\S*"
        rf"|https?://github\.com/{re.escape(SLUG)}/(?:blob|tree)/[^/\s]+/"
        rf"(?:{'|'.join(re.escape(d) for d in toc_docs)})\b\S*"
        r"|\]\((?!https?:)[^)\s]+\.html(?:#[^)]*)?\)", re.I)
    found = {path: own_page.findall(text) for path, text in _markdown_sources().items()}
    found = {path: hits for path, hits in found.items() if hits}
    assert not found, f"use {{doc}} or {{ref}} links instead of: {found}"


def _bib_keys() -> set[str]:
    return set(re.findall(r"^@\w+\s*\{\s*([^,\s]+)\s*,", (ROOT / "book" / "references.bib").read_text(), re.M))


def test_every_cited_key_is_in_the_bibliography_file():
    cited = {path: {k.strip() for group in CITE.findall(text) for k in group.split(",")}
             for path, text in _markdown_sources().items()}
    unknown = {path: sorted(keys - _bib_keys()) for path, keys in cited.items() if keys - _bib_keys()}
    assert not unknown, f"cited keys missing from book/references.bib: {unknown}"
    assert set().union(*cited.values()), "the book cites nothing"


def test_bibliography_page_lists_every_cited_work():
    page = (ROOT / "book" / "bibliography.md").read_text()
    directive = re.search(r"^```\{bibliography\}[^\n]*\n(.*?)^```", page, re.M | re.S)
    assert directive, "book/bibliography.md needs a {bibliography} directive"
    # No filter: sphinxcontrib-bibtex then lists every work cited anywhere in the book.
    assert ":filter:" not in directive.group(1)
    assert "book/bibliography" in (ROOT / "_toc.yml").read_text()
