"""Every notebook is a page of the book and a Colab notebook: check both without running it.

- It starts with the two cells ``tools/notebooks.header_cells`` makes: a title with
  an "Open in Colab" badge pointing at this notebook (an exercise: its student
  version) on the repository's branch, and an install cell that, on Colab only,
  installs our package from that same branch, leaves Colab's torch alone and
  stops with pip's error if the install fails. Outside Colab it does nothing.
- Notebooks that train or time ask Colab for a GPU runtime in their metadata.
- Student versions (notebooks/exercises/student/, made by the release command) keep
  no badge or one that opens themselves, and the same install cell.
- A chapter (``notebooks/<two digits>_*.ipynb``) opens with "What you will learn" and closes
  with "Summary" and "Exercises".
- Chapters refer to each other with {doc}/labels, never with a raw URL of our site.
- Every {cite} key is in ``book/references.bib``; the bibliography page lists them.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import nbformat
import pytest
import yaml
from IPython.core.inputtransformer2 import TransformerManager

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# The notebooks authors edit (chapters and exercise sources) carry header_cells exactly;
# the student versions made from the exercises by the release command are checked apart.
SOURCES = CHAPTERS + sorted((ROOT / "notebooks" / "exercises").glob("*.ipynb"))
STUDENT = sorted((ROOT / "notebooks" / "exercises" / "student").glob("*.ipynb"))
BOOK_PAGES = sorted((ROOT / "book").glob("*.md"))

_spec = importlib.util.spec_from_file_location("book_notebook_tools", ROOT / "tools" / "notebooks.py")
nbtools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nbtools)

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"].rstrip("/")
BRANCH = CONFIG["repository"].get("branch", "main")
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


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_notebook_starts_with_the_badge_and_the_guarded_install(path):
    cells = _read(path).cells
    assert len(cells) >= 2 and cells[0].cell_type == "markdown" and cells[1].cell_type == "code"
    title = re.match(r"# (.+)", cells[0].source)
    assert title, f"{_rel(path)}: the first cell must start with '# <title>'"
    subdir = _rel(path.parent)
    expected = nbtools.header_cells(path.stem, title.group(1), subdir=subdir)
    assert cells[0].source == expected[0].source, f"{_rel(path)}: run tools/notebooks.py headers"
    assert cells[1].source == expected[1].source, f"{_rel(path)}: run tools/notebooks.py headers"
    # Executed outside Colab, the install cell prints nothing; on the site it is collapsed.
    assert cells[1].outputs == []
    assert "hide-input" in cells[1].metadata.get("tags", []), (
        f"{_rel(path)}: the install cell needs the 'hide-input' tag (tools/notebooks.py headers)")
    # Independently of the tool: a chapter's badge opens this very notebook, an
    # exercise's badge its student version, from the branch in _config.yml.
    opened = _rel(path)
    if subdir == "notebooks/exercises":
        opened = f"notebooks/exercises/student/{path.name}"
    colab = f"https://colab.research.google.com/github/{SLUG}/blob/{BRANCH}/{opened}"
    assert f"]({colab})" in cells[0].source


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_notebooks_that_train_or_time_ask_colab_for_a_gpu(path):
    meta = _read(path).metadata
    if path.stem in nbtools.GPU_NOTEBOOKS:
        assert meta.get("accelerator") == "GPU", f"{_rel(path)}: no Colab GPU request"
        assert meta.get("colab", {}).get("gpuType") == "T4"
    else:
        assert "accelerator" not in meta and "gpuType" not in meta.get("colab", {})


@pytest.mark.parametrize("path", STUDENT, ids=_rel)
def test_a_student_versions_badge_and_install_cell_are_the_sources(path):
    """A student version keeps no badge, or one opening itself; an install cell, or none."""
    cells = _read(path).cells
    colab = f"https://colab.research.google.com/github/{SLUG}/blob/{BRANCH}/{_rel(path)}"
    badges = re.findall(r"\]\((https://colab\.research\.google\.com/github/[^)]*)\)", cells[0].source)
    assert badges in ([], [colab]), f"{_rel(path)}: the badge must open this student version"
    installs = [c for c in cells if c.cell_type == "code" and "google.colab" in c.source]
    expected = nbtools.header_cells(path.stem, "Any", "notebooks/exercises")[1].source
    assert all(c.source == expected for c in installs), f"{_rel(path)}: stale install cell"


def test_gpu_notebooks_exist():
    stems = {p.stem for p in SOURCES}
    assert nbtools.GPU_NOTEBOOKS <= stems, nbtools.GPU_NOTEBOOKS - stems


def test_install_cell_installs_the_branch_the_badge_opens():
    install = nbtools.header_cells("any", "Any")[1].source
    # The source is the repository at the branch of the badge; no tag to forget.
    assert f'source = "git+{REPO_URL}@{BRANCH}"' in install
    assert "/blob/" + BRANCH + "/" in nbtools.header_cells("any", "Any")[0].source
    assert "torch" not in install.split("keeping Colab's own torch")[1], (
        "the cell must not install torch: Colab's own is kept")
    assert "--upgrade" not in install and "-U" not in install.split()
    assert all(len(line) <= 88 for line in install.splitlines())


def test_pyproject_keeps_any_newer_torch():
    """No upper bound: on Colab pip then keeps the GPU torch that is already there."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_spec = next(d for d in deps if re.match(r"torch\b", d))
    assert "<" not in torch_spec and "==" not in torch_spec, torch_spec


class _Completed:
    def __init__(self, returncode: int, stderr: str = "") -> None:
        self.returncode, self.stderr, self.stdout = returncode, stderr, ""


def _run_install_cell(source: str, monkeypatch, returncode: int = 0, stderr: str = "") -> list:
    """Execute the cell as IPython would, recording the commands it would run."""
    calls: list = []

    def fake_run(args, **kwargs):
        calls.append(list(args))
        return _Completed(returncode, stderr)

    monkeypatch.setattr(subprocess, "run", fake_run)
    code = TransformerManager().transform_cell(source)
    exec(compile(code, "<install cell>", "exec"), {"get_ipython": lambda: None})
    return calls


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_rel)
def test_install_cell_does_nothing_outside_colab(path, monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert _run_install_cell(_read(path).cells[1].source, monkeypatch) == []


def test_install_cell_installs_on_colab(monkeypatch, capsys):
    """The converse, so that the test above cannot pass with a cell that never installs."""
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    source = nbtools.header_cells("any", "Any")[1].source
    assert _run_install_cell(source, monkeypatch) == [
        [sys.executable, "-m", "pip", "install", "-q", f"esa-tutorial @ git+{REPO_URL}@{BRANCH}"]]
    assert capsys.readouterr().out == f"installed esa-tutorial from git+{REPO_URL}@{BRANCH}\n"


def test_install_cell_stops_with_pips_error_when_the_install_fails(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    source = nbtools.header_cells("any", "Any")[1].source
    error = "ERROR: Could not find a version that satisfies the requirement"
    with pytest.raises(RuntimeError, match=rf"pip could not install esa-tutorial from "
                                           rf"git\+{re.escape(REPO_URL)}@{BRANCH}:\n{error}"):
        _run_install_cell(source, monkeypatch, returncode=1, stderr=error)


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


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_code_lines_fit_the_books_column(path):
    """The book's column shows about 88 characters; longer code lines scroll sideways."""
    too_long = [
        (index, line) for index, cell in enumerate(_read(path).cells) if cell.cell_type == "code"
        for line in cell.source.splitlines() if len(line) > 88
    ]
    assert not too_long, f"{_rel(path)}: code lines over 88 characters (cell, line): {too_long}"
