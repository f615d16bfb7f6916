"""Notebook surgery: the student version of an exercise notebook (``release``).

The exercise notebooks are the one source of truth: they hold the solutions
and are checked by nbval like every chapter. They follow nbgrader's
conventions, so a course can also hand them to nbgrader unchanged:

* a *solution cell* has ``metadata.nbgrader = {solution: true, grade_id: ...}``
  and its answer between ``### BEGIN SOLUTION`` and ``### END SOLUTION``
  (a written answer: the whole markdown cell);
* a *test cell* has ``{grade: true, solution: false, grade_id: ..., points: N}``;
  lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` are
  removed from the student version.

``release`` replaces every solution by ``raise NotImplementedError()`` (a
written answer by ``YOUR ANSWER HERE``), drops hidden tests and clears outputs.
The "Open in Colab" badge of the book's exercises already opens the student
version kept in ``notebooks/exercises/student``, which ``release`` writes.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

import nbformat

from .source import exercise_paths, packaged_source

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
ANSWER_STUB = "YOUR ANSWER HERE"
HIDDEN_NOTE = "# More (hidden) tests run here when your notebook is graded."
BOOK_ONLY_TAGS = {"hide-input", "remove-cell", "remove-input"}


class AuthoringError(ValueError):
    """An exercise notebook breaks the conventions above (unbalanced markers, missing metadata)."""


# --------------------------------------------------------------------------- cells


def nbgrader_meta(cell: nbformat.NotebookNode) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def is_solution(cell: nbformat.NotebookNode) -> bool:
    return bool(nbgrader_meta(cell).get("solution"))


def is_test(cell: nbformat.NotebookNode) -> bool:
    """An autograded test cell: graded code that is not itself an answer."""
    meta = nbgrader_meta(cell)
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


def grade_id(cell: nbformat.NotebookNode) -> str | None:
    return nbgrader_meta(cell).get("grade_id")


def _replace_region(source: str, begin: str, end: str, stub: Iterable[str] | None, where: str) -> str:
    """Replace every ``begin``..``end`` block (markers included) by ``stub`` at the marker's indent."""
    out: list[str] = []
    inside = False
    for line in source.splitlines():
        marker = line.strip()
        if marker == begin:
            if inside:
                raise AuthoringError(f"{where}: nested {begin!r}")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + s for s in (stub or ()))
        elif marker == end:
            if not inside:
                raise AuthoringError(f"{where}: {end!r} without {begin!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise AuthoringError(f"{where}: {begin!r} without {end!r}")
    return "\n".join(out)


def release_cell(cell: nbformat.NotebookNode, where: str) -> nbformat.NotebookNode:
    """The student version of one cell (a copy); raises :class:`AuthoringError` on broken markers."""
    cell = nbformat.from_dict(json.loads(json.dumps(cell)))
    has_markers = BEGIN_SOLUTION in cell.source or END_SOLUTION in cell.source
    if has_markers and not is_solution(cell):
        raise AuthoringError(f"{where}: has solution markers but no nbgrader solution metadata")
    if is_solution(cell) and not grade_id(cell):
        raise AuthoringError(f"{where}: a solution cell needs an nbgrader grade_id")
    if is_test(cell) and not grade_id(cell):
        raise AuthoringError(f"{where}: a test cell needs an nbgrader grade_id")
    if is_solution(cell):
        if cell.cell_type == "markdown":
            cell.source = ANSWER_STUB
        elif has_markers:
            cell.source = _replace_region(cell.source, BEGIN_SOLUTION, END_SOLUTION, CODE_STUB, where)
        else:
            raise AuthoringError(f"{where}: a code solution cell needs {BEGIN_SOLUTION!r} markers")
    if BEGIN_HIDDEN in cell.source:
        stripped = _replace_region(cell.source, BEGIN_HIDDEN, END_HIDDEN, None, where)
        cell.source = stripped if stripped.strip() else HIDDEN_NOTE
    tags = [t for t in cell.metadata.get("tags", []) if t not in BOOK_ONLY_TAGS]
    if tags:
        cell.metadata["tags"] = tags
    else:
        cell.metadata.pop("tags", None)
    if cell.cell_type == "code":
        cell.outputs, cell.execution_count = [], None
    return cell


COLAB_BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\(([^)]*)\)")
RELATIVE_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#|/)([^)\s]+)\)")


def retarget_badge(nb: nbformat.NotebookNode, name: str, colab_prefix: str | None) -> None:
    """Point the "Open in Colab" badge at ``colab_prefix/name``; without a prefix keep it.

    The book's exercise notebooks already point their badge at the book's own
    student version; a course that publishes its copies elsewhere passes that
    folder's Colab address.
    """
    if not colab_prefix:
        return
    url = f"{colab_prefix.rstrip('/')}/{name}"
    for cell in nb.cells:
        if cell.cell_type == "markdown" and COLAB_BADGE.search(cell.source):
            cell.source = COLAB_BADGE.sub(lambda m: m.group(0).replace(m.group(1), url), cell.source)


def relink(nb: nbformat.NotebookNode, prefix: str) -> None:
    """Prefix every relative markdown link with ``prefix`` (the way back from the student folder)."""
    if not prefix or prefix == ".":
        return
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = RELATIVE_LINK.sub(lambda m: f"]({prefix}/{m.group(1)})", cell.source)


def release_notebook(
    nb: nbformat.NotebookNode, name: str = "notebook", colab_prefix: str | None = None, link_prefix: str = ""
) -> nbformat.NotebookNode:
    """The student version of an exercise notebook: solutions stubbed, hidden tests gone, no outputs."""
    ids = [grade_id(c) for c in nb.cells if grade_id(c)]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise AuthoringError(f"{name}: duplicate grade_id {duplicates}")
    if not any(is_test(c) for c in nb.cells):
        raise AuthoringError(f"{name}: no test cell (nbgrader grade: true) to grade")
    out = nbformat.from_dict(json.loads(json.dumps(nb)))
    out.cells = [release_cell(c, f"{name} cell {i}") for i, c in enumerate(nb.cells)]
    retarget_badge(out, name, colab_prefix)
    relink(out, link_prefix)
    return out


def release(out: Path, source: Path, colab_prefix: str | None = None) -> list[Path]:
    """Write the student version of every exercise in ``source`` to ``out``. Returns the paths written.

    ``colab_prefix`` is where the course publishes the student versions, e.g.
    ``https://colab.research.google.com/github/<org>/<repo>/blob/main/assignments``.
    Relative links of the notebooks are rewritten to keep pointing at the
    same files from ``out``.
    """
    out.mkdir(parents=True, exist_ok=True)
    back = Path(os.path.relpath(Path(source).resolve(), out.resolve())).as_posix()
    if Path(source).resolve() == packaged_source():
        # The installed copies stand for the repository's notebooks/exercises: their links are
        # written as in the book's own student versions (notebooks/exercises/student).
        back = ".."
    written = []
    for path in exercise_paths(source):
        nb = release_notebook(nbformat.read(path, as_version=4), path.name, colab_prefix, back)
        nbformat.write(nb, out / path.name)
        written.append(out / path.name)
    return written
