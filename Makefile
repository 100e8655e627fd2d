# Two commands a newcomer needs:  make book   and   make test
# Everything they need is set up here: a venv in .venv, the JavaScript the
# pages serve themselves in _vendor/, and Jupyter/IPython/matplotlib state
# kept inside _build/ so nothing is written under ~.

SHELL      := /bin/bash
PYTHON     ?= python3
# The installers are pinned too; every Python package is pinned in requirements.lock.
PIP_VERSION := 26.3
UV_VERSION  := 0.13.9
VENV       := .venv
PY         := $(VENV)/bin/python
JB         := $(VENV)/bin/jupyter-book
STATE      := $(CURDIR)/_build/state
BOOK_NBS   := $(wildcard book/*.ipynb)

export JUPYTER_DATA_DIR    := $(STATE)/jupyter/data
export JUPYTER_CONFIG_DIR  := $(STATE)/jupyter/config
export JUPYTER_RUNTIME_DIR := $(STATE)/jupyter/runtime
export IPYTHONDIR          := $(STATE)/ipython
export MPLCONFIGDIR        := $(STATE)/matplotlib
export PYDEVD_DISABLE_FILE_VALIDATION := 1
export PYTHONHASHSEED      := 0

.PHONY: help setup state stamp check-home venv vendor lock book test unit nbval build-strict browser lab bench execute clean distclean

help:
	@echo "make book    set up, execute every chapter, render HTML into _build/html"
	@echo "make test    set up, unit tests, chapters against stored outputs (nbval), strict build, browser check"
	@echo "make lab     JupyterLab on book/"
	@echo "make bench   run the benchmarks in benchmarks/"
	@echo "make execute NB=book/13_text_to_image.ipynb   re-execute chapters in place (their stored outputs are what nbval compares)"
	@echo "make lock    re-resolve requirements.lock from pyproject.toml (LOCK_ARGS=--upgrade-package NAME for one)"
	@echo "make clean   remove _build (distclean also removes .venv, _vendor, node_modules)"

setup: venv vendor

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml requirements.lock
	@echo "== creating $(VENV) and installing every package at the version in requirements.lock"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	$(PY) -m pip install --quiet -r requirements.lock
	# the project itself, with nothing more: every dependency came from the lock (setuptools too)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	@touch $@

# Re-resolve requirements.lock from pyproject.toml (newest versions that fit), with uv in a
# throwaway venv. Then `make test` (and `make execute` where a chapter's stored outputs changed).
LOCK_TOOLS := _build/lock-tools
lock:
	@test -x $(LOCK_TOOLS)/bin/uv || { $(PYTHON) -m venv $(LOCK_TOOLS) && $(LOCK_TOOLS)/bin/pip install --quiet uv==$(UV_VERSION); }
	$(LOCK_TOOLS)/bin/uv pip compile pyproject.toml --extra book --extra test --universal \
	    --python-version 3.10 --custom-compile-command "make lock" $(LOCK_ARGS) -o requirements.lock

vendor: _vendor/.installed
_vendor/.installed: package.json package-lock.json
	@echo "== installing MathJax, require.js and the widget renderer from npm (package-lock.json)"
	npm ci --no-audit --no-fund --loglevel=error
	rm -rf _vendor && mkdir -p _vendor/widgets
	cp -r node_modules/mathjax/es5 _vendor/mathjax
	cp node_modules/requirejs/require.js _vendor/require.js
	cp -r node_modules/@jupyter-widgets/html-manager/dist/. _vendor/widgets/
	rm -f _vendor/widgets/*.map
	@touch $@

state:
	@mkdir -p $(JUPYTER_DATA_DIR) $(JUPYTER_CONFIG_DIR) $(JUPYTER_RUNTIME_DIR) $(IPYTHONDIR) $(MPLCONFIGDIR)

# Execute every chapter and render HTML into _build/html.
book: setup state
	$(JB) build . --builder html
	@echo "== open _build/html/index.html"

# Unit tests, then every chapter re-executed against its stored outputs (nbval),
# then a strict build (warnings are errors), then a headless-browser check of the pages.
test: setup state stamp unit nbval build-strict browser check-home

unit: setup state
	$(PY) -m pytest tests --ignore=tests/browser -q

# The stored outputs were made on this CPU family's own kernels (AVX2). The chapters are re-executed
# on another floating-point path, torch's portable kernels, so an output that holds only where it
# was stored fails here, not on a reader's machine. `make nbval NBVAL_ENV=` runs them on the
# machine's own path; adding ONEDNN_MAX_CPU_ISA=SSE41 also moves the convolutions (slower).
NBVAL_ENV ?= ATEN_CPU_CAPABILITY=default
nbval: setup state
	env $(NBVAL_ENV) $(PY) -m pytest --nbval $(BOOK_NBS) --nbval-sanitize-with tests/nbval_sanitize.cfg -q

# The strict build renders the stored outputs: in `make test` nbval has just re-executed every
# chapter and compared it with them (`make book` executes the chapters for the pages it builds).
STORED_CONFIG := _build/config-stored-outputs.yml
build-strict: setup state
	sed 's/^\(  execute_notebooks:\).*/\1 "off"/' _config.yml > $(STORED_CONFIG)
	grep -q 'execute_notebooks: "off"' $(STORED_CONFIG)
	$(JB) build . --builder html --all -W -n --keep-going --config $(STORED_CONFIG)

browser: setup
	$(PY) -m pytest tests/browser -q -rs

# Nothing of Jupyter's, IPython's or matplotlib's may appear under ~ during a test run.
stamp: state
	@touch $(STATE)/test-started

check-home:
	@found=$$(find "$$HOME" -maxdepth 4 -newer $(STATE)/test-started \
	    \( -name .jupyter -o -name .ipython -o -name matplotlib -o -path '*/share/jupyter' \) 2>/dev/null); \
	if [ -n "$$found" ]; then echo "written under ~ during the tests: $$found"; exit 1; \
	else echo "== nothing of Jupyter, IPython or matplotlib was written under ~"; fi

lab: setup state
	$(VENV)/bin/jupyter lab book/ $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

bench: setup state
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Re-execute chapters in place, keeping widget state, after a change to a chapter or a shipped model.
NB ?= $(BOOK_NBS)
execute: setup state
	cd book && for nb in $(notdir $(NB)); do echo "== $$nb"; \
	    ../$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
	        --ExecutePreprocessor.timeout=600 --ExecutePreprocessor.store_widget_state=True $$nb || exit 1; done

clean:
	rm -rf _build

distclean: clean
	rm -rf $(VENV) _vendor node_modules
