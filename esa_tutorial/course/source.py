"""Where the instructor's exercise notebooks are: the repository's, or a folder you name."""

from __future__ import annotations

from pathlib import Path


def default_source() -> Path:
    """``notebooks/exercises`` of the repository the package is installed from (an editable install).

    A package installed with plain ``pip install`` has no such folder: then
    pass ``--source`` (see :func:`exercise_paths`).
    """
    return Path(__file__).resolve().parents[2] / "notebooks" / "exercises"


def exercise_paths(source: Path | None = None) -> list[Path]:
    """The instructor's exercise notebooks (``*.ipynb`` directly in ``source``), sorted by name.

    Raises FileNotFoundError naming the folder and what to pass instead when there are none.
    """
    folder = default_source() if source is None else Path(source)
    paths = sorted(folder.glob("*.ipynb")) if folder.is_dir() else []
    if not paths:
        where = "the folder given with --source" if source is not None else "next to the installed package"
        raise FileNotFoundError(
            f"no exercise notebooks (*.ipynb) in {folder} ({where}); pass --source FOLDER, the folder "
            "of the instructor's exercise notebooks (notebooks/exercises in the book's repository)"
        )
    return paths
