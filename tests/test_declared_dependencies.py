"""Each extra of pyproject.toml declares what its part imports (the review found the test extra short)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The repository's own modules (the tests put tools/ and tests/ on the path).
LOCAL = {"esa_tutorial", "oracle", "book_site", "conftest", "make_hostile", "tests"} | {
    p.stem for p in (ROOT / "tools").glob("*.py")}


def _top_level_imports(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - LOCAL - set(sys.stdlib_module_names)


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _distributions(modules: set[str]) -> dict[str, set[str]]:
    known = packages_distributions()
    return {m: {d.lower().replace("_", "-") for d in known.get(m, [])} for m in modules}


def test_the_test_extra_declares_every_package_the_tests_import() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _names(project["dependencies"]) | _names(project["optional-dependencies"]["test"])
    missing = {m: d for m, d in _distributions(_top_level_imports(ROOT / "tests")).items() if not d & declared}
    assert not missing, f"tests import these, but neither the dependencies nor the test extra declare them: {missing}"


def test_the_package_imports_only_what_it_declares() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = _names(project["dependencies"]) | _names(extras["course"])
    modules = _top_level_imports(ROOT / "esa_tutorial") - {"timm"}  # timm: optional, imported only if present
    missing = {m: d for m, d in _distributions(modules).items() if not d & declared}
    assert not missing, f"the package imports these without declaring them: {missing}"
