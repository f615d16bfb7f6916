"""Catch the common kinds of drift between the book's prose and its code.

    python tools/book_truth.py                       # check every notebook and book/*.md
    python tools/book_truth.py notebooks/06_ldnet_small.ipynb book/paper.md

Prose means the markdown cells of notebooks and the pages ``book/*.md``. Code spans,
code blocks, math and link targets are not prose. Five rules:

``number``
    A number next to a unit or a comparison word (``241 ms``, ``0.2 GiB``, ``29 %``,
    ``3.2x faster``, ``358 times fewer``) must be a *cited fact*: the same sentence names
    its source after it, as ``(paper, Table 2)``, ``(LDNet code, models/LDNet.py)``, an
    author-year reference (``Zhang et al. (2022)``, a link to the bibliography, a
    ``{cite}`` role on book pages) or an HTML comment ``<!-- cited: where it comes from -->``;
    a guess says so, ``(an estimate, ...)``.
    A number a cell computes is never typed: the cell prints it and the prose points at
    the printout ("the table above"). Write it in math (``$2^{30}$``) if it is a
    definition, not a measurement.
``chapter-number``
    No typed "chapter 2": a link names the chapter and follows it if the order changes.
    Link the chapter instead, ``[Pyramid pooling](03_pyramid_pooling.ipynb)``.
``myst-role``
    No MyST role (``{doc}``, ``{cite}``, ``{numref}``, ``{glue}``, ...) or ``(label)=``
    line in notebook markdown: Colab and Jupyter show them raw. Book pages may use them.
``placeholder``
    No unresolved template placeholder such as ``{BIB}`` or ``{TODO}`` (braces around
    capitals, outside code and math): it would render literally. :func:`check_html` applies
    the same rule to the text of a built page.
``ignored-output``
    A decimal number (two or more decimals) printed only by cells tagged
    ``nbval-ignore-output`` (machine-dependent, unchecked) must not appear in the
    notebook's prose: a conclusion cannot rest on an output that may change.

``check_paths`` returns the findings; the command exits with 1 if there are any.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
IGNORE_TAG = "nbval-ignore-output"

NUM = r"(?<![\w.$^])\d(?:[\d,]*\d)?(?:\.\d+)?"
UNIT = (r"(?:ms|µs|us|ns|s|sec|seconds?|minutes?|mins?|hours?|GiB|MiB|KiB|TiB|GB|MB|KB|kB|TB|"
        r"[kMGT]?FLOPs?|%|percent)")
COMPARE = r"(?:x|×|times)\s*(?:faster|slower|fewer|less|more|smaller|larger|bigger|cheaper|longer)"
NUMBER_WITH_UNIT = re.compile(rf"{NUM}\s?(?:{UNIT}(?![\w])|{COMPARE}\b)")
CITED = re.compile(r"\((?:paper|LDNet(?:'s)? code|an? estimate)\b|et al\.|bibliography\.md|"
                   r"\{cite[:\w]*\}|<!--\s*cited:", re.I)
SENTENCE_END = re.compile(r"(?<!et al)(?<!e\.g)(?<!i\.e)(?<!vs)[.!?](?=\s|$)|\n\s*\n")
CHAPTER_NUMBER = re.compile(r"\b[Cc]hapters?\s+\d")
MYST_ROLE = re.compile(r"\{(?:doc|cite|numref|glue|ref|eq|term|download|cite:\w+|glue:\w+)\}`"
                       r"|^\([\w-]+\)=\s*$", re.M)
PLACEHOLDER = re.compile(r"\{[A-Z][A-Z0-9_]*\}")
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d{2,}(?![\d])")


@dataclass(frozen=True)
class Finding:
    """One place where prose and code may drift apart."""

    path: str
    cell: int | None  # notebook cell index (0-based), None for a page
    rule: str
    text: str

    def __str__(self) -> str:
        where = f"{self.path} cell {self.cell}" if self.cell is not None else self.path
        return f"{where}: [{self.rule}] {self.text}"


def prose(markdown: str) -> str:
    """The markdown with code, math, link targets and (non-citation) comments blanked.

    Blanked spans keep their length in spaces-free placeholders so sentence boundaries
    survive: code becomes ``CODE`` and math ``MATH``.
    """
    text = re.sub(r"^(```|~~~).*?^\1\s*$", "CODE", markdown, flags=re.S | re.M)
    text = re.sub(r"\$\$.*?\$\$", "MATH", text, flags=re.S)
    text = re.sub(r"(?<!\\)\$[^$\n]+?(?<!\\)\$", "MATH", text)
    text = re.sub(r"`[^`\n]*`", "CODE", text)
    text = re.sub(r"\]\([^)\s]*\)", "]", text)  # link targets (file names, URLs)
    text = re.sub(r"<!--(?!\s*cited:).*?-->", "", text, flags=re.S)
    return text


def _with_roles_kept(markdown: str) -> str:
    """Markdown without code blocks and code spans, for the role check (roles live outside them)."""
    text = re.sub(r"^(```|~~~).*?^\1\s*$", "", markdown, flags=re.S | re.M)
    return text


def check_text(markdown: str, *, notebook: bool) -> list[tuple[str, str]]:
    """(rule, snippet) for every problem in one piece of markdown."""
    found: list[tuple[str, str]] = []
    text = prose(markdown)
    for m in NUMBER_WITH_UNIT.finditer(text):
        rest = text[m.start():]
        end = SENTENCE_END.search(rest, len(m.group(0)))
        stop = end.end() if end else len(rest)
        sentence = rest[:stop]
        if rest[stop:].lstrip().startswith("<!--"):  # a comment right after the sentence
            sentence += rest[stop:stop + rest[stop:].find("-->") + 3]
        if not CITED.search(sentence):
            found.append(("number", _snippet(text, m.start(), m.end())))
    for m in CHAPTER_NUMBER.finditer(text):
        found.append(("chapter-number", _snippet(text, m.start(), m.end())))
    for m in PLACEHOLDER.finditer(text):
        found.append(("placeholder", _snippet(text, m.start(), m.end())))
    if notebook:
        for m in MYST_ROLE.finditer(_with_roles_kept(markdown)):
            found.append(("myst-role", m.group(0).strip()))
    return found


def check_html(html: str) -> list[str]:
    """Unresolved placeholders (``{BIB}``) in the visible text of a built page, with context.

    Scripts, styles, code, and math (MathJax's ``\\(..\\)``, ``\\[..\\]``, ``$$..$$``
    and elements of class ``math``) are left out: braces there are markup, not text.
    """
    text = re.sub(r"<(script|style|pre|code)\b.*?</\1>", " ", html, flags=re.S | re.I)
    text = re.sub(r"<(span|div)\b[^>]*class=\"[^\"]*\bmath\b[^\"]*\"[^>]*>.*?</\1>", " ", text, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", text)
    text = re.sub(r"\\\(.*?\\\)|\\\[.*?\\\]|\$\$.*?\$\$", " ", text, flags=re.S)
    return [_snippet(text, m.start(), m.end()) for m in PLACEHOLDER.finditer(text)]


def _snippet(text: str, start: int, end: int, pad: int = 40) -> str:
    return " ".join(text[max(0, start - pad): end + pad].split())


def _output_text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "data" in out and "text/plain" in out["data"]:
            parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


def check_notebook(path: Path) -> list[Finding]:
    """Findings of every rule in one notebook (its markdown and its stored outputs)."""
    nb = nbformat.read(path, as_version=4)
    rel = _rel(path)
    findings = []
    checked, ignored = set(), set()
    for cell in nb.cells:
        if cell.cell_type == "code":
            target = ignored if IGNORE_TAG in cell.metadata.get("tags", []) else checked
            target.update(DECIMAL.findall(_output_text(cell)))
    unchecked_only = ignored - checked
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        findings += [Finding(rel, i, rule, text) for rule, text in check_text(cell.source, notebook=True)]
        for number in sorted(set(DECIMAL.findall(prose(cell.source))) & unchecked_only):
            findings.append(Finding(rel, i, "ignored-output",
                                    f"{number} is printed only by a {IGNORE_TAG} cell"))
    return findings


def check_page(path: Path) -> list[Finding]:
    """Findings in one book page (MyST roles are allowed there)."""
    return [Finding(_rel(path), None, rule, text)
            for rule, text in check_text(path.read_text(), notebook=False)]


def book_files(root: Path = ROOT) -> list[Path]:
    """Every notebook of the book and every page in book/."""
    notebooks = sorted(p for p in (root / "notebooks").rglob("*.ipynb")
                       if ".ipynb_checkpoints" not in p.parts)
    return notebooks + sorted((root / "book").glob("*.md"))


def check_paths(paths: list[Path]) -> list[Finding]:
    """Findings of every rule in the given notebooks and pages."""
    findings: list[Finding] = []
    for path in paths:
        findings += check_notebook(path) if path.suffix == ".ipynb" else check_page(path)
    return findings


def _rel(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks and pages (default: all)")
    args = parser.parse_args(argv)
    findings = check_paths(args.paths or book_files())
    for f in findings:
        print(f)
    print(f"{len(findings)} finding(s)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
