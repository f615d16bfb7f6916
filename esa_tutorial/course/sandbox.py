"""Run one submission's code in a bubblewrap sandbox with limits on time, memory, processes and file size.

The sandbox sees the smallest file system that runs Python and this package,
read-only: ``/usr`` (and the ``/bin``, ``/lib`` links to it), the loader's
files of ``/etc``, the graded Python's own folders and the package itself,
fresh ``/dev``, ``/proc`` and ``/tmp``; nothing else of the host (no
``/home``, ``/root``, ``/var``, ``/run``, ``/etc/shadow``, no host sockets).
Its one writable folder is ``/tmp/box`` (the submission's own scratch folder
outside). It has no network (its own network namespace, so no abstract Unix
sockets either) and its own PID namespace, so it can neither see nor signal
the grader or other submissions.

Three modes (``Mode``), chosen by the grader's probe:

* ``"nobody"``: the grader is root; bubblewrap starts as root, builds the
  file system, and ``setpriv`` drops to ``nobody`` without capabilities before
  the graded Python starts. Root-only files cannot be read even if they were
  visible, and the process limit holds (the kernel does not apply it to root).
* ``"root"``: the same file system, but the code runs as root without
  capabilities (only when ``setpriv`` is missing): no process limit, and a
  file of root's that is visible (none of the host's secrets is) could be read.
* ``"user"``: the grader is not root; the code runs as the grader's user in a
  user namespace, with the same file system.

The grader never reads a pipe of the sandbox: its output goes to a file, and
the sandbox is killed as a whole when the wall-time limit is reached or
``stop_all()`` is called.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BOX = "/tmp/box"  # the private folder, as the sandbox sees it
NOBODY = 65534
Mode = Literal["nobody", "root", "user"]
MODES: tuple[Mode, ...] = ("nobody", "root", "user")

# What every Python needs from the host besides its own folders: the system's programs and
# libraries, and the dynamic loader's configuration. Missing ones are skipped.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime")

_STOP = threading.Event()


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


@functools.lru_cache(maxsize=None)
def _runner_sys_path(python: str) -> tuple[str, ...]:
    """``sys.path`` of ``python -I`` (as the runner starts), .pth files included."""
    done = subprocess.run([python, "-I", "-c", "import sys, json; print(json.dumps(sys.path))"],
                          capture_output=True, text=True, timeout=60, check=True)
    return tuple(json.loads(done.stdout))


def _within(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def python_paths() -> list[Path]:
    """The host folders the graded Python needs besides ``/usr``: its prefixes, import path and this package.

    An entry of the import path that holds this package without being a
    ``site-packages`` folder (an editable install's repository) is replaced by
    the package folder alone, so that the rest of the repository stays out.
    """
    package = Path(__file__).resolve().parents[1]
    found = {Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    found |= {Path(sys.executable).parent, Path(sys.executable).resolve().parent, package}
    for entry in _runner_sys_path(sys.executable):
        path = Path(entry)
        if not path.is_absolute() or not path.exists():
            continue
        if (path / package.name).resolve() == package and not path.name.endswith(("site-packages", "dist-packages")):
            continue  # the package is bound by itself
        found.add(path)
    paths = set()
    for p in found:
        if p.exists():
            paths |= {p.absolute(), p.resolve()}  # a symlinked folder is reachable by both names
    system = [Path(d) for d in SYSTEM_DIRS]
    kept = sorted(p for p in paths if not _within(p, system) and p != Path("/"))
    return [p for p in kept if not _within(p, [q for q in kept if q != p])]  # outermost only


def bwrap_args(box: Path, hide: list[Path], mode: Mode = "user") -> list[str]:
    """bubblewrap's options: the minimal read-only file system, ``box`` at :data:`BOX`, ``hide`` covered."""
    args = ["bwrap"]
    for name in SYSTEM_DIRS:
        path = Path(name)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            args += ["--ro-bind", name, name]
    args += ["--perms", "0755", "--dir", "/etc"]
    for name in ETC_FILES:
        args += ["--ro-bind-try", name, name]
    args += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    made = {Path("/"), Path("/tmp")}
    bound = python_paths()
    for path in bound:
        real = path.resolve()
        for parent in reversed(path.parents):  # bwrap would make missing parents 0700: unreachable for nobody
            if parent not in made and not _within(parent, [Path(d) for d in SYSTEM_DIRS]):
                args += ["--perms", "0755", "--dir", str(parent)]
                made.add(parent)
        if not _within(path, [Path(d) for d in SYSTEM_DIRS]):
            args += ["--ro-bind", str(real), str(path)]
    for path in hide:  # what lies inside a bound folder (the others are not there at all)
        if not _within(path, bound):
            continue
        if path.is_dir():
            args += ["--tmpfs", str(path)]
        elif path.exists():
            args += ["--ro-bind", "/dev/null", str(path)]
    args += ["--bind", str(box), BOX, "--chdir", BOX, "--remount-ro", "/"]
    args += ["--die-with-parent", "--new-session", "--clearenv"]
    if mode == "user":
        args += ["--unshare-all"]
    else:  # as root, without a user namespace, so that setpriv can change to a user the host knows
        args += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    if mode == "nobody":
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return args


def inner_prefix(mode: Mode) -> list[str]:
    """What runs inside the sandbox before the graded command: the change to ``nobody`` in that mode."""
    if mode != "nobody":
        return []
    # setpriv sets the real, effective and saved ids: no way back to root; capabilities go with it.
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all"]


def environment(home: str, user: str = "nobody") -> dict[str, str]:
    """The environment of the graded code: no secrets of the grader's, single-threaded torch."""
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "USER": user,
        "LOGNAME": user,  # there is no /etc/passwd inside; getpass.getuser() reads these first
        "LANG": "C.UTF-8",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": f"{home}/.matplotlib",
        "IPYTHONDIR": f"{home}/.ipython",
        "OMP_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONWARNINGS": "ignore",
    }


def candidate_modes() -> list[Mode]:
    """The modes worth trying here, best first (see the module's docstring)."""
    if os.geteuid() != 0:
        return ["user"]
    return (["nobody"] if shutil.which("setpriv") else []) + ["root"]


def give_to_sandbox(box: Path, mode: Mode | None) -> None:
    """Make ``box`` and everything in it the sandbox user's, so that it can write its answers there."""
    if mode != "nobody":
        return
    for root, dirs, files in os.walk(box):
        for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
            os.chown(name, NOBODY, NOBODY, follow_symlinks=False)


def stop_all() -> None:
    """Kill every running sandbox (the grader is stopping); new ones end at once."""
    _STOP.set()


def reset() -> None:
    """Allow sandboxes again after :func:`stop_all`."""
    _STOP.clear()


@dataclass
class Outcome:
    """How the sandboxed run ended: its exit status (None if killed at the time limit) and its last output."""

    returncode: int | None
    timed_out: bool
    log_tail: str


def run(argv: list[str], box: Path, limits: Limits, hide: list[Path], mode: Mode | None) -> Outcome:
    """Run ``argv`` (paths in it as the sandbox sees them) with ``box`` as its private folder.

    ``mode`` is what the grader's probe found. With ``mode=None``
    (``--unsafe-no-sandbox``) the command runs in ``box`` with the same limits
    but nothing hidden and nothing read-only.
    """
    give_to_sandbox(box, mode)
    home = BOX if mode is not None else str(box)
    env = environment(home, "nobody" if mode == "nobody" else os.environ.get("USER", "root"))
    log_path = box.parent / f"{box.name}.log"
    with open(log_path, "wb") as log:
        if mode is not None:  # bwrap sets the environment inside; the outer one stays minimal
            setenv = [a for kv in env.items() for a in ("--setenv", *kv)]
            cmd = _prlimit(limits) + bwrap_args(box, hide, mode) + setenv + inner_prefix(mode) + argv
            outer_env = {"PATH": env["PATH"]}
        else:
            cmd, outer_env = _prlimit(limits) + argv, env
        proc = subprocess.Popen(cmd, cwd=box, env=outer_env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        try:
            deadline = time.monotonic() + limits.seconds
            while proc.poll() is None:
                if _STOP.is_set():
                    break
                if time.monotonic() >= deadline:
                    timed_out = True
                    break
                try:
                    proc.wait(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
                except subprocess.TimeoutExpired:
                    pass
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
