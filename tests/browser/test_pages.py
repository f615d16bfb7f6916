"""Every page of the built book, checked as a reader's browser shows it.

Each test is parametrized over the pages (the toc's documents and every other
page the build wrote); a page is loaded once and its report reused.
"""

from __future__ import annotations

import json
import re
from urllib.parse import unquote, urldefrag

import pytest

from book_site import ROOT, SITE, all_pages, notebook_pages, repository_slug, site_path, toc_pages

# The only external image the book may show: the "Open in Colab" badge of the notebooks'
# first cell. Chromium runs offline here, so it is checked by its address, not loaded.
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
# TeX that MathJax should have replaced; prose showing it means a formula was not typeset.
RAW_TEX = re.compile(r"\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\\frac|\\mathrm\{|\\sqrt\{")


def _is_offline_miss(message: dict, base_url: str) -> bool:
    """A network error for an external address: expected, Chromium resolves no host here."""
    return message.get("source") == "network" and not message["message"].startswith(base_url)


@pytest.mark.parametrize("page", toc_pages())
def test_toc_document_is_built(base_url, page):
    assert (SITE / page).is_file(), (
        f"{page} is listed in _toc.yml but the build wrote no page: is its source missing?")


@pytest.mark.parametrize("page", all_pages())
def test_page_loads_without_console_errors(visit, base_url, page):
    report = visit(page)
    errors = [m["message"] for m in report.console
              if m["level"] == "SEVERE" and not _is_offline_miss(m, base_url)]
    assert not errors, f"{page}: console errors:\n" + "\n".join(errors)


def _has_anchor(html: bytes, fragment: str) -> bool:
    return re.search(rf'\b(id|name)="{re.escape(unquote(fragment))}"', html.decode("utf-8", "replace")) is not None


@pytest.mark.parametrize("page", all_pages())
def test_internal_links_resolve(visit, http_get, base_url, page):
    broken = []
    for link in sorted(set(visit(page).data["links"])):
        if not link.startswith(base_url):
            continue
        url, fragment = urldefrag(link)
        body = http_get(url)
        if body is None:
            broken.append(f"{link}: HTTP error")
        elif fragment and url.split("?")[0].endswith(".html") and not _has_anchor(body, fragment):
            broken.append(f"{link}: no element with id {fragment!r}")
    assert not broken, f"{page}: broken links:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", all_pages())
def test_images_load(visit, base_url, page):
    images = visit(page).data["images"]
    local = [i for i in images if i["src"].startswith(base_url)]
    broken = [site_path(i["src"], base_url) for i in local if not (i["complete"] and i["width"] > 0)]
    assert not broken, f"{page}: images that did not load: {broken}"
    external = {i["src"] for i in images} - {i["src"] for i in local}
    assert external <= {COLAB_BADGE}, f"{page}: external images other than the Colab badge: {external}"


@pytest.mark.parametrize("page", all_pages())
def test_math_is_typeset_from_the_vendored_mathjax(visit, base_url, page):
    data = visit(page).data
    assert all(src.startswith(base_url + "_static/mathjax/") for src in data["mathjax_src"]), (
        f"{page}: MathJax must come from the vendored copy, not {data['mathjax_src']}")
    if data["math"]:
        assert data["mathjax"] == "typeset", f"{page}: MathJax {data['mathjax']}"
        assert data["typeset"] == data["math"], (
            f"{page}: {data['math'] - data['typeset']} of {data['math']} formulas not typeset")
    raw = sorted(set(RAW_TEX.findall(data["prose"])))
    assert not raw, f"{page}: raw TeX left in the text: {raw}"


def _image_outputs(notebook: str) -> int:
    """How many stored outputs of the notebook are images."""
    nb = json.loads((ROOT / notebook).read_text())
    return sum(any(mime.startswith("image/") for mime in out.get("data", {}))
               for cell in nb["cells"] if cell["cell_type"] == "code" for out in cell.get("outputs", []))


@pytest.mark.parametrize("page", notebook_pages())
def test_notebook_figures_are_shown(visit, page):
    shown = [i for i in visit(page).data["images"] if i["output"]]
    expected = _image_outputs(page.removesuffix(".html") + ".ipynb")
    assert len(shown) == expected, f"{page}: {expected} image outputs stored, {len(shown)} shown"
    assert all(i["complete"] and i["width"] > 0 for i in shown), f"{page}: a figure did not load"


@pytest.mark.parametrize("page", notebook_pages())
def test_progress_bars_show_once_per_cell(visit, page):
    """Each tqdm update stored as its own output would stack hundreds of bars down the page."""
    blocks = visit(page).data["progress"]
    assert blocks <= 1, (
        f"{page}: a cell shows {blocks} progress-bar outputs; execute with "
        "nbclient's coalesce_streams=True so that only the final bar is stored")


def test_the_book_has_figures_and_math(visit):
    """The per-page checks above pass vacuously on a page without figures or formulas."""
    pages = notebook_pages()
    assert sum(_image_outputs(p.removesuffix(".html") + ".ipynb") for p in pages) > 0
    assert any(visit(p).data["math"] for p in pages if (SITE / p).is_file())


@pytest.mark.parametrize("page", all_pages())
def test_links_into_our_repository_name_files_that_exist(visit, page):
    """Colab and GitHub links cannot be followed offline; the files they name can be checked."""
    slug = re.escape(repository_slug())
    into_repo = re.compile(rf"https://(?:colab\.research\.google\.com/github|github\.com)/{slug}"
                           r"/(?:blob|tree)/main/([^?#]+)")
    named = {m.group(1) for link in visit(page).data["links"] if (m := into_repo.match(link))}
    missing = sorted(path for path in named if not (ROOT / unquote(path)).exists())
    assert not missing, f"{page}: links to files the repository does not have: {missing}"


@pytest.mark.parametrize("page", notebook_pages())
def test_colab_launch_button_opens_this_notebook(visit, page):
    expected = (f"https://colab.research.google.com/github/{repository_slug()}"
                f"/blob/main/{page.removesuffix('.html')}.ipynb")
    assert visit(page).data["colab"] == [expected]
