"""Inside the sandbox: run a graded notebook's cells and tape what the student's code answers.

    python -m esa_tutorial.course.runner PLAN.json OUT/

``PLAN.json`` holds the salt and the cells to run: the instructor's code
cells, with the student's answers in place of the solution cells, and the
instructor's test cells. Code cells run in an IPython shell, like a notebook.
Test cells run outside that shell's hooks, with the real checks in recording
mode (:mod:`esa_tutorial.course.tape`); each one's tape goes to ``OUT/<grade_id>.pt``
as soon as it ends. Nothing here decides a score: the grader reads the tapes
and judges them in its own process.
"""

from __future__ import annotations

import io
import json
import signal
import sys
from pathlib import Path

MAX_PRINTED = 1_000_000  # bytes of the notebook's own output kept in the log


class _Capped(io.TextIOBase):
    """A stream that forwards the first ``limit`` characters and drops the rest."""

    def __init__(self, stream: io.TextIOBase, limit: int) -> None:
        self._stream, self._left = stream, limit

    def write(self, text: str) -> int:
        if self._left > 0:
            part = text[: self._left]
            self._left -= len(part)
            try:
                self._stream.write(part)
                self._stream.flush()
            except OSError:
                self._left = 0
        return len(text)

    def writable(self) -> bool:
        return True


def _save(obj: object, path: Path) -> None:
    from esa_tutorial.files import save_tensors  # the package's one writer: atomic and synced

    save_tensors(obj, path)


def main(plan_path: str, out_dir: str) -> int:
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the file-size limit writes fail instead
    sys.stdout = _Capped(sys.__stdout__, MAX_PRINTED)
    sys.stderr = _Capped(sys.__stderr__, MAX_PRINTED)
    plan = json.loads(Path(plan_path).read_text(encoding="utf-8"))
    out = Path(out_dir)
    out.mkdir(exist_ok=True)

    # The checks and the tape are imported before any student code runs.
    from esa_tutorial.course import checks, tape
    from IPython.core.interactiveshell import InteractiveShell

    real_checks = {name: getattr(checks, name) for name in checks.__all__}
    shell = InteractiveShell.instance()
    errors: list[dict] = []
    for i, cell in enumerate(plan["cells"]):
        if cell["kind"] == "code":
            result = shell.run_cell(cell["source"], store_history=False)
            exc = result.error_before_exec or result.error_in_exec
            if exc is not None:
                errors.append({"cell": cell.get("index", i), "id": cell.get("id"), "error": f"{type(exc).__name__}: {exc}"[:500]})
                _save(errors, out / "errors.pt")
            continue
        recording = tape.Recording(int(plan["salt"]))
        namespace = {**shell.user_ns, **real_checks}
        with tape.mode(recording):
            try:
                exec(compile(cell["source"], f"<test {cell['id']}>", "exec"), namespace)  # noqa: S102
            except BaseException:  # noqa: BLE001 -- the grader judges the tape, not this verdict
                pass
        _save(recording.tape, out / f"{cell['id']}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
