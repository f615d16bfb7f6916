"""Where the instructor's exercise notebooks are: the repository's, the copies in the package, or a folder you name."""

from __future__ import annotations

from pathlib import Path


def repository_source() -> Path:
    """``notebooks/exercises`` of the repository the package is used from (a clone, an editable install)."""
    return Path(__file__).resolve().parents[2] / "notebooks" / "exercises"


def packaged_source() -> Path:
    """The copies of the exercise notebooks inside an installed wheel (written there by ``setup.py``)."""
    return Path(__file__).resolve().parent / "exercises"


def default_source() -> Path:
    """The repository's exercises when there is a repository, else the copies installed with the package."""
    repository = repository_source()
    return repository if any(repository.glob("*.ipynb")) else packaged_source()


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
