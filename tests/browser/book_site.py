"""Where the built book is and what it should contain: pure helpers, no browser.

Pages are discovered, never listed by hand: the documents of ``_toc.yml`` and
every HTML page the build wrote.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(os.environ.get("ESA_BOOK_HTML", ROOT / "_build" / "html"))
SCREENSHOTS = Path(os.environ.get("ESA_SCREENSHOTS", ROOT / "_build" / "screenshots"))

# Flags from shared/environment.md, plus --disable-quic; without the networking flags
# Chromium floods a closed network with refused connections.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    # Hermetic: only the local server resolves, so nothing (MathJax, fonts) can come from a CDN.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    # Docker's /dev/shm is 64 MB (CI's test job runs in a container): Chromium crashes on long pages.
    "--disable-dev-shm-usage",
    # The desktop window of the layout checks (tests/browser/test_layout.py).
    "--window-size=1200,900",
)

# Waits for MathJax where the page loads it, then reads everything the tests check.
PAGE_REPORT_JS = r"""
const done = arguments[arguments.length - 1];
const hasMathJax = [...document.scripts].some(s => /mathjax/i.test(s.src));
function report(mathjaxState) {
  const article = document.querySelector('article.bd-article') || document.body || document.documentElement;
  const prose = article.cloneNode(true);
  prose.querySelectorAll('pre, code, script, style, mjx-container, .highlight, .cell_output')
       .forEach(e => e.remove());
  const maths = [...article.querySelectorAll('.math')];
  done({
    url: location.href,
    title: document.title,
    mathjax: mathjaxState,
    mathjax_src: [...document.scripts].map(s => s.src).filter(s => /mathjax/i.test(s)),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    images: [...document.images].map(i => ({
      src: i.currentSrc || i.src, width: i.naturalWidth, complete: i.complete,
      output: !!i.closest('.cell_output')})),
    math: maths.length,
    typeset: maths.filter(e => e.querySelector('mjx-container')).length,
    prose: prose.textContent,
    colab: [...document.querySelectorAll('.dropdown-launch-buttons a[href*="colab."]')]
           .map(a => a.href),
    sidebar: [...document.querySelectorAll('nav.bd-docs-nav a[href]')].map(a => a.href),
    citations: [...document.querySelectorAll('.bibtex-citation a[href]')].map(a => a.href),
    entries: [...document.querySelectorAll('.citation-list > .citation')].map(e => e.id),
    // Most progress-bar blocks (tqdm's "42%|") under one cell: 1 when its updates were merged.
    progress: Math.max(0, ...[...document.querySelectorAll('.cell_output')].map(out =>
      [...out.querySelectorAll('.output')].filter(o => /\d+%\|/.test(o.textContent)).length)),
  });
}
if (!hasMathJax) { report('absent'); }
else {
  const t0 = Date.now();
  (function wait() {
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      MathJax.startup.promise.then(() => report('typeset'), e => report('error: ' + e));
    } else if (Date.now() - t0 > 20000) { report('never loaded'); }
    else { setTimeout(wait, 50); }
  })();
}
"""


def toc_files() -> list[str]:
    """Every document of ``_toc.yml`` (root first), as written there, without suffix."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections", []))

    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        walk(part.get("chapters", []))
    return [re.sub(r"\.(md|ipynb)$", "", f) for f in files]


def toc_pages() -> list[str]:
    """Site paths of the table of contents' documents."""
    return [f"{f}.html" for f in toc_files()]


def built_pages() -> list[str]:
    """Every HTML page the build wrote, except assets, sources and execution reports."""
    if not SITE.is_dir():
        return []
    skip = {"_static", "_sources", "_images", "reports"}
    return [p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html")
            if not skip & set(p.relative_to(SITE).parts) and not _is_redirect(p)]


def _is_redirect(page: Path) -> bool:
    """The site's index.html only forwards to the toc root (checked on its own)."""
    return 'http-equiv="Refresh"' in page.read_text(errors="replace")[:500]


def all_pages() -> list[str]:
    """Pages to visit: the toc's and whatever else was built (index, search, genindex)."""
    return sorted(set(toc_pages()) | set(built_pages()))


def notebook_pages() -> list[str]:
    """Pages whose source is a notebook (they carry the Colab launch button)."""
    return [f"{f}.html" for f in toc_files() if (ROOT / f"{f}.ipynb").is_file()]


def repository_slug() -> str:
    """``owner/name`` from ``_config.yml``'s repository.url."""
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    return url.rstrip("/").removeprefix("https://github.com/")


@dataclass
class PageReport:
    """What one visit of a page saw (see PAGE_REPORT_JS)."""

    path: str
    data: dict
    console: list[dict] = field(default_factory=list)


def site_path(url: str, base_url: str) -> str:
    """The site path of a local URL, without query or fragment."""
    return urlsplit(url).path.removeprefix(urlsplit(base_url).path)
