"""Sphinx extension: ``{chapter}`path``` links a chapter with its number and title.

The book numbers its chapters from the table of contents (``numbered: true`` in
``_toc.yml``), and a ``{doc}`` link shows the title only. A list of the chapters
("What you will build") should show the numbers the reader sees in the sidebar
without typing them, so that reordering ``_toc.yml`` cannot leave a stale number:

    - {chapter}`../notebooks/02_self_attention_cost`: full self-attention ...

renders as a link reading "2. Why full self-attention is expensive on images".
A target that the toc does not number is a build warning (``-W`` makes it an
error), never a link without its number.
"""

from __future__ import annotations

from docutils import nodes
from sphinx import addnodes
from sphinx.util import docname_join, logging
from sphinx.util.docutils import SphinxRole

logger = logging.getLogger(__name__)


class ChapterRole(SphinxRole):
    """A ``doc`` cross-reference wrapped in a node that remembers its target document."""

    def run(self) -> tuple[list[nodes.Node], list[nodes.system_message]]:
        target = self.text.strip().removesuffix(".md").removesuffix(".ipynb")
        xref = addnodes.pending_xref(self.rawtext, refdomain="std", reftype="doc", reftarget=target,
                                     refexplicit=False, refwarn=True, refdoc=self.env.docname)
        xref += nodes.inline(self.rawtext, target, classes=["xref", "std", "std-doc"])
        wrapper = nodes.inline(classes=["chapter-link"])
        wrapper["chapter"] = docname_join(self.env.docname, target)
        wrapper += xref
        return [wrapper], []


def number_chapter_links(app, doctree: nodes.document, docname: str) -> None:
    """After references are resolved: put the toc's number in front of each link's title."""
    for wrapper in doctree.findall(nodes.inline):
        target = wrapper.get("chapter")
        if target is None:
            continue
        number = app.env.toc_secnumbers.get(target, {}).get("")
        titles = [n for n in wrapper.findall(nodes.inline) if n is not wrapper]
        if not number or not titles:
            logger.warning(f"{{chapter}} link to {target!r}: the table of contents gives it no "
                           "chapter number", location=wrapper)
            continue
        titles[0].insert(0, nodes.Text(".".join(map(str, number)) + ". "))


def setup(app) -> dict:
    app.add_role("chapter", ChapterRole())
    app.connect("doctree-resolved", number_chapter_links)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
