"""Release the exercise notebooks to students and grade what they hand back.

    python -m esa_tutorial.course release OUT            # student versions into OUT/
    python -m esa_tutorial.course grade SUBMISSIONS      # scores into SUBMISSIONS/grades.csv, and printed

Each submission runs in a bubblewrap sandbox (read-only file system, a private
folder, no network, its own processes, limits on time, memory, processes and
file size); only its answer cells are taken, and the scores are decided in
this process. Where bubblewrap cannot start, grading refuses unless
--unsafe-no-sandbox is given.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Callable

try:
    from . import grading, sandbox
    from .release import AuthoringError, release
    from .source import exercise_paths
except ModuleNotFoundError as exc:  # the course's own dependencies are an extra of the package
    sys.exit(f"python -m esa_tutorial.course needs {exc.name}: pip install 'esa-tutorial[course]'")


MAX_SECONDS = 86_400.0  # a day per notebook


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number of seconds, got {text!r}")
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_SECONDS:g} seconds (a day), got {text!r}")
    return value


def _int_between(low: int, high: int, unit: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high], refused with the range otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}{unit}, got {text!r}")
        return value

    return parse


_positive_int = _int_between(1, 256)
# Below about 1 GiB of address space torch cannot even be imported (the probe finds the real need).
_memory_mb = _int_between(256, 2**20, " MiB")


def _writable_file(path: Path) -> str | None:
    """Why ``path`` cannot be written as a file, or None."""
    if path.is_dir():
        return f"{path} is a folder; give a file name"
    parent = path.parent
    if not parent.is_dir():
        return f"the folder {parent} does not exist"
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as exc:
        return f"cannot write in {parent}: {exc.strerror}"
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m esa_tutorial.course", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{release,grade}")
    source_help = "the instructor's exercise notebooks (default: the ones installed with the package)"
    rel = sub.add_parser("release", help="write the student versions of the exercises")
    rel.add_argument("out", type=Path)
    rel.add_argument("--source", type=Path, default=None, help=source_help)
    rel.add_argument("--colab-prefix", default=None,
                     help="Colab URL of the folder where you publish the student versions; the badges point "
                     "there (default: keep the badge, which opens the book's own student version)")
    gr = sub.add_parser("grade", help="grade every submitted notebook in a folder")
    gr.add_argument("submissions", type=Path)
    gr.add_argument("--source", type=Path, default=None, help=source_help)
    gr.add_argument("--timeout", type=_positive_seconds, default=300.0,
                    help="seconds for a whole notebook (default: %(default)s)")
    gr.add_argument("--memory-mb", type=_memory_mb, default=4096,
                    help="address space per notebook in MiB (default: %(default)s)")
    gr.add_argument("--jobs", type=_positive_int, default=2, help="notebooks graded at once (default: %(default)s)")
    gr.add_argument("--csv", type=Path, default=None, help="where to write the scores (default: SUBMISSIONS/grades.csv)")
    gr.add_argument("--unsafe-no-sandbox", action="store_true",
                    help="run submissions without bubblewrap, with your permissions (only for code you trust)")
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        exercises = exercise_paths(args.source)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    source = exercises[0].parent
    if args.cmd == "release":
        if args.out.exists() and not args.out.is_dir():
            parser.error(f"{args.out} exists and is not a folder")
        try:
            written = release(args.out, source, args.colab_prefix)
        except AuthoringError as exc:
            parser.error(f"cannot release: {exc}")
        for path in written:
            print(f"wrote {path}")
        return 0

    if not args.submissions.is_dir():
        parser.error(f"{args.submissions} is not a folder")
    out = args.csv or args.submissions / "grades.csv"
    problem = _writable_file(out)
    if problem:
        parser.error(f"--csv: {problem}")
    needed = [Path(sys.prefix).resolve(), Path(__file__).resolve().parents[1]]
    for hidden in (args.submissions.resolve(), source.resolve()):
        if any(hidden == p or hidden in p.parents for p in needed):
            parser.error(f"{hidden} holds the Python environment or the package the grader runs; "
                         "put the submissions and the instructor's notebooks in folders of their own")
    limits = sandbox.Limits(seconds=args.timeout, memory_mb=args.memory_mb)
    for stale in grading.sweep_stale():
        print(f"removed {stale}, left by a grading run that was killed", file=sys.stderr)
    if args.unsafe_no_sandbox:
        mode = None
        print("warning: --unsafe-no-sandbox: submissions run with your permissions and see your files",
              file=sys.stderr)
    else:
        mode, note = grading.probe(limits)
        if mode is None:
            if note.startswith("--memory-mb"):
                parser.error(note)
            parser.error(f"{note}. Grading runs students' code, so it refuses to run without a sandbox; "
                         "pass --unsafe-no-sandbox only for code you trust")
        print(f"grading in bubblewrap sandboxes: {note}", file=sys.stderr)
    workdir = grading.work_folder()
    os.chmod(workdir, 0o711)  # the sandbox's user must reach its own folder in here, and list nothing
    # A stop (kill PID, a closed terminal) ends the run like Ctrl-C: sandboxes killed, folders removed.
    in_main = threading.current_thread() is threading.main_thread()  # only there can handlers be set
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP) if in_main}
    try:
        setup = grading.Setup(limits=limits, hide=(args.submissions.resolve(), source.resolve(), out.resolve(), workdir),
                              workdir=workdir, mode=mode)
        try:
            grades = grading.grade(args.submissions, source, setup, args.jobs)
        except AuthoringError as exc:
            parser.error(f"cannot grade with these notebooks: {exc}")
    finally:
        grading.remove_tree(workdir)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for g in grades:
        print(g.summary())
    grading.write_csv(grades, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
