"""Grading in bubblewrap sandboxes: honest scores for real and hostile submissions (fuzz report A1-A6).

Two grading passes share the cost of starting sandboxed kernels: one over the
solutions, the released stubs, a wrong answer and the hostile notebooks of
``tests/hostile/`` (A1-A5), one with a 10 s limit for the slow notebook (A6).
Each hostile notebook answers nothing, so its honest score is zero; the tests
also check that nothing outside its sandbox changed. The option checks (A6)
need no kernel.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest

from esa_tutorial.course import grading, sandbox, tape
from esa_tutorial.course.__main__ import main
from esa_tutorial.course.source import default_source, exercise_paths

HOSTILE = Path(__file__).parent / "hostile"
HOSTILE_NAMES = ("a1_points", "a2_monkeypatch", "a3_read_sources", "a4_write_outside", "a5_kill_and_hold",
                 "a7_forge_tape")
SOURCE = default_source()
SOURCES = exercise_paths()

WRONG_PPM = """
def my_ppm(x, pooling_sizes=(1, 3, 5)):
    # column-major tokens: a classic mistake
    return torch.cat([torch.nn.functional.adaptive_avg_pool2d(x, s).transpose(-1, -2).flatten(2)
                      for s in pooling_sizes], dim=-1)
"""
# On a developer's machine without bubblewrap these tests skip; in CI they must run, so a
# sandbox that cannot start there fails them instead.
needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None and not os.environ.get("CI"), reason="no bubblewrap (bwrap) here"
)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {(r["student"], r["notebook"]): r for r in csv.DictReader(f)}


def _hostile(name: str, subs: Path, **paths: str) -> None:
    text = (HOSTILE / f"{name}.ipynb").read_text()
    for key, value in paths.items():
        text = text.replace("{%s!r}" % key, repr(value).replace('"', '\\"'))
    (subs / name).mkdir()
    (subs / name / "ex1_ppm.ipynb").write_text(text)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One grading run (two at a time) over honest and hostile submissions; the files before and after."""
    subs = tmp_path_factory.mktemp("submissions")
    released = tmp_path_factory.mktemp("released")
    assert main(["release", str(released)]) == 0
    for path in SOURCES:
        (subs / "solution").mkdir(exist_ok=True)
        shutil.copy(path, subs / "solution" / path.name)
        (subs / "stub").mkdir(exist_ok=True)
        shutil.copy(released / path.name, subs / "stub" / path.name)
    wrong = nbformat.read(SOURCES[0], as_version=4)
    for c in wrong.cells:
        if c.metadata.get("nbgrader", {}).get("grade_id") == "ppm_solution":
            c.source = WRONG_PPM
    (subs / "wrong").mkdir()
    nbformat.write(wrong, subs / "wrong" / "ex1_ppm.ipynb")
    victim = subs / "solution" / "ex1_ppm.ipynb"
    csv_path = subs / "grades.csv"
    csv_path.write_text("an earlier run's grades\n")
    paths = dict(victim=str(victim), source=str(SOURCE), csv=str(csv_path))
    for name in HOSTILE_NAMES:
        _hostile(name, subs, **paths)
    before = {p: _md5(p) for p in [*SOURCES, *subs.rglob("*.ipynb")]}
    scratch = tmp_path_factory.mktemp("scratch")
    start = time.monotonic()
    saved, tempfile.tempdir = tempfile.tempdir, str(scratch)
    try:
        assert main(["grade", str(subs), "--timeout", "300", "--jobs", "2"]) == 0
    finally:
        tempfile.tempdir = saved
    seconds = time.monotonic() - start
    after_run = csv_path.read_text()
    time.sleep(3)  # A4's daemon, were it alive, would rewrite the grades every second
    return dict(rows=_rows(csv_path), before=before, csv=csv_path, after_run=after_run, seconds=seconds,
                scratch=scratch)


@needs_bwrap
def test_solutions_get_full_marks_and_stubs_zero(graded):
    rows = graded["rows"]
    for path in SOURCES:
        full, stub = rows[("solution", path.name)], rows[("stub", path.name)]
        assert full["score"] == full["max_score"] != "0", (path.name, full["feedback"])
        assert stub["score"] == "0", (path.name, stub["feedback"])
        assert "not implemented yet" in stub["feedback"]


@needs_bwrap
def test_wrong_answer_gets_the_checks_hint_and_only_the_other_points(graded):
    row = graded["rows"][("wrong", "ex1_ppm.ipynb")]
    assert row["score"] == "2" and row["max_score"] == "7"
    assert "ppm_check (0/3)" in row["feedback"] and "column-major" in row["feedback"]


@needs_bwrap
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_notebook_scores_zero_out_of_the_instructors_points(graded, name):
    row = graded["rows"][(name, "ex1_ppm.ipynb")]
    assert (row["score"], row["max_score"]) == ("0", "7"), row


@needs_bwrap
def test_a4_nothing_outside_the_sandbox_changed(graded):
    changed = [str(p) for p, md5 in graded["before"].items() if _md5(p) != md5]
    assert changed == []
    assert graded["csv"].read_text() == graded["after_run"]  # the daemon's later rewrite never came
    assert "sabotaged" not in graded["after_run"] and "me,1000" not in graded["after_run"]


@needs_bwrap
def test_a5_grading_went_on_after_the_killer_and_was_not_held_by_its_pipes(graded):
    rows = graded["rows"]
    assert len(rows) == 2 * len(SOURCES) + 1 + len(HOSTILE_NAMES)  # every submission has a row
    assert graded["seconds"] < 600  # the holder sleeps 600 s


@needs_bwrap
def test_a6_the_time_limit_holds_for_the_whole_notebook(tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    _hostile("a6_slow", subs)
    start = time.monotonic()
    assert main(["grade", str(subs), "--timeout", "10", "--jobs", "1"]) == 0
    elapsed = time.monotonic() - start
    row = _rows(subs / "grades.csv")[("a6_slow", "ex1_ppm.ipynb")]
    assert row["status"] == "timeout" and row["score"] == "0"
    assert float(row["seconds"]) < 15 and elapsed < 30  # the notebook wanted 36 s


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "abc"])
def test_a6_timeout_must_be_a_positive_finite_number(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["grade", str(tmp_path), "--timeout", value])
    assert exit_.value.code == 2
    assert "positive finite number of seconds" in capsys.readouterr().err or value == "abc"


@pytest.mark.parametrize("csv_name, message", [("missing/grades.csv", "does not exist"), (".", "is a folder")])
def test_the_csv_path_is_checked_before_grading(csv_name, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["grade", str(tmp_path), "--csv", str(tmp_path / csv_name)])
    assert message in capsys.readouterr().err


def test_without_bubblewrap_the_grader_refuses_and_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on the PATH
    with pytest.raises(SystemExit):
        main(["grade", str(tmp_path)])
    err = capsys.readouterr().err
    assert "bwrap not found" in err and "--unsafe-no-sandbox" in err


def test_a_missing_source_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["release", str(tmp_path / "out"), "--source", str(tmp_path / "nowhere")])
    assert "no exercise notebooks" in capsys.readouterr().err


def test_answers_are_taken_by_grade_id_only_from_solution_cells():
    source = nbformat.read(SOURCES[0], as_version=4)
    sub = nbformat.read(HOSTILE / "a1_points.ipynb", as_version=4)
    given = grading.answers(sub, source)
    assert set(given) == {"bins_solution", "ppm_solution"}  # the forged "bins_check" is not an answer
    planned = grading.plan(source, given, salt=1)["cells"]
    tests = [c for c in planned if c["kind"] == "test"]
    assert [c["id"] for c in tests] == ["bins_check", "ppm_check", "ppm_hidden"]
    assert all("check_" in c["source"] for c in tests)  # the instructor's test cells, hidden tests included
    assert grading.max_score(source) == 7


def test_a_test_cell_that_is_not_a_check_call_is_refused():
    source = nbformat.read(SOURCES[0], as_version=4)
    for c in source.cells:
        if c.metadata.get("nbgrader", {}).get("grade_id") == "bins_check":
            c.source = "assert my_bins(4, 2) == [(0, 2), (2, 4)]"
    with pytest.raises(grading.AuthoringError, match="not a call of a check"):
        grading.validate_tests(source, "ex1_ppm.ipynb")


def test_a_forged_tape_is_read_as_no_answer(tmp_path):
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04cos\nsystem\n.")
    os.symlink("/etc/passwd", tmp_path / "link.pt")
    os.mkfifo(tmp_path / "fifo.pt")
    for name in ("pickle.pt", "link.pt", "fifo.pt", "absent.pt"):
        with pytest.raises(tape.TapeError):
            grading.read_tape(tmp_path / name)


def test_without_a_repository_the_command_asks_for_source(tmp_path, monkeypatch, capsys):
    from esa_tutorial.course import source

    monkeypatch.setattr(source, "default_source", lambda: tmp_path / "site-packages" / "notebooks" / "exercises")
    with pytest.raises(SystemExit):
        main(["release", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "no exercise notebooks" in err and "pass --source FOLDER" in err


def test_unsafe_no_sandbox_still_grades_and_warns(tmp_path, capsys):
    subs = tmp_path / "subs"
    (subs / "alice").mkdir(parents=True)
    shutil.copy(SOURCES[0], subs / "alice" / SOURCES[0].name)
    assert main(["grade", str(subs), "--unsafe-no-sandbox", "--timeout", "120"]) == 0
    assert "--unsafe-no-sandbox: submissions run with your permissions" in capsys.readouterr().err
    row = _rows(subs / "grades.csv")[("alice", "ex1_ppm.ipynb")]
    assert (row["score"], row["max_score"], row["status"]) == ("7", "7", "graded")


def test_a_python_under_tmp_is_bound_back_into_the_private_tmp(monkeypatch, tmp_path):
    # A clone under /tmp (as CI may make) keeps its .venv there; the sandbox's private
    # /tmp must not hide it, or no submission can start.
    venv = Path("/tmp/some-clone/.venv")
    monkeypatch.setattr(sandbox, "python_paths", lambda: [venv, Path("/usr/lib/python3")])
    args = sandbox.bwrap_args(tmp_path, [])
    assert args.index("/tmp") < args.index(str(venv))
    assert args[args.index(str(venv)) - 1 : args.index(str(venv)) + 2] == ["--ro-bind", str(venv), str(venv)]
    assert "/usr/lib/python3" not in args  # already visible through the read-only /usr


# ----------------------------------------------------------------- round 2 (../shared/reviews/2026-12-04-fuzz.md)


@needs_bwrap
def test_a7_forged_tapes_cost_only_their_own_notebook(graded):
    row = graded["rows"][("a7_forge_tape", "ex1_ppm.ipynb")]
    assert (row["score"], row["status"]) == ("0", "graded"), row
    assert row["feedback"].count("changed after the test ran") == 3, row["feedback"]
    for reason in ("a tensor of 6000000 elements", "compressed member", "more than 200000 recorded values"):
        assert reason in row["feedback"], (reason, row["feedback"])
    assert graded["rows"][("solution", "ex1_ppm.ipynb")]["score"] == "7"  # graded in the same run


def test_grading_leaves_no_folder_behind(graded):
    # The `graded` run's temporary folders (the probe's, the work folder, the boxes) went into `scratch`
    # (torch may leave its own cache folder there, torchinductor_<user>: not the grader's).
    assert list(graded["scratch"].glob("esa-grade-*")) == []


def _only_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the nobody and root modes exist only when the grader runs as root")


@needs_bwrap
def test_as_root_the_probe_grades_a_tiny_notebook_as_nobody():
    _only_root()
    mode, note = grading.probe()
    assert (mode, note) == ("nobody", "sandboxes run as nobody")


@pytest.fixture(scope="module")
def graded_as_root(tmp_path_factory):
    """The instructor's solutions graded with the sandbox forced to root mode (no setpriv)."""
    _only_root()
    subs = tmp_path_factory.mktemp("root-mode")
    for path in SOURCES:
        (subs / "solution").mkdir(exist_ok=True)
        shutil.copy(path, subs / "solution" / path.name)
    workdir = tmp_path_factory.mktemp("work")
    os.chmod(workdir, 0o711)
    setup = grading.Setup(limits=sandbox.Limits(seconds=300), hide=(subs, SOURCE), workdir=workdir, mode="root")
    return grading.grade(subs, SOURCE, setup, jobs=2)


@needs_bwrap
def test_root_mode_grades_the_solutions_to_full_marks(graded_as_root):
    assert len(graded_as_root) == len(SOURCES)
    for g in graded_as_root:
        assert (g.status, g.score) == ("graded", g.max_score), g.row()
        assert g.max_score > 0


@needs_bwrap
def test_nobody_mode_with_a_system_python_outside_roots_home_grades_to_full_marks(tmp_path):
    # R1: a classroom server's Python (Debian's, in a venv outside /root) that nobody can run.
    # The venv sees this checkout's packages through a .pth file; the grader runs as root.
    _only_root()
    system = Path("/usr/bin/python3")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not system.exists() or subprocess.run([system, "-c", f"import sys; assert sys.version.startswith('{version}')"]
                                             ).returncode:
        pytest.skip(f"no Debian python{version} at {system} to build a nobody-readable venv from")
    venv = tmp_path / "classroom-venv"
    subprocess.run([system, "-m", "venv", "--without-pip", venv], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    ours = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir())
    (site / "checkout.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    subs = tmp_path / "subs"
    (subs / "teacher").mkdir(parents=True)
    shutil.copy(SOURCES[0], subs / "teacher" / SOURCES[0].name)
    done = subprocess.run([venv / "bin" / "python", "-m", "esa_tutorial.course", "grade", subs, "--source", SOURCE],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sandboxes run as nobody" in done.stderr
    row = _rows(subs / "grades.csv")[("teacher", "ex1_ppm.ipynb")]
    assert (row["score"], row["max_score"], row["status"]) == ("7", "7", "graded"), row


_SNOOP = r"""
import os, socket, sys
found = []
for path in sys.argv[1:]:
    try:
        found.append(f"read {path}: {open(path).read()[:40]!r}")
    except OSError:
        pass
for folder in ("/var/tmp", "/run", "/home", "/etc"):
    if os.path.isdir(folder) and set(os.listdir(folder)) - {"ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime"}:
        found.append(f"listed {folder}: {sorted(os.listdir(folder))[:5]}")
for path in sys.argv[1:]:
    if path.endswith(".sock"):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            found.append(f"connected to {path}")
        except OSError:
            pass
with open("report.txt", "w") as f:
    f.write("\n".join(found))
"""


@needs_bwrap
@pytest.mark.parametrize("mode", sandbox.MODES)
def test_the_sandbox_sees_no_host_secret_and_no_host_socket(mode, tmp_path):
    # R4, R5: a root-only file, /etc/shadow, root's home and a listening Unix socket of the host.
    if mode not in sandbox.candidate_modes():
        pytest.skip(f"mode {mode} does not exist for this user")
    import socket

    with tempfile.TemporaryDirectory(dir="/var/tmp" if os.access("/var/tmp", os.W_OK) else None) as host:
        secret = Path(host) / "secret.txt"
        secret.write_text("the host's secret")
        secret.chmod(0o600)
        sock_path = Path(host) / "host.sock"
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(sock_path))
        listener.listen(1)
        os.chmod(sock_path, 0o777)
        box = tmp_path / "box"
        box.mkdir()
        script = box / "snoop.py"
        script.write_text(_SNOOP)
        home = [str(p) for p in Path.home().glob(".*") if p.is_file()][:5]  # root's shell profile...
        targets = [str(secret), "/etc/shadow", *home, str(sock_path)]
        inside = f"{sandbox.BOX}/snoop.py"
        outcome = sandbox.run([sys.executable, inside, *targets], box, sandbox.Limits(seconds=60), [], mode)
        listener.close()
    assert outcome.returncode == 0, outcome.log_tail
    assert (box / "report.txt").read_text() == ""


@needs_bwrap
def test_the_sandbox_runs_as_nobody_without_capabilities(tmp_path):
    _only_root()
    box = tmp_path / "box"
    box.mkdir()
    code = "print(open('/proc/self/status').read())"
    outcome = sandbox.run([sys.executable, "-c", code], box, sandbox.Limits(seconds=60), [], "nobody")
    status = dict(line.split(":\t", 1) for line in outcome.log_tail.splitlines() if ":\t" in line)
    assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
    assert int(status["CapPrm"], 16) == int(status["CapEff"], 16) == int(status["CapAmb"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"


@needs_bwrap
def test_a_memory_limit_too_small_for_torch_is_refused_before_grading(tmp_path, capsys):
    # R8: 512 MiB cannot import torch; the student must not be blamed for the crash.
    subs = tmp_path / "subs"
    (subs / "alice").mkdir(parents=True)
    shutil.copy(SOURCES[0], subs / "alice" / SOURCES[0].name)
    with pytest.raises(SystemExit):
        main(["grade", str(subs), "--memory-mb", "512"])
    assert "--memory-mb 512 is too small" in capsys.readouterr().err
    assert not (subs / "grades.csv").exists()


@pytest.mark.parametrize("option, value", [("--memory-mb", "99999999999999999999"), ("--memory-mb", "100"),
                                           ("--jobs", "99999999999999999999"), ("--timeout", "1e308")])
def test_grade_options_out_of_range_are_refused_with_the_range(option, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["grade", str(tmp_path), option, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "expected" in err and "Traceback" not in err


@needs_bwrap
def test_a_stopped_grader_kills_its_sandboxes_and_removes_its_folders(tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    _hostile("a6_slow", subs)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "esa_tutorial.course", "grade", subs, "--timeout", "120"],
                            env={**os.environ, "TMPDIR": str(scratch)}, stderr=subprocess.PIPE, text=True)
    assert "grading in bubblewrap sandboxes" in proc.stderr.readline()  # the probe is done
    time.sleep(3)  # the slow notebook is in its sandbox now
    assert list(scratch.glob("esa-grade-*/box-*")), "grading never started"
    proc.terminate()
    assert proc.wait(timeout=30) != 0
    assert list(scratch.glob("esa-grade-*")) == []


def test_folders_of_a_killed_grading_run_are_removed_at_the_next_start(tmp_path):
    # R2: an OOM-killed run left /tmp/esa-grade-* with plan.json (the hidden tests) behind.
    dead = tmp_path / "esa-grade-99999999-abc123"  # above any pid_max: no such process
    (dead / "box-x").mkdir(parents=True)
    (dead / "box-x" / "plan.json").write_text("hidden tests")
    dead_probe = tmp_path / "esa-grade-probe-99999999-def456"
    dead_probe.mkdir()
    alive = tmp_path / f"esa-grade-{os.getpid()}-ghi789"  # a run in progress
    alive.mkdir()
    other = tmp_path / "esa-grade-notes"
    other.mkdir()
    assert sorted(grading.sweep_stale(tmp_path)) == sorted([dead, dead_probe])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name])
