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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import nbformat

from ..files import atomic_write, write_json
from . import checks, sandbox, tape
from .release import CODE_STUB, AuthoringError, grade_id, is_solution, is_test, nbgrader_meta
from .source import exercise_paths

CSV_COLUMNS = ("student", "notebook", "score", "max_score", "status", "reason", "feedback", "seconds")
MAX_TAPE_BYTES = 8 * 2**20  # a real tape is a few KiB to a few hundred
MAX_NOTEBOOK_BYTES = 20 * 2**20
MAX_CELLS = 2000
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
        """One line for the terminal; the CSV keeps the exact texts."""
        note = f"  ({self.status}: {self.reason})" if self.status != "graded" or self.reason else ""
        return printable(f"{self.student:>16}  {self.notebook:<28} {self.score:g}/{self.max_score:g} "
                         f"in {self.seconds:.0f} s{note}")


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
    """Read a submitted notebook or raise :class:`Malformed` saying why it cannot be read.

    Refused before anything runs: a file that is not a regular file (a FIFO, a
    device, a folder), more than :data:`MAX_NOTEBOOK_BYTES`, JSON nested too
    deeply, more than :data:`MAX_CELLS` cells, and cells whose metadata is not
    what Jupyter writes (e.g. ``"nbgrader": null``).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise Malformed(f"cannot read the file: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise Malformed("not a regular file (a folder, a pipe or a device); hand in the notebook file itself")
        if info.st_size > MAX_NOTEBOOK_BYTES:
            raise Malformed(f"the file is {info.st_size / 2**20:.1f} MiB, more than the {MAX_NOTEBOOK_BYTES // 2**20} MiB "
                            "the grader reads; clear the outputs (Edit > Clear Outputs of All Cells) and save again")
        raw = f.read(MAX_NOTEBOOK_BYTES + 1)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise Malformed(f"cannot read the file: not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise Malformed(f"not a notebook: the file is not valid JSON ({exc})") from None
    except RecursionError:
        raise Malformed("not a notebook: its JSON is nested too deeply") from None
    _check_structure(data)
    try:
        nb = nbformat.reads(json.dumps(data), as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # noqa: BLE001 -- any schema problem is the reason
        raise Malformed(f"not a valid Jupyter notebook: {str(exc).splitlines()[0]}") from None
    return nb


def _check_structure(data: Any) -> None:
    """What the grader relies on, checked before nbformat (whose errors can be obscure or slow)."""
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise Malformed("not a valid Jupyter notebook: no list of 'cells' at the top level")
    if len(data["cells"]) > MAX_CELLS:
        raise Malformed(f"the notebook has {len(data['cells'])} cells, more than the {MAX_CELLS} the grader reads; "
                        "start again from the handed-out notebook")
    for i, c in enumerate(data["cells"]):
        if not isinstance(c, dict) or not isinstance(c.get("metadata", {}), dict):
            raise Malformed(f"cell {i} is not a notebook cell (no metadata object); start again from the "
                            "handed-out notebook and copy your answers in")
        meta = c.get("metadata", {}).get("nbgrader", {})
        if not isinstance(meta, dict) or not isinstance(meta.get("grade_id", ""), str):
            raise Malformed(f"cell {i} has damaged grading metadata (metadata.nbgrader = {json.dumps(meta)[:80]}); "
                            "copy your answer into the cell of the handed-out notebook")


def answers(submission: nbformat.NotebookNode, source: nbformat.NotebookNode) -> dict[str, str]:
    """The student's answer text per solution ``grade_id`` of the instructor's notebook (same cell type).

    Raises :class:`Malformed` when an answer cell appears twice (a copied
    cell): the grader cannot know which one is the answer.
    """
    wanted = {grade_id(c): c.cell_type for c in source.cells if is_solution(c)}
    found: dict[str, str] = {}
    where: dict[str, list[int]] = {}
    for index, cell in enumerate(submission.cells):
        gid = grade_id(cell)
        if gid in wanted and cell.get("cell_type") == wanted[gid]:
            where.setdefault(gid, []).append(index)
            found.setdefault(gid, str(cell.get("source", "")))
    twice = {gid: cells for gid, cells in where.items() if len(cells) > 1}
    if twice:
        gid, cells = next(iter(twice.items()))
        raise Malformed(f"the answer cell {gid!r} appears {len(cells)} times (cells {cells}); keep one "
                        "cell with your answer and delete the copies")
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
    """A tape written in the sandbox, read without following links or blocking and checked by
    :func:`esa_tutorial.course.tape.load`; raises :class:`~esa_tutorial.course.tape.TapeError`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise tape.TapeError("no answer recorded (the run stopped before this test)") from None
    except OSError as exc:
        raise tape.TapeError(f"the recorded answers cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_TAPE_BYTES:
            raise tape.TapeError("the recorded answers are not a file of at most "
                                 f"{MAX_TAPE_BYTES // 2**20} MiB (the file was replaced)")
        data = f.read(MAX_TAPE_BYTES + 1)
    try:
        return tape.load(data, MAX_TAPE_BYTES)
    except tape.TapeError as exc:
        raise tape.TapeError(f"the recorded answers were changed after the test ran: {exc}") from None


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


# Control characters (C0, DEL, C1) and the invisible format characters that reorder or hide text.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def printable(text: str) -> str:
    """``text`` for a terminal: every control character escaped (``\\x1b``, ``\\n``), so that a
    name or an error message cannot move the cursor, rewrite lines or forge a score line."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


# --------------------------------------------------------------------------- one submission


@dataclass(frozen=True)
class Setup:
    """Everything fixed for a grading run, checked before any work starts."""

    limits: sandbox.Limits
    hide: tuple[Path, ...]
    workdir: Path
    mode: sandbox.Mode | None = "user"  # probe()'s answer; None: no sandbox (--unsafe-no-sandbox)


def run_plan(the_plan: dict[str, Any], setup: Setup, ids: list[str]) -> tuple[sandbox.Outcome, dict[str, Any]]:
    """Run a plan in a fresh box of ``setup.workdir``; the outcome and, per id in ``ids`` and
    ``"errors"``, its tape (a list) or the :class:`~esa_tutorial.course.tape.TapeError` that explains why none.

    The box is removed on every way out, an exception or an interrupt included.
    """
    box = Path(tempfile.mkdtemp(prefix="box-", dir=setup.workdir))
    try:
        (box / "out").mkdir()
        write_json(the_plan, box / "plan.json")
        inside = sandbox.BOX if setup.mode is not None else str(box)
        argv = [sys.executable, "-I", "-m", "esa_tutorial.course.runner", f"{inside}/plan.json", f"{inside}/out"]
        outcome = sandbox.run(argv, box, setup.limits, list(setup.hide), setup.mode)
        tapes: dict[str, Any] = {}
        for name in [*ids, "errors"]:
            try:
                tapes[name] = read_tape(box / "out" / f"{name}.pt")
            except tape.TapeError as exc:
                tapes[name] = exc
        return outcome, tapes
    finally:
        remove_tree(box)
        (box.parent / f"{box.name}.log").unlink(missing_ok=True)


def work_folder(kind: str = "") -> Path:
    """A fresh private folder for a grading run, named with this process's id (see :func:`sweep_stale`)."""
    return Path(tempfile.mkdtemp(prefix=f"esa-grade-{kind}{os.getpid()}-"))


def sweep_stale(folder: Path | None = None) -> list[Path]:
    """Remove the work folders of grading runs that were killed (``kill -9``, out of memory) before they could.

    A folder counts as stale when the process named in it no longer runs and
    it belongs to this user; it may hold the hidden tests of a plan. Returns the folders removed.
    """
    removed = []
    for path in Path(folder or tempfile.gettempdir()).glob("esa-grade-*"):
        match = re.fullmatch(r"esa-grade-(?:probe-)?(\d+)-\w+", path.name)
        try:
            if not match or path.is_symlink() or path.stat().st_uid != os.geteuid():
                continue
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            remove_tree(path)
            removed.append(path)
        except (OSError, OverflowError):
            continue  # alive under another user, or unreadable: not ours to remove
    return removed


def remove_tree(path: Path) -> None:
    """``rm -rf path``, also where the sandbox took the permissions away from its own folders."""

    def retry(func: Any, name: str, _exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(name), 0o700)
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, 0o700)
                shutil.rmtree(name, ignore_errors=True)
            else:
                func(name)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


# A tiny notebook: a code cell defines a name, a test cell tapes it. The probe grades it.
_PROBE_PLAN = {"salt": 1, "cells": [
    {"kind": "code", "id": None, "index": 0, "source": "answer = 6 * 7"},
    {"kind": "test", "id": "probe", "index": 1,
     "source": "from esa_tutorial.course import tape\ntape.ask('probe', lambda: answer)"},
]}
_MODE_NOTES = {
    "nobody": "sandboxes run as nobody",
    "root": "sandboxes run as root without capabilities and without a process limit (setpriv is missing)",
    "user": "sandboxes run as you",
}
PROBE_SECONDS = 180.0


def _round_trip(mode: sandbox.Mode, limits: sandbox.Limits) -> str | None:
    """Grade :data:`_PROBE_PLAN` in ``mode``; None if its answer came back, else why not."""
    tmp = work_folder("probe-")
    try:
        os.chmod(tmp, 0o711)  # the sandbox's user must reach its folder in here
        setup = Setup(limits=limits, hide=(), workdir=tmp, mode=mode)
        outcome, tapes = run_plan(_PROBE_PLAN, setup, ["probe"])
    finally:
        remove_tree(tmp)
    recorded = tapes["probe"]
    if isinstance(recorded, list) and recorded and recorded[0].get("value") == 42:
        return None
    if outcome.timed_out:
        return f"a tiny notebook did not finish within {limits.seconds:g} s"
    lines = outcome.log_tail.strip().splitlines()
    return _clean(lines[-1] if lines else f"exit status {outcome.returncode}, no answer ({recorded})", 300)


def probe(limits: sandbox.Limits = sandbox.Limits()) -> tuple[sandbox.Mode | None, str]:
    """How to start sandboxes here: (mode, note), or (None, why grading cannot work).

    Each candidate mode (:func:`esa_tutorial.course.sandbox.candidate_modes`)
    grades a tiny notebook for real, under ``limits``: the runner starts,
    imports torch and the checks, writes its answer, and the answer is read
    back. When no mode works under ``limits`` but one works with the memory
    limit lifted, the note says that ``--memory-mb`` is too small.
    """
    if not shutil.which("bwrap"):
        return None, "bwrap not found: install Debian's bubblewrap (apt-get install bubblewrap)"
    trial = replace(limits, seconds=max(limits.seconds, PROBE_SECONDS))
    tried = []
    for mode in sandbox.candidate_modes():
        why = _round_trip(mode, trial)
        if why is None:
            return mode, _MODE_NOTES[mode]
        tried.append(f"as {mode}: {why}")
    roomy = replace(trial, memory_mb=max(4 * limits.memory_mb, 16384))
    if _round_trip(sandbox.candidate_modes()[0], roomy) is None:
        return None, (f"--memory-mb {limits.memory_mb} is too small: a tiny notebook cannot even import torch "
                      f"with it ({tried[0]}); it works with {roomy.memory_mb}, so give at least 2048")
    return None, "bwrap could not grade a tiny notebook: " + "; ".join(tried)


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
    tests = [grade_id(c) for c in source.cells if is_test(c)]
    outcome, tapes = run_plan(plan(source, given, salt), setup, tests)
    for cell in source.cells:
        if cell.cell_type == "markdown" and is_solution(cell) and nbgrader_meta(cell).get("grade"):
            pts = float(nbgrader_meta(cell).get("points", 0))
            g.tests.append(TestResult(grade_id(cell), 0.0, 0.0, f"written answer ({pts:g} points): grade by hand"))
        if is_test(cell):
            pts = float(nbgrader_meta(cell).get("points", 0))
            entries = tapes[grade_id(cell)]
            verdict = judge(cell.source, entries, salt) if isinstance(entries, list) else str(entries)
            g.tests.append(TestResult(grade_id(cell), 0.0 if verdict else pts, pts, verdict or "passed"))
    errors = tapes["errors"] if isinstance(tapes["errors"], list) else []
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
    sandbox.reset()
    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        return list(pool.map(lambda t: grade_one(t[0], t[1], t[2], setup), todo))
    except BaseException:  # an interrupt: kill the running sandboxes, so that their boxes go at once
        sandbox.stop_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def write_csv(grades: list[Grade], path: Path) -> None:
    """Write the scores atomically through the package's one writer (:func:`esa_tutorial.files.atomic_write`)."""

    def rows(f: IO[bytes]) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(g.row() for g in grades)
        text.flush()
        text.detach()  # leave the binary file open for the writer to sync and close

    atomic_write(path, rows)
