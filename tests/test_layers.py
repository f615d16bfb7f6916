"""The package's layers, as book/api.md describes them, hold in its imports.

1. the model library (every module not named below; the modules in ``nn``
import only ``nn``, validation, checkpoints and files), 2. what the book shows
(``book``: figures, attention maps, the context and fine-key tasks; experiments, the benchmark),
3. command lines (``__main__.py``), 4. the course. A layer imports only from
the layers before it (and the course from 1-2 only), and argparse lives in
``__main__.py`` alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "esa_tutorial"
SHOWN = {"book", "experiments", "bench"}
# What the model library (esa_tutorial.nn) may import from the package: itself and these.
NN_NEEDS = {"esa_tutorial.validation", "esa_tutorial.checkpoints", "esa_tutorial.files"}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def _layer(module: str) -> int:
    parts = module.split(".")
    if parts[-1] == "__main__":
        return 3
    if len(parts) > 1 and parts[1] == "course":
        return 4
    if len(parts) > 1 and parts[1] in SHOWN:
        return 2
    return 1


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules that ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = _module(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            # `from . import data` imports a submodule, not a name.
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


SOURCES = sorted(PACKAGE.rglob("*.py"))


def _known(name: str) -> bool:
    path = PACKAGE.parent / Path(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: _module(p))
def test_a_module_imports_only_earlier_layers(path: Path) -> None:
    module = _module(path)
    layer = _layer(module)
    for name in _imports(path):
        if not name.startswith("esa_tutorial") or not _known(name):
            continue
        other = _layer(name)
        if layer == 4:  # the course: the model library and the book's helpers, never a command line
            assert other in (1, 2, 4), f"{module} (course) imports {name} (layer {other})"
        elif layer == 3:
            assert other <= 4, name
        else:
            assert other <= layer, f"{module} (layer {layer}) imports {name} (layer {other})"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: _module(p))
def test_argparse_lives_only_in_command_lines(path: Path) -> None:
    uses = "argparse" in _imports(path)
    assert not uses or path.name == "__main__.py", f"{_module(path)} parses arguments"


def test_the_checker_sees_a_violation() -> None:
    # esa_tutorial/__init__.py imports the library; a made-up import of the course would be caught.
    assert _layer("esa_tutorial.course.grading") == 4 > _layer("esa_tutorial.nn.ldnet") == 1
    assert _layer("esa_tutorial.bench.__main__") == 3
    assert "esa_tutorial.validation" in _imports(PACKAGE / "nn" / "esa.py")
    assert _layer("esa_tutorial.book.plotting") == 2


@pytest.mark.parametrize("path", sorted((PACKAGE / "nn").glob("*.py")), ids=lambda p: _module(p))
def test_the_model_library_stands_on_its_own(path: Path) -> None:
    for name in _imports(path):
        if name.startswith("esa_tutorial") and _known(name):
            assert name.startswith("esa_tutorial.nn") or name in NN_NEEDS, f"{_module(path)} imports {name}"
