"""Run one submission's code in a bubblewrap sandbox with limits on time, memory, processes and file size.

Inside the sandbox the whole file system is read-only, except a private
folder (``/tmp/box``, the submission's own scratch folder outside); there is
no network, and the submission has its own PID namespace, so it can neither
see nor signal the grader or other submissions. The folders in ``hide`` (the
instructor's notebooks, the submissions, the grader's scratch space) are
covered by empty ones, and files in ``hide`` by ``/dev/null``. Started as
root, the sandbox runs as ``nobody`` where it can, so that the process limit holds.

The grader never reads a pipe of the sandbox: its output goes to a file, and
the sandbox is killed as a whole when the wall-time limit is reached.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

BOX = "/tmp/box"  # the private folder, as the sandbox sees it
NOBODY = 65534


@dataclass(frozen=True)
class Limits:
    """What one submission may use. ``seconds``: wall time for the whole notebook."""

    seconds: float = 300.0
    memory_mb: int = 4096
    processes: int = 256
    file_mb: int = 64
    open_files: int = 256


def _prlimit(limits: Limits) -> list[str]:
    if not shutil.which("prlimit"):
        return []
    return [
        "prlimit",
        f"--as={limits.memory_mb * 2**20}",
        f"--nproc={limits.processes}",
        f"--fsize={limits.file_mb * 2**20}",
        f"--nofile={limits.open_files}",
        "--core=0",
    ]


def bwrap_args(box: Path, hide: list[Path]) -> list[str]:
    """bubblewrap's options: read-only root, private ``box`` at :data:`BOX`, ``hide`` covered, nothing shared."""
    args = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    # The private /tmp would also hide a Python, a virtual environment or this package that
    # lives under /tmp (a clone there, as CI may make): bind those back, read-only.
    for path in _python_paths():
        if Path("/tmp") in path.parents:
            args += ["--ro-bind", str(path), str(path)]
    for path in hide:
        if path.is_dir():
            args += ["--tmpfs", str(path)]
        elif path.exists():
            args += ["--ro-bind", "/dev/null", str(path)]
    args += ["--bind", str(box), BOX, "--chdir", BOX]
    args += ["--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]
    return args


def _python_paths() -> list[Path]:
    """What the graded Python needs to start and import this package: its prefixes and the package."""
    package = Path(__file__).resolve().parents[1]
    found = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent, package}
    return sorted(p.resolve() for p in found)


def environment(home: str) -> dict[str, str]:
    """The environment of the graded code: no secrets of the grader's, single-threaded torch."""
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "LANG": "C.UTF-8",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": f"{home}/.matplotlib",
        "IPYTHONDIR": f"{home}/.ipython",
        "OMP_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONWARNINGS": "ignore",
    }


def _try(drop: list[str]) -> str | None:
    """Start a sandbox with ``drop`` in front; None if Python ran inside, else why not."""
    with tempfile.TemporaryDirectory(prefix="esa-grade-probe-") as tmp:
        os.chmod(tmp, 0o711)  # the sandbox's user must reach its folder
        box = Path(tmp) / "box"
        box.mkdir()
        if drop:
            os.chown(box, NOBODY, NOBODY)
        cmd = drop + bwrap_args(box, []) + [sys.executable, "-c", "print('ok')"]
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bwrap could not start: {exc}"
        if done.returncode != 0 or done.stdout.strip() != "ok":
            return (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return None


def probe() -> tuple[list[str] | None, str]:
    """How to start sandboxes here: (command prefix, note), or (None, why bubblewrap cannot start).

    As root the sandbox runs as ``nobody`` (prefix ``setpriv ...``), so that the
    process limit holds; when ``nobody`` cannot reach this Python, it runs as
    root inside its namespaces, where the kernel does not apply a process limit.
    """
    if not shutil.which("bwrap"):
        return None, "bwrap not found: install Debian's bubblewrap (apt-get install bubblewrap)"
    if os.geteuid() != 0:
        why = _try([])
        return ([], "sandboxes run as you") if why is None else (None, f"bwrap could not start a sandbox: {why}")
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    why_nobody = _try(drop) if shutil.which("setpriv") else "setpriv not found"
    if why_nobody is None:
        return drop, "sandboxes run as nobody"
    why = _try([])
    if why is None:
        # Say in words which mode and why: "as nobody: bwrap: execvp ..." alone told a
        # teacher neither what was wrong nor what to do.
        return [], (f"sandboxes run as root in their own namespaces, so the kernel applies no process "
                    f"limit: the user nobody cannot run this Python (for instance one installed under "
                    f"/root), which the safer mode needs; with a Python that nobody can run, such as "
                    f"Debian's /usr/bin/python3, the sandboxes run as nobody with the limit "
                    f"(the attempt said: {why_nobody})")
    return None, f"bwrap could not start a sandbox: {why}"


@dataclass
class Outcome:
    """How the sandboxed run ended: its exit status (None if killed at the time limit) and its last output."""

    returncode: int | None
    timed_out: bool
    log_tail: str


def run(argv: list[str], box: Path, limits: Limits, hide: list[Path], drop: list[str] | None) -> Outcome:
    """Run ``argv`` (paths in it as the sandbox sees them) with ``box`` as its private folder.

    ``drop`` is the prefix :func:`probe` found. With ``drop=None``
    (``--unsafe-no-sandbox``) the command runs in ``box`` with the same limits
    but nothing hidden and nothing read-only.
    """
    sandbox = drop is not None
    if drop:
        os.chown(box, NOBODY, NOBODY)
    home = BOX if sandbox else str(box)
    wrap = (drop or []) + _prlimit(limits) + (bwrap_args(box, hide) if sandbox else [])
    env = environment(home)
    log_path = box.parent / f"{box.name}.log"
    with open(log_path, "wb") as log:
        if sandbox:  # bwrap sets the environment inside; the outer one stays minimal
            cmd, outer_env = wrap + [a for kv in env.items() for a in ("--setenv", *kv)] + argv, {"PATH": env["PATH"]}
        else:
            cmd, outer_env = wrap + argv, env
        proc = subprocess.Popen(cmd, cwd=box, env=outer_env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=limits.seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # what is left; the namespace dies with bwrap
            except ProcessLookupError:
                pass
            proc.wait()
    return Outcome(None if timed_out else proc.returncode, timed_out, _tail(log_path))


def _tail(path: Path, size: int = 2000) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - size))
        return f.read().decode("utf-8", "replace")
