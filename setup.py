"""One build step beyond pyproject.toml: the exercise notebooks go into the wheel as package data.

The instructor's notebooks live in ``notebooks/exercises`` (the book's table of
contents and its helpers use that path). A wheel gets byte-identical copies in
``esa_tutorial/course/exercises``, so that ``python -m esa_tutorial.course
release OUT`` works after a plain ``pip install``. An editable install reads
``notebooks/exercises`` itself (see ``esa_tutorial.course.source``).
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

EXERCISES = Path("notebooks") / "exercises"
PACKAGED = Path("esa_tutorial") / "course" / "exercises"


class BuildWithExercises(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / PACKAGED
        self.mkpath(str(target))
        for notebook in sorted(EXERCISES.glob("*.ipynb")):
            self.copy_file(str(notebook), str(target / notebook.name))


setup(cmdclass={"build_py": BuildWithExercises})
