"""No built page shows an unresolved placeholder such as ``{BIB}`` (``make test-browser`` builds first).

The sources are checked by ``tools/book_truth.py`` (rule ``placeholder``); this reads what a
reader gets, the HTML of every page, in case a placeholder comes from elsewhere (a glued
value, a template, an include).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("book_truth", ROOT / "tools" / "book_truth.py")
book_truth = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("book_truth", book_truth)
_spec.loader.exec_module(book_truth)
HTML = ROOT / "_build" / "html"


def test_no_built_page_shows_a_placeholder() -> None:
    pages = [p for p in HTML.rglob("*.html") if "_static" not in p.parts and "reports" not in p.parts]
    assert pages, f"no built pages under {HTML}: run `make book` first (make test-browser does)"
    found = {p.relative_to(HTML).as_posix(): hits
             for p in pages if (hits := book_truth.check_html(p.read_text(errors="replace")))}
    assert not found, found
