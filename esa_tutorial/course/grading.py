"""Grade submitted notebooks: answers from the student, everything else from the instructor, verdicts outside.

For every submission the grader

1. takes from it only the answers: the cells whose nbgrader ``grade_id`` is a
   solution cell of the instructor's notebook (a missing answer scores zero
   for the tests that need it); test cells, points, order and metadata always
   come from the instructor's notebook;
2. runs the instructor's code cells with those answers in a sandbox
   (:mod:`~esa_tutorial.course.sandbox`); the test cells there only tape what
   the student's code returns on inputs drawn at grading time
   (``esa_tutorial.course.runner``);
3. replays every test cell in its own process against the tape: the check
   computes the expected values with the package, and a test earns its points
   when the check passes.
"""

from __future__ import annotations

import ast
import builtins
import csv
import io
import json
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from . import checks, sandbox, tape
from .release import CODE_STUB, AuthoringError, grade_id, is_solution, is_test, nbgrader_meta
from .source import exercise_paths

CSV_COLUMNS = ("student", "notebook", "score", "max_score", "status", "reason", "feedback", "seconds")
MAX_TAPE_BYTES = 32 * 2**20
CHECKS = {name: getattr(checks, name) for name in checks.__all__}


class Malformed(ValueError):
    """A submission that cannot be graded; the message is the reason given to the student."""


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
    status: str = "graded"  # graded | malformed | timeout | crashed | unknown | error
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

    def summary(self) -> str:
        note = f"  ({self.status}: {self.reason})" if self.status != "graded" or self.reason else ""
        return f"{self.student:>16}  {self.notebook:<28} {self.score:g}/{self.max_score:g} in {self.seconds:.0f} s{note}"


# --------------------------------------------------------------------------- the instructor's side


def max_score(source: nbformat.NotebookNode) -> float:
    return float(sum(nbgrader_meta(c).get("points", 0) for c in source.cells if is_test(c)))


def validate_tests(source: nbformat.NotebookNode, name: str) -> None:
    """Every test cell must be calls of checks only, so that the grader can replay it in its own process."""
    for cell in source.cells:
        if not is_test(cell):
            continue
        try:
            body = ast.parse(cell.source).body
        except SyntaxError as exc:
            raise AuthoringError(f"{name}: test cell {grade_id(cell)!r} is not valid Python: {exc}") from None
        for stmt in body:
            call = stmt.value if isinstance(stmt, ast.Expr) else None
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in CHECKS):
                raise AuthoringError(
                    f"{name}: test cell {grade_id(cell)!r} line {stmt.lineno} is not a call of a check "
                    f"({', '.join(sorted(CHECKS))}); the grader replays test cells outside the student's kernel"
                )


# --------------------------------------------------------------------------- the student's side


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


def answers(submission: nbformat.NotebookNode, source: nbformat.NotebookNode) -> dict[str, str]:
    """The student's answer text per solution ``grade_id`` of the instructor's notebook (first match, same cell type)."""
    wanted = {grade_id(c): c.cell_type for c in source.cells if is_solution(c)}
    found: dict[str, str] = {}
    for cell in submission.cells:
        gid = grade_id(cell)
        if gid in wanted and gid not in found and cell.get("cell_type") == wanted[gid]:
            found[gid] = str(cell.get("source", ""))
    return found


def plan(source: nbformat.NotebookNode, given: dict[str, str], salt: int) -> dict[str, Any]:
    """What the sandbox runs: the instructor's code cells, the student's answers in place of the solutions."""
    cells = []
    for index, cell in enumerate(source.cells):
        if cell.cell_type != "code":
            continue
        gid = grade_id(cell)
        if is_test(cell):
            cells.append({"kind": "test", "id": gid, "index": index, "source": cell.source})
        elif is_solution(cell):
            cells.append({"kind": "code", "id": gid, "index": index, "source": given.get(gid, "\n".join(CODE_STUB))})
        else:
            cells.append({"kind": "code", "id": None, "index": index, "source": cell.source})
    return {"salt": salt, "cells": cells}


# --------------------------------------------------------------------------- the verdict, in the grader's process


class _Answers(dict):
    """Names of a test cell: the checks, builtins, and a stand-in for every name the student defined."""

    def __missing__(self, name: str) -> Any:
        if hasattr(builtins, name):
            raise KeyError(name)
        return _StudentName(name)


class _StudentName:
    """Stands for the student's ``my_ppm``, ``MyESA``...; replayed checks never call it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise tape.TapeMismatch(f"{self.name} was called outside a check")


def read_tape(path: Path) -> list:
    """A tape written in the sandbox, read without following links or blocking; [] when unusable."""
    import torch

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return []
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_TAPE_BYTES:
            return []
        data = f.read(MAX_TAPE_BYTES + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a forged tape may warn before it fails
            entries = torch.load(io.BytesIO(data), weights_only=True)
    except Exception:  # noqa: BLE001 -- a forged or truncated tape is no answer
        return []
    return entries if isinstance(entries, list) else []


def judge(test_source: str, entries: list, salt: int) -> str | None:
    """Replay one test cell against its tape; None if it passes, else the feedback."""
    with tape.mode(tape.Replaying(entries, salt)):
        try:
            exec(compile(test_source, "<test>", "exec"), {"__builtins__": builtins}, _Answers(CHECKS))  # noqa: S102
        except AssertionError as exc:  # CheckFailed and TapeMismatch
            return _clean(f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 -- a grader-side failure still scores zero, with the reason
            return _clean(f"could not be judged: {type(exc).__name__}: {exc}")
    return None


def _clean(text: str, limit: int = 1000) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- one submission


@dataclass(frozen=True)
class Setup:
    """Everything fixed for a grading run, checked before any work starts."""

    limits: sandbox.Limits
    hide: tuple[Path, ...]
    workdir: Path
    drop: tuple[str, ...] | None = ()  # sandbox.probe()'s prefix; None: no sandbox


def grade_one(path: Path, student: str, source_path: Path | None, setup: Setup) -> Grade:
    """Grade one submitted notebook; never raises (a grader failure becomes status ``error``)."""
    start = time.perf_counter()
    try:
        g = _grade_one(path, student, source_path, setup)
    except Exception as exc:  # noqa: BLE001 -- one submission must not stop the others
        g = Grade(student, path.name, status="error", reason=_clean(f"grader error: {type(exc).__name__}: {exc}"))
    g.seconds = time.perf_counter() - start
    return g


def _grade_one(path: Path, student: str, source_path: Path | None, setup: Setup) -> Grade:
    if source_path is None:
        return Grade(student, path.name, status="unknown",
                     reason=f"{path.name} is not one of the exercises; name it like the handed-out notebook")
    source = nbformat.read(source_path, as_version=4)
    g = Grade(student, source_path.name, max_score=max_score(source))
    try:
        given = answers(read_submission(path), source)
    except Malformed as exc:
        g.status, g.reason = "malformed", str(exc)
        return g
    missing = [grade_id(c) for c in source.cells if is_solution(c) and grade_id(c) not in given]
    salt = secrets.randbelow(2**31 - 1) + 1
    box = Path(tempfile.mkdtemp(prefix="box-", dir=setup.workdir))
    try:
        (box / "out").mkdir()
        (box / "plan.json").write_text(json.dumps(plan(source, given, salt)), encoding="utf-8")
        inside = sandbox.BOX if setup.drop is not None else str(box)
        argv = [sys.executable, "-I", "-m", "esa_tutorial.course.runner", f"{inside}/plan.json", f"{inside}/out"]
        drop = None if setup.drop is None else list(setup.drop)
        outcome = sandbox.run(argv, box, setup.limits, list(setup.hide), drop)
        for cell in source.cells:
            if cell.cell_type == "markdown" and is_solution(cell) and nbgrader_meta(cell).get("grade"):
                pts = float(nbgrader_meta(cell).get("points", 0))
                g.tests.append(TestResult(grade_id(cell), 0.0, 0.0, f"written answer ({pts:g} points): grade by hand"))
            if is_test(cell):
                pts = float(nbgrader_meta(cell).get("points", 0))
                entries = read_tape(box / "out" / f"{grade_id(cell)}.pt")
                verdict = judge(cell.source, entries, salt) if entries else "no answer recorded (the run stopped before this test)"
                g.tests.append(TestResult(grade_id(cell), 0.0 if verdict else pts, pts, verdict or "passed"))
        errors = read_tape(box / "out" / "errors.pt")
    finally:
        shutil.rmtree(box, ignore_errors=True)
        (box.parent / f"{box.name}.log").unlink(missing_ok=True)
    g.score = sum(t.points for t in g.tests)
    if outcome.timed_out:
        g.status = "timeout"
        g.reason = f"the notebook did not finish within {setup.limits.seconds:g} s (an infinite loop?)"
    elif outcome.returncode != 0:
        g.status = "crashed"
        last = outcome.log_tail.strip().splitlines()[-1:] or [f"exit status {outcome.returncode}"]
        g.reason = _clean(f"the notebook's process died (exit status {outcome.returncode}): {last[0]}", 300)
    if missing:
        g.reason = "; ".join(filter(None, [g.reason, f"no answer in cells {missing} (keep the handed-out cells)"]))
    elif not g.reason:
        first = next((e for e in errors if isinstance(e, dict)), None)
        if first:
            g.reason = _clean(f"your code raised an error in {first.get('id') or 'cell ' + str(first.get('cell'))}: "
                              f"{first.get('error')}")
    return g


# --------------------------------------------------------------------------- a folder of submissions


def find_submissions(folder: Path, exercises: list[Path]) -> list[tuple[Path, str, Path | None]]:
    """(path, student, matching exercise) for every notebook under ``folder``.

    ``folder/<student>/[...]/<exercise>.ipynb`` (nbgrader's layout) names the
    student by the first folder; a file directly in ``folder`` by its name.
    """
    by_stem = {p.stem: p for p in exercises}
    found = []
    for path in sorted(folder.rglob("*.ipynb")):
        rel = path.relative_to(folder)
        if ".ipynb_checkpoints" in rel.parts or path.is_symlink():
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


def grade(submissions: Path, source: Path | None, setup: Setup, jobs: int = 2) -> list[Grade]:
    """Grade every notebook under ``submissions`` against the exercises in ``source``."""
    exercises = exercise_paths(source)
    for path in exercises:
        validate_tests(nbformat.read(path, as_version=4), path.name)
    todo = find_submissions(submissions, exercises)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(lambda t: grade_one(t[0], t[1], t[2], setup), todo))


def write_csv(grades: list[Grade], path: Path) -> None:
    """Write the scores atomically: a temporary file next to ``path``, then one rename."""
    fd, tmp = tempfile.mkstemp(prefix=".grades-", suffix=".csv", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(g.row() for g in grades)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
