"""Write the hostile submissions of tests/test_course_grading.py (run once; the .ipynb files are committed).

Each is a submission of exercise 1 that answers nothing and tries one attack of the fuzz
report (A1-A6, ../shared/reviews/2026-11-26-fuzz.md). Paths of the grader's files are
filled in by the test at run time ({victim}, {source}, {csv}).
"""

from pathlib import Path

import nbformat


def answer(gid: str, source: str, **meta) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["nbgrader"] = {"grade_id": gid, "solution": True, "grade": False, **meta}
    return cell


STUB = "def my_ppm(x, pooling_sizes=(1, 3, 5)):\n    raise NotImplementedError()"
ATTACKS = {
    # A1: the own answer cell relabelled as a test worth 1000 points, and a copied test cell.
    "a1_points": [
        answer("bins_solution", "def my_bins(length, bins):\n    return []", grade=True, solution=False, points=1000),
        answer("bins_check", "pass", grade=True, solution=False, points=1000),
        answer("ppm_solution", STUB),
    ],
    # A2: checks redefined, the package and torch monkeypatched, IPython hooks that blank or swallow.
    "a2_monkeypatch": [
        answer("bins_solution", """
import torch
import esa_tutorial.course.checks as C
from esa_tutorial.course import tape
from IPython import get_ipython

def my_bins(length, bins):
    return [(0, 1)] * bins                     # wrong on purpose

def check_adaptive_bins(*a, **k): return "passed"
def check_ppm(*a, **k): return "passed"
C.adaptive_bins = lambda length, bins: [(0, 1)] * bins
C.check_adaptive_bins = C.check_ppm = check_ppm
torch.allclose = lambda *a, **k: True
tape.Recording.ask = lambda self, label, fn, args, kwargs: None
ip = get_ipython()
ip.input_transformers_cleanup.append(lambda lines: [] if any("check" in l for l in lines) else lines)
ip.set_custom_exc((BaseException,), lambda *a, **k: None)
"""),
        answer("ppm_solution", "def my_ppm(x, pooling_sizes=(1, 3, 5)):\n    return x.flatten(2)[..., :35]"),
    ],
    # A3: find the grader and its --source through /proc, run the instructor's solutions.
    "a3_read_sources": [
        answer("bins_solution", """
import glob, json, os
found = []
for cmdline in glob.glob("/proc/*/cmdline"):
    try:
        found += open(cmdline, "rb").read().split(b"\\0")
    except OSError:
        pass
candidates = [p.decode() for p in found if p] + [{source!r}]
for folder in candidates:
    for path in glob.glob(os.path.join(folder, "ex1_ppm.ipynb")) + glob.glob(folder):
        try:
            nb = json.load(open(path))
        except Exception:
            continue
        for cell in nb.get("cells", []):
            if cell.get("cell_type") == "code" and "BEGIN SOLUTION" in "".join(cell["source"]):
                exec("".join(cell["source"]))
"""),
        answer("ppm_solution", STUB),
    ],
    # A4: overwrite a classmate's submission, the instructor's source and the grades, now and later.
    "a4_write_outside": [
        answer("bins_solution", """
import os, time
for path in ({victim!r}, {source!r} + "/ex1_ppm.ipynb", {csv!r}):
    try:
        with open(path, "w") as f:
            f.write("sabotaged")
    except OSError:
        pass
if os.fork() == 0:                 # a detached daemon that rewrites the grades every second for 5 minutes
    os.setsid()
    if os.fork() == 0:
        for _ in range(300):
            time.sleep(1)
            try:
                open({csv!r}, "w").write("student,score\\nme,1000\\n")
            except OSError:
                pass
    os._exit(0)
"""),
        answer("ppm_solution", STUB),
    ],
    # A5: kill every process it can see (the grader included, if it could), and hold the output open.
    "a5_kill_and_hold": [
        answer("bins_solution", """
import os, signal, subprocess, sys
holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
for entry in os.listdir("/proc"):
    if entry.isdigit() and int(entry) not in (os.getpid(), holder.pid):
        try:
            os.kill(int(entry), signal.SIGKILL)
        except OSError:
            pass
"""),
        answer("ppm_solution", STUB),
    ],
    # A6: far longer than the time limit, in many short steps.
    "a6_slow": [
        answer("bins_solution", "import time\nfor _ in range(40):\n    time.sleep(0.9)"),
        answer("ppm_solution", STUB),
    ],
    # A7 (round 2, R2): rewrite the recorded answers after the tests ran (my_bins and my_ppm run again in
    # later cells): a one-element tensor expanded to millions of rows, a deflated tape that inflates to
    # 80 MB, and lists that share themselves into a billion items.
    "a7_forge_tape": [
        answer("bins_solution", """
import io, zipfile, torch

def forge():  # keep each taped entry (its label and digest), replace its answer
    out = "/tmp/box/out/"

    def rewrite(name, value, deflate=False):
        try:
            tape = torch.load(out + name, weights_only=True)
        except Exception:
            return  # not recorded yet
        for entry in tape:
            entry.update(kind="value", value=value)
        raw = io.BytesIO()
        torch.save(tape, raw)
        with zipfile.ZipFile(io.BytesIO(raw.getvalue())) as src, \\
                zipfile.ZipFile(out + name, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as dst:
            for member in src.namelist():
                dst.writestr(member, src.read(member))

    rewrite("bins_check.pt", torch.zeros(1, dtype=torch.long).expand(3_000_000, 2))
    rewrite("ppm_check.pt", torch.zeros(20_000_000), deflate=True)
    level = [0] * 1000
    for _ in range(3):
        level = [level] * 1000
    rewrite("ppm_hidden.pt", level)

def my_bins(length, bins):
    forge()
    return [(i * length // bins, -(-(i + 1) * length // bins)) for i in range(bins)]
"""),
        answer("ppm_solution", "def my_ppm(x, pooling_sizes=(1, 3, 5)):\n    forge()\n    raise NotImplementedError()"),
    ],
}

if __name__ == "__main__":
    here = Path(__file__).parent
    for name, cells in ATTACKS.items():
        if (here / f"{name}.ipynb").exists():
            continue  # committed; new cell ids would change them
        nb = nbformat.v4.new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, here / f"{name}.ipynb")
        print(f"wrote {name}.ipynb")
