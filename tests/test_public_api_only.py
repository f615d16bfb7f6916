"""The package uses public torch API only and leaves process-wide state alone (a grep over its sources)."""

import re
from pathlib import Path

import esa_tutorial

SOURCES = sorted(Path(esa_tutorial.__file__).parent.rglob("*.py"))
FORBIDDEN = {
    r"torch\._[A-Za-z]": "a private torch API (torch._*)",
    r"_python_dispatch": "torch.utils._python_dispatch (private)",
    r"set_num_threads|set_num_interop_threads": "a process-wide thread-count change",
}
# Model code runs inside users' autograd, inference-mode, autocast and dispatch-mode contexts, which are
# thread-local: no Python threads there. (Course tooling that runs notebooks in parallel is not model code.)
THREADS = r"\bThreadPoolExecutor\b|\bimport threading\b"
MODEL_CODE = [p for p in SOURCES if "course" not in p.parts and p.name not in ("assignments.py", "checks.py")]


def test_sources_found():
    names = {p.name for p in SOURCES}
    assert {"folded.py", "esa.py", "attention.py"} <= names


def test_no_private_torch_api_and_no_thread_changes():
    hits = []
    for path in SOURCES:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for pattern, what in FORBIDDEN.items():
                if re.search(pattern, line):
                    hits.append(f"{path.name}:{number}: {what}: {line.strip()}")
    for path in MODEL_CODE:
        if re.search(THREADS, path.read_text(encoding="utf-8")):
            hits.append(f"{path.name}: Python threads in model code")
    assert not hits, "\n".join(hits)


def test_the_grep_would_catch_the_old_kernel():
    old = "torch._softmax(x, -1, False, out=buf); torch.set_num_threads(1)"
    assert re.search(r"torch\._[A-Za-z]", old) and re.search("set_num_threads", old)
