"""The book as a whole: navigation, search, bibliography, and screenshots for CI."""

from __future__ import annotations

from urllib.parse import urldefrag

import pytest
from PIL import Image
from selenium.webdriver.support.ui import WebDriverWait

from book_site import PAGE_REPORT_JS, SCREENSHOTS, all_pages, site_path, toc_files, toc_pages

# Chapters the toc must keep: the reader's path through the book (by file name, so a
# renamed title does not break the test, a dropped chapter does).
EXPECTED_CHAPTERS = ("02_", "03_", "04_", "05_", "06_", "07_", "08_", "09_")


def test_toc_lists_the_planned_chapters():
    stems = [f.rsplit("/", 1)[-1] for f in toc_files()]
    for prefix in EXPECTED_CHAPTERS:
        assert any(s.startswith(prefix) for s in stems), f"_toc.yml lacks chapter {prefix}*"
    for page in ("bibliography", "api", "paper", "instructors"):
        assert page in stems, f"_toc.yml lacks book/{page}"


def test_site_root_redirects_to_the_toc_root(driver, base_url):
    driver.get(base_url)
    WebDriverWait(driver, 10).until(lambda d: d.current_url.endswith(".html"))
    assert site_path(driver.current_url, base_url) == toc_pages()[0]


def test_sidebar_reaches_every_chapter_in_toc_order(visit, base_url):
    """From the landing page, the navigation lists every other toc document, in order."""
    root, *chapters = toc_pages()
    listed = [site_path(urldefrag(a).url, base_url) for a in visit(root).data["sidebar"]]
    missing = [p for p in chapters if p not in listed]
    assert not missing, f"the navigation does not reach: {missing}"
    assert [p for p in dict.fromkeys(listed) if p in chapters] == chapters, "navigation out of toc order"


SEARCH_RESULTS_JS = """
const summary = document.querySelector('#search-results .search-summary');
if (!summary || !/found|did not match/i.test(summary.textContent)) return null;
return [...document.querySelectorAll('#search-results ul.search li a')].map(a => a.href);
"""


def test_search_finds_pyramid_pooling(driver, base_url):
    driver.get(base_url + "search.html?q=pyramid+pooling")
    hits = WebDriverWait(driver, 20).until(lambda d: d.execute_script(SEARCH_RESULTS_JS))
    pages = {site_path(urldefrag(h).url, base_url) for h in hits}
    chapter = next(p for p in toc_pages() if "pyramid_pooling" in p)
    assert chapter in pages, f"search for 'pyramid pooling' found {sorted(pages)}"


def test_every_citation_lands_on_a_bibliography_entry(visit, base_url):
    bibliography = next(p for p in toc_pages() if p.endswith("bibliography.html"))
    entries = set(visit(bibliography).data["entries"])
    assert entries, "the bibliography page lists no works"
    cited = set()
    for page in all_pages():
        for link in visit(page).data["citations"]:
            url, fragment = urldefrag(link)
            assert site_path(url, base_url) == bibliography, f"{page}: citation {link} leaves the bibliography"
            assert fragment in entries, f"{page}: citation {link} has no bibliography entry"
            cited.add(fragment)
    assert cited == entries, f"bibliography entries never cited: {sorted(entries - cited)}"


def _key_pages() -> list[tuple[str, str]]:
    """(name, page) for the screenshots: the landing page, chapter 4 (ESA), chapter 9 (speed)."""
    pages = toc_pages()
    return [("intro", pages[0])] + [
        (name, next((p for p in pages if p.rsplit("/", 1)[-1].startswith(prefix)), f"{prefix}*"))
        for name, prefix in (("chapter04", "04_"), ("chapter09", "09_"))]


@pytest.mark.parametrize("name,page", _key_pages())
def test_screenshot_of_key_page(driver, visit, base_url, name, page):
    """Saved to _build/screenshots for CI's artifacts; typeset math before the shot."""
    visit(page)  # skips a page that was not built
    driver.get(base_url + page)
    driver.execute_async_script(PAGE_REPORT_JS)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    _save_screenshot(driver, SCREENSHOTS / f"{name}.png")
    # A chapter's first figure too, where it has one: the top of a page shows none.
    if driver.execute_script(SCROLL_TO_FIRST_FIGURE_JS):
        _save_screenshot(driver, SCREENSHOTS / f"{name}-figure.png")


SCROLL_TO_FIRST_FIGURE_JS = """
const figure = document.querySelector('.cell_output img');
if (figure) figure.scrollIntoView({block: 'center'});
return !!figure;
"""


def _save_screenshot(driver, path) -> None:
    assert driver.save_screenshot(str(path))
    with Image.open(path) as shot:
        assert shot.width >= 1000 and shot.height >= 600
        # A blank page is one colour; a rendered one has text, images and formulas.
        assert len(shot.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50


NUMBERED_CHAPTERS_JS = r"""
const read = sel => [...document.querySelectorAll(sel)].map(a => [a.href, a.textContent.trim()]);
return {sidebar: read('nav.bd-docs-nav a.reference').filter(([, text]) => /^\d+\. /.test(text)),
        listed: read('article .chapter-link a')};
"""


def test_home_page_lists_every_chapter_with_its_number(driver, visit, base_url):
    """'What you will build' links every numbered chapter, in order, numbered as the sidebar."""
    root = toc_pages()[0]
    visit(root)  # skips a page that was not built
    driver.get(base_url + root)
    found = driver.execute_script(NUMBERED_CHAPTERS_JS)
    assert found["sidebar"], "the sidebar numbers no chapter"
    assert found["listed"] == found["sidebar"], (
        f"home page lists {found['listed']}, the sidebar numbers {found['sidebar']}")
