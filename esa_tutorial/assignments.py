"""Release the exercise notebooks to students and grade what they hand back.

    python -m esa_tutorial.assignments release OUT            # student versions into OUT/
    python -m esa_tutorial.assignments grade SUBMISSIONS      # scores into SUBMISSIONS/grades.csv

The exercise notebooks in ``notebooks/exercises/`` are the one source of
truth: they hold the solutions and are checked by nbval like every chapter.
They follow nbgrader's conventions, so a course can also hand them to
nbgrader unchanged:

* a *solution cell* has ``metadata.nbgrader = {solution: true, grade_id: ...}``
  and its answer between ``### BEGIN SOLUTION`` and ``### END SOLUTION``
  (a written answer: the whole markdown cell);
* a *test cell* has ``{grade: true, solution: false, grade_id: ..., points: N}``;
  lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` are
  removed from the student version and put back for grading.

``release`` replaces every solution by ``raise NotImplementedError()`` (a
written answer by ``YOUR ANSWER HERE``), drops hidden tests and clears
outputs. ``grade`` puts the instructor's test cells back into each submission
(so hidden tests run and edited tests do not count), runs it in a fresh kernel
under a time limit, and gives each test cell its points if it ran without an
error. A submission that cannot be read, lacks cells of the assignment, runs
out of time or kills its kernel scores zero with the reason, and grading goes
on with the next one.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import nbformat

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = ROOT / "notebooks" / "exercises"

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
ANSWER_STUB = "YOUR ANSWER HERE"
HIDDEN_NOTE = "# More (hidden) tests run here when your notebook is graded."
BOOK_ONLY_TAGS = {"hide-input", "remove-cell", "remove-input"}
CSV_COLUMNS = ("student", "notebook", "score", "max_score", "status", "reason", "feedback", "seconds")


class AuthoringError(ValueError):
    """An exercise notebook breaks the conventions above (unbalanced markers, missing metadata)."""


class Malformed(ValueError):
    """A submission that cannot be graded; the message is the reason given to the student."""


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


def retarget_badge(nb: nbformat.NotebookNode, name: str, colab_prefix: str | None) -> None:
    """Point the "Open in Colab" badge at ``colab_prefix/name``, or drop it without a prefix.

    The badge of the source notebook opens the solution version; a student's
    copy must open the course's own copy of the student version instead.
    """
    for cell in nb.cells:
        if cell.cell_type == "markdown" and COLAB_BADGE.search(cell.source):
            if colab_prefix:
                url = f"{colab_prefix.rstrip('/')}/{name}"
                cell.source = COLAB_BADGE.sub(lambda m: m.group(0).replace(m.group(1), url), cell.source)
            else:
                cell.source = COLAB_BADGE.sub("", cell.source).rstrip()


def release_notebook(
    nb: nbformat.NotebookNode, name: str = "notebook", colab_prefix: str | None = None
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
    return out


def exercise_paths(source: Path = EXERCISES) -> list[Path]:
    paths = sorted(source.glob("*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no exercise notebooks (*.ipynb) in {source}")
    return paths


def release(out: Path, source: Path = EXERCISES, colab_prefix: str | None = None) -> list[Path]:
    """Write the student version of every exercise in ``source`` to ``out``. Returns the paths written.

    ``colab_prefix`` is where the course publishes the student versions, e.g.
    ``https://colab.research.google.com/github/<org>/<repo>/blob/main/assignments``.
    """
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in exercise_paths(source):
        nb = release_notebook(nbformat.read(path, as_version=4), path.name, colab_prefix)
        nbformat.write(nb, out / path.name)
        written.append(out / path.name)
    return written


# --------------------------------------------------------------------------- grading


@dataclass
class TestResult:
    grade_id: str
    points: float
    max_points: float
    feedback: str

    def line(self) -> str:
        return f"{self.grade_id} ({self.points:g}/{self.max_points:g}): {self.feedback}"


@dataclass
class Grade:
    student: str
    notebook: str
    score: float = 0.0
    max_score: float = 0.0
    status: str = "graded"  # graded | malformed | timeout | crashed | unknown
    reason: str = ""
    tests: list[TestResult] = field(default_factory=list)
    seconds: float = 0.0  # wall time spent on this submission, to choose --timeout

    def row(self) -> dict[str, str]:
        return {
            "student": self.student,
            "notebook": self.notebook,
            "score": f"{self.score:g}",
            "max_score": f"{self.max_score:g}",
            "status": self.status,
            "reason": self.reason,
            "feedback": "\n".join(t.line() for t in self.tests),
            "seconds": f"{self.seconds:.1f}",
        }


def max_score(nb: nbformat.NotebookNode) -> float:
    return float(sum(nbgrader_meta(c).get("points", 0) for c in nb.cells if is_test(c)))


def read_submission(path: Path) -> nbformat.NotebookNode:
    """Read a submitted notebook or raise :class:`Malformed` saying why it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Malformed(f"cannot read the file: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Malformed(f"not a notebook: the file is not valid JSON ({exc})") from None
    try:
        nb = nbformat.reads(json.dumps(data), as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # noqa: BLE001 -- any schema problem is the reason
        raise Malformed(f"not a valid Jupyter notebook: {str(exc).splitlines()[0]}") from None
    return nb


def prepare(submission: nbformat.NotebookNode, source: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook to run: the student's cells with the instructor's test cells put back.

    Raises :class:`Malformed` if a graded cell of the assignment is missing.
    """
    theirs = {grade_id(c): c for c in submission.cells if grade_id(c)}
    missing = [grade_id(c) for c in source.cells if grade_id(c) and grade_id(c) not in theirs]
    if missing:
        raise Malformed(
            f"cells {missing} of the assignment are missing (deleted, or their metadata lost); "
            "keep every cell of the handed-out notebook and write your answers in place"
        )
    tests = {grade_id(c): c for c in source.cells if is_test(c)}
    wanted = {grade_id(c) for c in source.cells if grade_id(c)}
    nb = nbformat.from_dict(json.loads(json.dumps(submission)))
    seen: set[str] = set()
    cells = []
    for cell in nb.cells:
        gid = grade_id(cell)
        if gid is not None and (gid not in wanted or gid in seen):
            cell.metadata.pop("nbgrader")  # an added or copied graded cell earns nothing
        elif gid is not None:
            seen.add(gid)
            cell = nbformat.from_dict(json.loads(json.dumps(tests[gid]))) if gid in tests else cell
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cells.append(cell)
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _clean(text: str, limit: int = 1000) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error(cell: nbformat.NotebookNode) -> str | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return _clean(f"{out.get('ename', 'Error')}: {out.get('evalue', '')}")
    return None


def score(executed: nbformat.NotebookNode, student: str, notebook: str) -> Grade:
    """Points of every test cell that ran without an error; the first error in the student's cells as reason."""
    g = Grade(student, notebook, max_score=max_score(executed))
    for i, cell in enumerate(executed.cells):
        if cell.cell_type == "markdown" and is_solution(cell) and nbgrader_meta(cell).get("grade"):
            pts = float(nbgrader_meta(cell).get("points", 0))
            g.tests.append(TestResult(grade_id(cell), 0.0, 0.0, f"written answer ({pts:g} points): grade by hand"))
        if cell.cell_type != "code":
            continue
        err = _error(cell)
        if is_test(cell):
            pts = float(nbgrader_meta(cell).get("points", 0))
            if err is None and cell.get("execution_count") is None:
                err = "did not run"
            g.tests.append(TestResult(grade_id(cell), 0.0 if err else pts, pts, err or "passed"))
        elif err and not g.reason:
            where = grade_id(cell) or f"cell {i}"
            g.reason = f"your code raised an error in {where}: {err}"
    g.score = sum(t.points for t in g.tests)
    return g


def execute(nb_path: Path, out_path: Path, timeout: float) -> None:
    """Run ``nb_path`` in a fresh kernel (whole notebook within ``timeout`` s) and write it to ``out_path``.

    Meant for a child process (see :func:`run_isolated`): errors in cells are
    stored as outputs; a timeout or a dead kernel exits with code 3 or 4.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb = nbformat.read(nb_path, as_version=4)
    deadline = time.monotonic() + timeout
    client = NotebookClient(
        nb,
        timeout=int(timeout),
        timeout_func=lambda cell: max(1, int(deadline - time.monotonic())),
        allow_errors=True,
        kernel_name="python3",
        shutdown_kernel="immediate",
        resources={"metadata": {"path": str(nb_path.parent)}},
    )
    code = 0
    try:
        client.execute()
    except CellTimeoutError:
        code = 3
    except DeadKernelError:
        code = 4
    nbformat.write(nb, out_path)
    sys.exit(code)


def run_isolated(nb: nbformat.NotebookNode, timeout: float) -> tuple[nbformat.NotebookNode | None, str]:
    """Execute ``nb`` in a child process in a scratch folder. Returns (executed notebook, status)."""
    with tempfile.TemporaryDirectory(prefix="esa-grade-") as tmp:
        src, out = Path(tmp) / "submission.ipynb", Path(tmp) / "executed.ipynb"
        nbformat.write(nb, src)
        cmd = [sys.executable, "-m", "esa_tutorial.assignments", "_execute", str(src), str(out), str(timeout)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, stderr = proc.communicate(timeout=timeout + 60)  # the child enforces the limit; this is a backstop
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return None, "timeout"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        status = {0: "graded", 3: "timeout", 4: "crashed"}.get(proc.returncode, "crashed")
        if not out.exists():
            return None, f"crashed: {_clean(stderr.strip().splitlines()[-1] if stderr.strip() else '')}"
        return nbformat.read(out, as_version=4), status


def grade_one(path: Path, student: str, source_path: Path | None, timeout: float) -> Grade:
    """Grade one submitted notebook; never raises for a bad submission."""
    start = time.perf_counter()
    g = _grade_one(path, student, source_path, timeout)
    g.seconds = time.perf_counter() - start
    return g


def _grade_one(path: Path, student: str, source_path: Path | None, timeout: float) -> Grade:
    notebook = source_path.name if source_path else path.name
    if source_path is None:
        return Grade(student, path.name, status="unknown",
                     reason=f"{path.name} is not one of the exercises; name it like the handed-out notebook")
    source = nbformat.read(source_path, as_version=4)
    try:
        nb = prepare(read_submission(path), source)
    except Malformed as exc:
        return Grade(student, notebook, max_score=max_score(source), status="malformed", reason=str(exc))
    executed, status = run_isolated(nb, timeout)
    if status == "timeout":
        return Grade(student, notebook, max_score=max_score(source), status="timeout",
                     reason=f"the notebook did not finish within {timeout:g} s (an infinite loop?)")
    if executed is None or status != "graded":
        return Grade(student, notebook, max_score=max_score(source), status="crashed",
                     reason=f"the kernel died while running your notebook ({status})")
    return score(executed, student, notebook)


def find_submissions(folder: Path, exercises: list[Path]) -> list[tuple[Path, str, Path | None]]:
    """(path, student, matching exercise) for every notebook under ``folder``.

    ``folder/<student>/[...]/<exercise>.ipynb`` (nbgrader's layout) names the
    student by the first folder; a file directly in ``folder`` by its name.
    """
    by_stem = {p.stem: p for p in exercises}
    found = []
    for path in sorted(folder.rglob("*.ipynb")):
        rel = path.relative_to(folder)
        if ".ipynb_checkpoints" in rel.parts:
            continue
        stems = [s for s in by_stem if s in path.stem]
        exercise = by_stem[max(stems, key=len)] if stems else None
        if len(rel.parts) > 1:
            student = rel.parts[0]
        else:
            student = path.stem.replace(exercise.stem, "").strip("_- ") if exercise else path.stem
            student = student or path.stem
        found.append((path, student, exercise))
    return found


def grade(
    submissions: Path, source: Path = EXERCISES, timeout: float = 300, jobs: int = 2
) -> list[Grade]:
    """Grade every notebook under ``submissions`` against the exercises in ``source``."""
    todo = find_submissions(submissions, exercise_paths(source))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(lambda t: grade_one(t[0], t[1], t[2], timeout), todo))


def write_csv(grades: list[Grade], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(g.row() for g in grades)


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m esa_tutorial.assignments", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{release,grade}")
    rel = sub.add_parser("release", help="write the student versions of the exercises")
    rel.add_argument("out", type=Path)
    rel.add_argument("--source", type=Path, default=EXERCISES, help="the solution notebooks (default: %(default)s)")
    rel.add_argument("--colab-prefix", default=None,
                     help="Colab URL of the folder where you publish the student versions; without it the "
                     "'Open in Colab' badge (which opens the solutions) is removed")
    gr = sub.add_parser("grade", help="grade every submitted notebook in a folder")
    gr.add_argument("submissions", type=Path)
    gr.add_argument("--source", type=Path, default=EXERCISES, help="the solution notebooks (default: %(default)s)")
    gr.add_argument("--timeout", type=float, default=300, help="seconds per notebook (default: %(default)s)")
    gr.add_argument("--jobs", type=int, default=2, help="notebooks graded at once (default: %(default)s)")
    gr.add_argument("--csv", type=Path, default=None, help="where to write the scores (default: SUBMISSIONS/grades.csv)")
    ex = sub.add_parser("_execute")  # internal, unlisted: run one notebook in a child process
    ex.add_argument("nb", type=Path)
    ex.add_argument("out", type=Path)
    ex.add_argument("timeout", type=float)
    args = parser.parse_args(argv)

    if args.cmd == "_execute":
        execute(args.nb, args.out, args.timeout)
    if args.cmd == "release":
        for path in release(args.out, args.source, args.colab_prefix):
            print(f"wrote {path}")
        return 0
    if not args.submissions.is_dir():
        parser.error(f"{args.submissions} is not a folder")
    grades = grade(args.submissions, args.source, args.timeout, args.jobs)
    out = args.csv or args.submissions / "grades.csv"
    write_csv(grades, out)
    for g in grades:
        note = f"  ({g.status}: {g.reason})" if g.status != "graded" or g.reason else ""
        print(f"{g.student:>16}  {g.notebook:<28} {g.score:g}/{g.max_score:g} in {g.seconds:.0f} s{note}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
