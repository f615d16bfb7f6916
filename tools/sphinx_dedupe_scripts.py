"""Sphinx extension: write each page's inline scripts once.

Sphinx 7.4 adds a script registered after the builder starts (sphinx-thebe's
``const THEBE_JS_URL = ...`` config, sphinx-togglebutton's selector) twice: once
with ``filename=None`` when it is registered and once with ``filename=''`` when
writing starts, and the two do not compare equal. The second ``const`` is a
console error on every page ("Identifier 'THEBE_JS_URL' has already been
declared"), which the browser tests catch. This keeps the first of each.
"""

from __future__ import annotations

from typing import Any


def _script_key(script: Any) -> tuple:
    attributes = getattr(script, "attributes", {})
    return (getattr(script, "filename", script) or "", getattr(script, "priority", 500),
            tuple(sorted(attributes.items())))


def dedupe_scripts(app, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Drop repeated entries of the page's ``script_files``, keeping their order."""
    scripts = context.get("script_files")
    if scripts:
        first: dict[tuple, Any] = {}
        for script in scripts:
            first.setdefault(_script_key(script), script)
        scripts[:] = first.values()


def setup(app) -> dict:
    app.connect("html-page-context", dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
