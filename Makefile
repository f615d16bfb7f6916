# Two commands a reader needs, on a fresh machine:
#   make book   create .venv from requirements.txt, build the book, print where it is
#   make test   unit tests, every notebook through nbval, the book build, the built
#               site in headless Chromium (installs Debian's chromium if missing)
# Everything else here is a step of those two.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NBVAL  := --nbval --nbval-current-env --nbval-sanitize-with tools/nbval_sanitize.cfg --nbval-cell-timeout=600

.PHONY: venv book test test-unit test-notebooks test-book test-browser browser-deps sandbox-deps bench clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23.2"
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

book: $(STAMP)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "The book: file://$(CURDIR)/_build/html/index.html"

test-unit: $(STAMP) sandbox-deps
	$(PY) -m pytest tests --ignore=tests/browser

# The student versions (notebooks/exercises/student) raise NotImplementedError by design; a unit test keeps them in sync.
test-notebooks: $(STAMP)
	$(PY) -m pytest $(NBVAL) notebooks --ignore=notebooks/exercises/student

test-book: book

# Debian's headless Chromium and its driver for the browser tests (CI runs as root).
browser-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; }

# Debian's bubblewrap, the sandbox the course grader runs each submission in (CI runs as root).
sandbox-deps:
	@command -v bwrap >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q bubblewrap; }

# The built site in headless Chromium: links, images, math, search, Colab buttons; screenshots in _build/screenshots.
test-browser: book browser-deps
	$(PY) -m pytest tests/browser

test: test-unit test-notebooks test-book test-browser

bench: $(STAMP)
	$(PY) -m esa_tutorial.bench

clean:
	rm -rf _build
