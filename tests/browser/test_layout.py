"""Every page as a reader's window shows it: nothing cut off, tables as tables, accessible.

* Desktop, a 1200x900 window: no block of the article (code, output, formula,
  table) scrolls sideways or runs past the column, collapsed cells opened as a
  reader would open them (book/_static/book.css makes the room).
* Phone, 390 px wide: the page itself never scrolls sideways, no printed output is
  cut (outputs wrap) and no figure runs past the column unless it sits in a box that
  scrolls. Code cells, tables and a notebook's wide figure may scroll inside their
  own box there: Python's indentation is its syntax, so code lines are not wrapped, a
  seven-column table does not fit 390 px at a readable size, and a figure shrunk to
  the screen would show its text at a few pixels.
* Figures: no text smaller than 70% of the body text as shown, at both widths.
* No output or paragraph shows a Markdown table as text (``|---|---|``), and no
  inline formula can be parted from the ")" after it by a line break.
* axe-core 4 with the WCAG 2 A and AA rules finds no violation. axe-core is
  vendored (tests/browser/vendor/axe-core, MPL-2.0, see VENDORED.txt) so that the
  test runs offline and always with the same rules.

``test_the_checks_find_what_they_look_for`` runs the same checks on a small page
with one fault of each kind, so that a check that stopped working cannot pass.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from PIL import Image

from book_site import SITE, all_pages
from esa_tutorial.book.plotting import TEXT_RECORD

DESKTOP = (1200, 900)
PHONE = (390, 844)
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
AXE_TAGS = ["wcag2a", "wcag2aa"]
# No text in a figure smaller than this share of the body text, as the figure is shown.
LEGIBLE = 0.7

# A Markdown table's rule line: |---|---| (with optional colons and outer pipes), also as
# Markdown rendered as a paragraph shows it, with "---" turned into an em dash.
_RULE_CELL = r"\s*:?(?:-{3,}|[\u2013\u2014]+):?\s*"
MARKDOWN_RULE = re.compile(rf"^\s*\|?{_RULE_CELL}(\|{_RULE_CELL})+\|?\s*$", re.MULTILINE)

# After MathJax has typeset (a formula's width is known only then): what is cut,
# what overflows the page, and the text a Markdown table would show up in.
LAYOUT_JS = r"""
const done = arguments[arguments.length - 1];
function describe(e) {
  const text = (e.textContent || e.getAttribute('src') || '').trim().replace(/\s+/g, ' ');
  return `<${e.tagName.toLowerCase()} class="${(e.getAttribute('class') || '').slice(0, 40)}"> `
         + `${e.clientWidth} px shows ${e.scrollWidth} px: ${text.slice(0, 70)}`;
}
function measure() {
  // Collapsed cells (the install cell, solutions): as a reader sees them once opened, the
  // fade-in finished (axe would otherwise measure the contrast of half-faded text).
  const still = document.createElement('style');
  still.textContent = '*, *::before, *::after {animation: none !important; transition: none !important}';
  document.head.appendChild(still);
  document.querySelectorAll('article details').forEach(d => { d.open = true; });
  const article = document.querySelector('article.bd-article') || document.body;
  const edge = article.getBoundingClientRect().right + 1;
  const cut = [], past = [], outputs = [], images = [];
  for (const e of article.querySelectorAll('*')) {
    // A formula is measured as a whole; MathJax clips parts of it by design.
    if (e.parentElement.closest('mjx-container') || !e.getClientRects().length) continue;
    const style = getComputedStyle(e);
    const clips = ['auto', 'scroll', 'hidden', 'clip'].includes(style.overflowX);
    // Blocks only: an inline formula's box clips an italic letter's overhang by a pixel or two.
    const block = !style.display.startsWith('inline') || e.matches('mjx-container[display="true"]');
    if (clips && block && e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1) {
      cut.push({html: describe(e), output: !!e.closest('.cell_output'), table: !!e.querySelector('table'),
                figure: !!e.querySelector('img'),
                code: !!e.closest('.cell_input, div[class*="highlight-"]:not(.output)')});
    } else if (e.getBoundingClientRect().right > edge && !e.parentElement.closest(
        '[style*="overflow"], pre, .highlight, mjx-container, .table-wrapper')) {
      past.push(describe(e));
    }
  }
  article.querySelectorAll('.cell_output').forEach(o => outputs.push(o.textContent));
  article.querySelectorAll('p, li').forEach(p => outputs.push(p.textContent));
  // Figures: how wide each is shown against its own pixels (tells how large its text is
  // shown), and whether one wider than the column sits in a box that scrolls sideways.
  const figures = [];
  article.querySelectorAll('img').forEach(i => {
    const box = i.getBoundingClientRect();
    let boxed = false;
    for (let a = i.parentElement; a && a !== article; a = a.parentElement) {
      if (['auto', 'scroll'].includes(getComputedStyle(a).overflowX)
          && a.getBoundingClientRect().right <= edge) { boxed = true; break; }
    }
    if (box.right > edge && !boxed) images.push(i.getAttribute('src'));
    if (i.naturalWidth > 0 && /\.(png|jpe?g)$|^data:image\/png/i.test(i.getAttribute('src')))
      figures.push({src: i.currentSrc || i.src, natural: i.naturalWidth, shown: box.width,
                    output: !!i.closest('.cell_output')});
  });
  const body = parseFloat(getComputedStyle(article.querySelector('p') || article).fontSize);
  // An inline formula with ")" or punctuation after it that a line break may separate.
  const loose = [...article.querySelectorAll('span.math')].filter(m =>
    !m.closest('.math-glued') && m.nextSibling && m.nextSibling.nodeType === Node.TEXT_NODE
    && /^[)\].,;:]/.test(m.nextSibling.textContent)).map(m => m.textContent + m.nextSibling.textContent.slice(0, 10));
  const page = document.documentElement;
  done({cut, past, outputs, images, figures, body, loose, page_scroll: page.scrollWidth, page_width: page.clientWidth});
}
if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
  MathJax.startup.promise.then(measure, measure);
} else if ([...document.scripts].some(s => /mathjax/i.test(s.src))) {
  const t0 = Date.now();
  (function wait() {
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      MathJax.startup.promise.then(measure, measure);
    } else if (Date.now() - t0 > 20000) { measure(); } else { setTimeout(wait, 50); }
  })();
} else { measure(); }
"""

AXE_JS = """
const done = arguments[arguments.length - 1];
axe.run(document, {runOnly: {type: 'tag', values: arguments[0]}, resultTypes: ['violations']})
  .then(r => done(r.violations.map(v => ({
      id: v.id, impact: v.impact, help: v.help,
      nodes: v.nodes.slice(0, 3).map(n => n.html.slice(0, 120))}))),
        e => done([{id: 'axe failed', impact: 'critical', help: String(e), nodes: []}]));
"""


@pytest.fixture(scope="module")
def window(driver):
    """``window(size, url) -> layout report`` with the window at ``size``; restored afterwards."""
    axe_source = AXE.read_text(encoding="utf-8")
    current = {"size": None}

    def load(size: tuple[int, int], url: str, axe: bool = False) -> dict:
        if current["size"] != size:
            driver.set_window_size(*size)
            current["size"] = size
        driver.get(url)
        report = driver.execute_async_script(LAYOUT_JS)
        if axe:
            driver.execute_script(axe_source)
            report["axe"] = driver.execute_async_script(AXE_JS, AXE_TAGS)
        return report

    yield load
    driver.set_window_size(*DESKTOP)


@pytest.fixture(scope="module")
def layout(window, base_url):
    """``layout(page, size)``: each page is loaded once per size; desktop visits run axe too."""
    cache: dict[tuple[str, tuple[int, int]], dict] = {}

    def get(page: str, size: tuple[int, int]) -> dict:
        if (page, size) not in cache:
            from book_site import SITE
            if not (SITE / page).is_file():
                pytest.skip(f"{page} was not built (test_toc_document_is_built reports it)")
            cache[page, size] = window(size, base_url + page, axe=size == DESKTOP)
        return cache[page, size]

    return get


def recorded_text_px(src: str) -> float | None:
    """The smallest text of a PNG in its own pixels, as recorded when it was saved
    (``esa_tutorial.book.plotting.text_record``); None if the PNG has no record."""
    if src.startswith("data:"):
        data = io.BytesIO(base64.b64decode(src.split(",", 1)[1]))
    else:
        data = SITE / unquote(urlsplit(src).path).lstrip("/")
    with Image.open(data) as png:
        value = getattr(png, "text", {}).get(TEXT_RECORD)
    return None if value is None else float(value)


def illegible_figures(report: dict) -> list[str]:
    """Figures with a record whose smallest text is shown below ``LEGIBLE`` of the body text."""
    small = []
    for f in report["figures"]:
        px = recorded_text_px(f["src"])
        if px is not None and px * f["shown"] / f["natural"] < LEGIBLE * report["body"]:
            small.append(f"{f['src'].rsplit('/', 1)[-1][:40]}: smallest text {px:.1f} px in a "
                         f"{f['natural']} px image shown {f['shown']:.0f} px wide = "
                         f"{px * f['shown'] / f['natural']:.1f} px, body text {report['body']:g} px")
    return small


def raw_markdown_tables(report: dict) -> list[str]:
    """The texts (outputs, paragraphs) that show a Markdown table's rule line."""
    return [text[:120] for text in report["outputs"] if MARKDOWN_RULE.search(text)]


@pytest.mark.parametrize("page", all_pages())
def test_nothing_is_cut_off_at_a_desktop_window(layout, page):
    report = layout(page, DESKTOP)
    cut = [c["html"] for c in report["cut"]]
    assert not cut, (f"{page}: {len(cut)} block(s) scroll sideways at {DESKTOP[0]}x{DESKTOP[1]} "
                     "(shorten the lines or see book/_static/book.css):\n" + "\n".join(cut[:10]))
    assert not report["past"], f"{page}: past the column's edge:\n" + "\n".join(report["past"][:10])
    assert report["page_scroll"] <= report["page_width"], f"{page}: the page scrolls sideways"
    assert not report["loose"], (f"{page}: punctuation a line break may part from its formula "
                                 f"(book/_static/math-punctuation.js): {report['loose'][:5]}")


@pytest.mark.parametrize("page", all_pages())
def test_no_markdown_table_shown_as_text(layout, page):
    raw = raw_markdown_tables(layout(page, DESKTOP))
    assert not raw, (f"{page}: a Markdown table printed as text; display it "
                     "(IPython.display.Markdown or a DataFrame):\n" + "\n".join(raw))


@pytest.mark.parametrize("page", all_pages())
def test_axe_finds_no_wcag_a_or_aa_violation(layout, page):
    violations = layout(page, DESKTOP)["axe"]
    assert not violations, f"{page}: axe-core {AXE_TAGS}:\n" + "\n".join(
        f"{v['id']} ({v['impact']}): {v['help']} {v['nodes']}" for v in violations)


@pytest.mark.parametrize("page", all_pages())
def test_a_phone_sees_every_output_and_figure(layout, page):
    report = layout(page, PHONE)
    assert report["page_scroll"] <= report["page_width"], (
        f"{page}: at {PHONE[0]} px the page scrolls sideways ({report['page_scroll']} px wide):\n"
        + "\n".join(report["past"][:10]))
    cut = [c["html"] for c in report["cut"] if c["output"] and not c["table"] and not c["figure"]]
    assert not cut, f"{page}: outputs cut at {PHONE[0]} px:\n" + "\n".join(cut[:10])
    assert not report["images"], f"{page}: figures wider than the column: {report['images']}"


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
@pytest.mark.parametrize("page", all_pages())
def test_figures_are_legible(layout, page, size):
    """No figure text below 70% of the body text, as shown at a 1200 px window and on a phone.

    A figure records its smallest text in its PNG when it is saved: the book's diagrams
    (tools/draw_figures.py) and every figure of the plotting helpers, also as a notebook
    shows it (``esa_tutorial.book.plotting.record_text_size``). The check reads the record
    and scales it by the width the figure is shown at. A figure a chapter draws with its
    own code carries none: on a phone it must be shown no smaller than on the desktop.
    """
    report = layout(page, size)
    small = illegible_figures(report)
    assert not small, f"{page} at {size[0]} px: figure text too small:\n" + "\n".join(small)
    unrecorded = [f["src"] for f in report["figures"]  # the book's figures (not the theme's icons)
                  if not f["output"] and "/_images/" in f["src"] and recorded_text_px(f["src"]) is None]
    assert not unrecorded, (f"{page}: figures without a record of their smallest text "
                            f"(save them with text_record, as tools/draw_figures.py does): {unrecorded}")
    if size == PHONE:
        desktop = {f["src"]: f["shown"] for f in layout(page, DESKTOP)["figures"]}
        shrunk = [f"{f['src'].rsplit('/', 1)[-1][:40]}: {f['shown']:.0f} px, "
                  f"{desktop[f['src']]:.0f} px at {DESKTOP[0]}"
                  for f in report["figures"] if f["output"] and recorded_text_px(f["src"]) is None
                  and f["shown"] < desktop.get(f["src"], 0) - 1]
        assert not shrunk, (f"{page}: notebook figures shown smaller on a phone than on the "
                            "desktop (book/_static/book.css):\n" + "\n".join(shrunk))


FAULTS = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>faults</title></head><body><main>
<article class="bd-article" style="width: 300px">
<div class="cell_input"><pre style="overflow-x: auto">{long}</pre></div>
<div class="cell_output"><pre>| a | b |
|---|---|
| 1 | 2 |</pre></div>
<p>| c | d |
|—|—|</p>
<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" width="1" height="1">
<p>(<span class="math">x</span>) loose</p>
<p>A figure.</p><img src="{figure}" alt="a figure" style="width: 50px">
</article></main></body></html>"""


def _recorded_png(width: int, text_px: float) -> str:
    """A blank PNG ``width`` pixels wide that records its smallest text as ``text_px``."""
    from PIL.PngImagePlugin import PngInfo
    info = PngInfo()
    info.add_text(TEXT_RECORD, f"{text_px:g}")
    out = io.BytesIO()
    Image.new("RGB", (width, 20), "white").save(out, "png", pnginfo=info)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def test_the_checks_find_what_they_look_for(window):
    """One cut code block, one raw table, one image without alt text, one formula whose ")"
    may wrap alone, one figure whose 10 px text is shown at 2.5 px: each is reported."""
    from urllib.parse import quote
    page = FAULTS.format(long="x = 1  # " + "y" * 200, figure=_recorded_png(200, 10))
    report = window(DESKTOP, "data:text/html," + quote(page), axe=True)
    assert [c["code"] for c in report["cut"]] == [True]
    assert raw_markdown_tables(report) == ["| a | b |\n|---|---|\n| 1 | 2 |", "| c | d |\n|\u2014|\u2014|"]
    assert "image-alt" in {v["id"] for v in report["axe"]}
    assert report["loose"] == ["x) loose"]
    assert report["body"] > 0 and [f["shown"] for f in report["figures"]] == [50]
    assert [s.split(" = ")[-1] for s in illegible_figures(report)] == [
        f"2.5 px, body text {report['body']:g} px"]
