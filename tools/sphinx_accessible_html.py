"""Sphinx extension: two fixes to the HTML the theme and docutils write, for axe-core.

tests/browser/test_layout.py runs axe-core's WCAG 2 A and AA rules on every page.
Two findings come from the tools, not from the book's text:

* the sidebar's collapsible chapters (pydata-sphinx-theme) open with a
  ``<summary>`` holding only a decorative chevron, so a screen reader announces a
  button without a name (``summary-name``). Each gets an ``aria-label`` naming the
  chapter whose sections it shows or hides.
* docutils writes the bibliography as ``<div role="list">`` of
  ``<div role="doc-biblioentry">``; DPUB-ARIA deprecated that role, and a list must
  hold list items (``aria-deprecated-role``, ``aria-required-children``). Each
  entry becomes ``role="listitem"`` of that list.
"""

from __future__ import annotations

import re
from typing import Any

from bs4 import BeautifulSoup

BIBLIOENTRY = re.compile(r'(<div class="citation" id="[^"]*" )role="doc-biblioentry"')


def label_toggles(html: str) -> str:
    """Give every nameless ``<summary>`` of a sidebar fragment an ``aria-label``."""
    if "<summary" not in html:
        return html
    soup = BeautifulSoup(html, "html.parser")
    for summary in soup.find_all("summary"):
        if summary.get_text(strip=True) or summary.get("aria-label"):
            continue
        item = summary.find_parent("li")
        link = item.find("a") if item else None
        name = link.get_text(" ", strip=True) if link else "this chapter"
        summary["aria-label"] = f"Sections of {name}"
    return str(soup)


def fix_page(app, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Wrap the theme's sidebar builder and fix the body's bibliography roles."""
    build = context.get("generate_toctree_html")
    if callable(build) and not getattr(build, "_labels_toggles", False):
        def labelled(*args: Any, **kwargs: Any) -> str:
            return label_toggles(str(build(*args, **kwargs)))

        labelled._labels_toggles = True
        context["generate_toctree_html"] = labelled
    body = context.get("body")
    if isinstance(body, str) and "doc-biblioentry" in body:
        context["body"] = BIBLIOENTRY.sub(r'\1role="listitem"', body)


def setup(app) -> dict:
    # After the theme has put its sidebar builder into the page's context.
    app.connect("html-page-context", fix_page, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
