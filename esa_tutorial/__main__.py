"""``python -m esa_tutorial``: what the package offers, its commands and its Python API.

The package itself does nothing when run; its commands are submodules, each with
``--help``. This lists them so that a reader who types the package's name finds them.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Sequence

# (module, what it does): every entry is a package with a __main__ (a test checks).
COMMANDS = (
    ("esa_tutorial.bench", "time, FLOPs and memory of the attention layers, literal vs folded ESA"),
    ("esa_tutorial.train", "train LDNet (small or Res2Net-50, one GPU or several) on polyps"),
    ("esa_tutorial.evaluate", "score a checkpoint on test folders as LDNet's test.py does"),
    ("esa_tutorial.experiments", "retrain the book's context-task and ablation models"),
    ("esa_tutorial.course", "release the exercises to students and grade what they hand back"),
)


def overview() -> str:
    """The text ``python -m esa_tutorial`` prints."""
    import esa_tutorial

    width = max(len(name) for name, _ in COMMANDS) + len("python -m ")
    lines = [f"esa_tutorial {esa_tutorial.__version__}: Efficient Self-Attention "
             "(LDNet, MICCAI 2022), built step by step.", "",
             "Commands (each explains itself with --help):"]
    lines += [f"  {'python -m ' + name:<{width}}  {what}" for name, what in COMMANDS]
    lines += ["", "In Python:",
              textwrap.fill("from esa_tutorial import " + ", ".join(sorted(esa_tutorial.__all__, key=str.lower)),
                            width=88, initial_indent="  ", subsequent_indent="      "),
              "  and the subpackages nn (the models), train, data, metrics, checkpoints, files,",
              "  book (the chapters' figures and analyses).",
              "", "The book (make book) derives each piece; its API page documents every one."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m esa_tutorial", description=__doc__.splitlines()[0])
    parser.parse_args(argv)  # only --help; anything else is an error that names it
    print(overview())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
