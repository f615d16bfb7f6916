# Three commands a reader needs, on a fresh machine (Python 3.11+ and make):
#   make book   create .venv from requirements.txt, build the book, print where it is
#   make lab    JupyterLab in the same .venv, opened on the chapters
#   make test   unit tests, integration tests (grader, nbgrader, Colab install), every
#               notebook through nbval, the book build, the lab test, the built site
#               in headless Chromium (installs Debian's chromium if missing)
# CPU-only machines: add TORCH_INDEX=https://download.pytorch.org/whl/cpu to the first
# command that creates .venv, so that torch comes from PyTorch's CPU index (see README).
# Everything else here is a step of those.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH_INDEX ?=
NBVAL  := --nbval --nbval-current-env --nbval-sanitize-with tools/nbval_sanitize.cfg --nbval-cell-timeout=600

.PHONY: venv book test test-unit test-notebooks test-book test-browser browser-deps bench clean sandbox-deps \
        python-check lab lab-deps lab-exercises test-lab test-gpu test-integration

venv: $(STAMP)

# requirements.txt pins packages that need Python 3.11 or newer.
python-check:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "This needs Python 3.11 or newer as '$(PYTHON)'; found: $$($(PYTHON) --version 2>&1)."; \
	  echo "Install one and name it, for example: make book PYTHON=python3.11"; exit 1; }

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(MAKE) -s --no-print-directory python-check PYTHON="$(PYTHON)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23.2"
	@# The torch pin of requirements.txt from another index (PyTorch's CPU builds): pip
	@# then finds torch==X already satisfied (X+cpu) and keeps it.
	$(if $(TORCH_INDEX),$(PY) -m pip install -q --no-deps --index-url $(TORCH_INDEX) \
	  "$$(grep -E '^torch==' requirements.txt)")
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

book: $(STAMP)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "The book: file://$(CURDIR)/_build/html/index.html"

test-unit: $(STAMP)
	$(PY) -m pytest tests --ignore=tests/browser -m "not gpu and not integration"

# The grader in its sandbox, nbgrader, the Colab install: tests that start other processes.
test-integration: $(STAMP) sandbox-deps
	$(PY) -m pytest tests --ignore=tests/browser --ignore=tests/test_local_lab.py -m "integration and not gpu"

# The student versions (notebooks/exercises/student) raise NotImplementedError by design; a unit test keeps them in sync.
test-notebooks: $(STAMP)
	$(PY) -m pytest $(NBVAL) notebooks --ignore=notebooks/exercises/student

test-book: book

# Debian's headless Chromium and its driver for the browser tests (CI runs as root).
# Without apt-get, say what to install instead of failing with "command not found".
browser-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  command -v apt-get >/dev/null || { \
	    echo "The browser tests need 'chromium' and 'chromedriver' on PATH, and this machine"; \
	    echo "has no apt-get to install them. Install both with your package manager (for"; \
	    echo "example: dnf install chromium chromedriver), or run the other checks only:"; \
	    echo "  make test-unit test-notebooks test-book test-lab"; exit 1; }; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; }

# Debian's bubblewrap, the sandbox the course grader runs each submission in (CI runs as root).
sandbox-deps:
	@command -v bwrap >/dev/null || { \
	  command -v apt-get >/dev/null || { \
	    echo "The grader's tests need bubblewrap ('bwrap') on PATH, and this machine has no"; \
	    echo "apt-get to install it. Install it with your package manager (for example:"; \
	    echo "dnf install bubblewrap) and run make test again."; exit 1; }; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q bubblewrap; }

# The built site in headless Chromium: links, images, math, search, Colab buttons; screenshots in _build/screenshots.
test-browser: book browser-deps
	$(PY) -m pytest tests/browser

# --- The reader's own machine: JupyterLab in the same .venv ---------------------------
# The .venv's python registered as the notebooks' kernel ("python3"), by absolute path.
LAB_STAMP := $(VENV)/.lab-installed
# As root (a Docker container, a Colab-like machine) Jupyter refuses to start without
# --allow-root, so root gets it; anyone can set LAB_ARGS to pass other options.
LAB_ARGS  ?= $(if $(filter 0,$(shell id -u)),--allow-root)

lab-deps: $(LAB_STAMP)

$(LAB_STAMP): $(STAMP) requirements-lab.txt
	$(PY) -m pip install -q -c requirements.txt -r requirements-lab.txt
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (esa-tutorial)"
	touch $@

# Open the chapters in JupyterLab; it prints the address to open (with its token).
lab: $(LAB_STAMP)
	$(VENV)/bin/jupyter-lab --notebook-dir=notebooks $(LAB_ARGS)

# For instructors: the exercises as students get them.
lab-exercises: $(LAB_STAMP)
	@test -d notebooks/exercises/student || { \
	  echo "notebooks/exercises/student/ is missing: the student versions of the exercises"; \
	  echo "are made by the release command in book/instructors.md."; exit 1; }
	$(VENV)/bin/jupyter-lab --notebook-dir=notebooks/exercises/student $(LAB_ARGS)

# A Jupyter server started by `make lab` runs a chapter through its REST API and kernel.
test-lab: $(LAB_STAMP)
	ESA_LAB_REQUIRED=1 $(PY) -m pytest tests/test_local_lab.py

# GPU tests (tests marked gpu); they skip without CUDA.
test-gpu: $(STAMP)
	$(PY) -m pytest tests -m gpu -rs

test: test-unit test-integration test-notebooks test-book test-lab test-browser

bench: $(STAMP)
	$(PY) -m esa_tutorial.bench

clean:
	rm -rf _build
