# Two commands a newcomer needs:  make book   and   make test   (and, while editing, make quick)
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

.PHONY: help setup web serve state stamp check-home venv vendor lock lint format quick book book-zh configs translations test checks unit nbval build-strict browser lab bench execute clean distclean

help:
	@echo "make book    set up, execute every chapter, render HTML into _build/html (Chinese: _build/html/zh)"
	@echo "make translations  after editing prose: update the Chinese catalogs in locales/"
	@echo "make test    set up, lint, unit tests and chapters against stored outputs (nbval) side by side, strict build, browser check"
	@echo "make quick   lint, then the unit tests not marked slow, stopping at the first failure (a minute or two)"
	@echo "make lint    ruff check src tests benchmarks (rules in pyproject.toml); chapters' code formatted at 79 columns"
	@echo "make format  format the chapters' code cells (ruff format, 79 columns)"
	@echo "make serve   serve _build/html on http://127.0.0.1:8000 (PORT=...)"
	@echo "make lab     JupyterLab on book/"
	@echo "make bench   run the benchmarks in benchmarks/"
	@echo "make execute NB=book/13_text_to_image.ipynb   re-execute chapters in place (their stored outputs are what nbval compares)"
	@echo "make lock    re-resolve requirements.lock from pyproject.toml (LOCK_ARGS=--upgrade-package NAME for one)"
	@echo "make clean   remove _build (distclean also removes .venv, _vendor, node_modules)"

setup: venv vendor

# The shipped Stable Diffusion as ONNX files, with its vocabulary and the page's sampler, for the
# model that runs in Chapter 13's page; Sphinx copies _build/web into the site's _static/.
WEB := _build/web
web: $(WEB)/.exported
$(WEB)/.exported: $(VENV)/.installed src/diffusion_notes/__main__.py $(wildcard src/diffusion_notes/weights/*) $(wildcard src/diffusion_notes/stable_diffusion/*.py) $(wildcard src/diffusion_notes/stable_diffusion/web/*) \
    $(wildcard src/diffusion_notes/foundations/*.py) $(wildcard src/diffusion_notes/foundations/samplers/*.py)
	$(PY) -m diffusion_notes export stable_diffusion --format onnx --out $(WEB)/stable_diffusion
	@touch $@

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

# Re-resolve requirements.lock from pyproject.toml, with uv in a throwaway venv: the dependencies
# and every extra, for any platform and Python 3.10+. uv keeps each pin already in the lock that still
# fits and takes the newest version of anything new (LOCK_ARGS=--upgrade renews every pin).
# Then `make test` (and `make execute` where a chapter's stored outputs changed).
LOCK_TOOLS := _build/lock-tools
lock:
	@test -x $(LOCK_TOOLS)/bin/uv || { $(PYTHON) -m venv $(LOCK_TOOLS) && $(LOCK_TOOLS)/bin/pip install --quiet uv==$(UV_VERSION); }
	$(LOCK_TOOLS)/bin/uv pip compile pyproject.toml --all-extras --universal \
	    --python-version 3.10 --custom-compile-command "make lock" $(LOCK_ARGS) -o requirements.lock

vendor: _vendor/.installed
_vendor/.installed: package.json package-lock.json
	@echo "== installing MathJax, require.js, the widget renderer, onnxruntime-web and Swagger UI from npm (package-lock.json)"
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error  # no install scripts: these packages are files only
	rm -rf _vendor && mkdir -p _vendor/widgets
	cp -r node_modules/mathjax/es5 _vendor/mathjax
	cp node_modules/requirejs/require.js _vendor/require.js
	cp -r node_modules/@jupyter-widgets/html-manager/dist/. _vendor/widgets/
	rm -f _vendor/widgets/*.map
	mkdir -p _vendor/ort  # onnxruntime-web, its WebAssembly build only (Chapter 13 runs the model in the page)
	cp node_modules/onnxruntime-web/dist/ort.wasm.min.js node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.mjs \
	    node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm _vendor/ort/
	mkdir -p _vendor/swagger-ui  # the web UI's /docs page (webui/api_docs.py), served by the app, not the book
	cp node_modules/swagger-ui-dist/swagger-ui-bundle.js node_modules/swagger-ui-dist/swagger-ui.css \
	    node_modules/swagger-ui-dist/favicon-32x32.png _vendor/swagger-ui/
	@touch $@

state:
	@mkdir -p $(JUPYTER_DATA_DIR) $(JUPYTER_CONFIG_DIR) $(JUPYTER_RUNTIME_DIR) $(IPYTHONDIR) $(MPLCONFIGDIR)

# Execute every chapter and render HTML into _build/html, then the Chinese edition into _build/html/zh.
# The in-page model's service worker sits at each edition's root, where it covers every page (a static
# host such as Pages gets the cross-origin isolation headers from it; make serve sends them itself).
COPY_SW = for d in _build/html _build/html/zh; do cp $(WEB)/stable_diffusion/dn_coi_sw.js $$d/; done

book: setup state web
	$(JB) build . --builder html
	$(MAKE) --no-print-directory book-zh
	$(COPY_SW)

# Two configs written from _config.yml: the stored outputs as they are (nbval checks them against a
# fresh run), and the same in Chinese (language zh_CN: Sphinx reads locales/zh_CN/LC_MESSAGES).
STORED_CONFIG := _build/config-stored-outputs.yml
ZH_CONFIG     := _build/config-zh.yml
configs:
	@mkdir -p _build
	sed 's/^\(  execute_notebooks:\).*/\1 "off"/' _config.yml > $(STORED_CONFIG)
	grep -q 'execute_notebooks: "off"' $(STORED_CONFIG)
	sed -e 's/^title: .*/title: 扩散模型笔记/' -e 's/^  config:$$/  config:\n    language: zh_CN\n    nb_code_prompt_show: 显示代码\n    nb_code_prompt_hide: 隐藏代码/' \
	    $(STORED_CONFIG) > $(ZH_CONFIG)
	grep -q '^    language: zh_CN' $(ZH_CONFIG)

# The Chinese edition: the chapters' stored outputs, executed once for both editions, with the
# prose from locales/. Its own build folder (Sphinx keeps one environment per language), then
# copied under the English site, whose pages link to it (_ext/book_language.py); its table of
# contents names the parts in Chinese (locales/zh_CN/_toc.yml). ZH_ARGS: the
# strict build's flags.
ZH_OUT := _build/zh
book-zh: setup state web configs
	$(JB) build . --builder html --config $(ZH_CONFIG) --toc locales/zh_CN/_toc.yml --path-output $(ZH_OUT) $(ZH_ARGS)
	rm -rf _build/html/zh && cp -r $(ZH_OUT)/_build/html _build/html/zh

# After editing a chapter's prose: extract every page's messages (Sphinx's gettext builder) and
# merge them into locales/zh_CN/LC_MESSAGES/book/*.po (sphinx-intl). A changed paragraph comes back
# fuzzy with its old translation, a new one empty; translate them, and tests/test_translations.py passes.
translations: setup state configs
	rm -rf _build/i18n
	$(JB) build . --builder custom --custom-builder gettext --config $(STORED_CONFIG) --path-output _build/i18n
	$(VENV)/bin/sphinx-intl update -p _build/i18n/_build/gettext -l zh_CN -d locales -w 0 --no-obsolete
	@echo "== open _build/html/index.html"

# Unit tests, then every chapter re-executed against its stored outputs (nbval),
# then a strict build (warnings are errors), then a headless-browser check of the pages.
test: setup state stamp lint checks build-strict browser check-home

# The unit tests and the chapters under nbval, side by side: JOBS pytest processes at once, one torch
# thread each, longest first (tests/run_jobs.py; JOBS=1 runs them one after another).
JOBS ?= $(shell nproc 2>/dev/null || echo 1)
checks: setup state
	$(PY) tests/run_jobs.py --jobs $(JOBS) --unit --nbval $(BOOK_NBS) --nbval-env $(NBVAL_ENV)

unit: setup state
	$(PY) -m pytest tests --ignore=tests/browser -q

# The loop to run while editing: lint, then the unit tests that neither load a shipped pipeline nor
# train (`slow`, registered in pyproject.toml), stopping at the first failure. `make unit` runs them all.
# The chapters' code cells are formatted at 79 columns, to fit the page's column (ruff's formatter,
# `make format` applies it); they are checked by running them (nbval), not linted.
BOOK_RUFF := --isolated --line-length 79
lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check $(BOOK_RUFF) book
	$(VENV)/bin/ruff check $(BOOK_RUFF) --select E501 book

format: venv
	$(VENV)/bin/ruff format $(BOOK_RUFF) book

quick: venv state lint
	$(PY) -m pytest tests --ignore=tests/browser -m "not slow" -x -q

# The stored outputs were made on this CPU family's own kernels (AVX2). The chapters are re-executed
# on another floating-point path, torch's portable kernels, so an output that holds only where it
# was stored fails here, not on a reader's machine. `make nbval NBVAL_ENV=` runs them on the
# machine's own path; adding ONEDNN_MAX_CPU_ISA=SSE41 also moves the convolutions (slower).
NBVAL_ENV ?= ATEN_CPU_CAPABILITY=default
nbval: setup state
	$(PY) tests/run_jobs.py --jobs $(JOBS) --nbval $(BOOK_NBS) --nbval-env $(NBVAL_ENV)

# The strict build renders the stored outputs: in `make test` nbval has just re-executed every
# chapter and compared it with them (`make book` executes the chapters for the pages it builds).
build-strict: setup state web configs
	$(JB) build . --builder html --all -W -n --keep-going --config $(STORED_CONFIG)
	$(MAKE) --no-print-directory book-zh ZH_ARGS="--all -W -n --keep-going"
	$(COPY_SW)

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

# The built site on localhost (the in-page model needs http://, not file://), with the cross-origin
# isolation headers that let it run on several threads (stable_diffusion/serve.py: no package import).
PORT ?= 8000
serve:
	@test -f _build/html/index.html || { echo "no _build/html: run make book first"; exit 1; }
	$(PYTHON) src/diffusion_notes/stable_diffusion/serve.py $(PORT) --directory _build/html

# JupyterLab with no requests outside this machine: jupyter_config/ (put on JUPYTER_CONFIG_PATH)
# disables the news prompt and update check (the announcements plugin) and turns the server's
# news feed and update check off. LAB_ARGS adds options (tests/browser/test_jupyterlab.py runs this line).
LAB_CONFIG := $(CURDIR)/jupyter_config
lab: setup state
	JUPYTER_CONFIG_PATH="$(LAB_CONFIG)$${JUPYTER_CONFIG_PATH:+:$$JUPYTER_CONFIG_PATH}" \
	    $(VENV)/bin/jupyter lab book/ $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) $(LAB_ARGS)

bench: setup state
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# Re-execute chapters in place, keeping widget state, after a change to a chapter or a shipped model.
NB ?= $(BOOK_NBS)
# The kernels that execute a chapter record in each figure's PNG its smallest text (diffusion_book.figure_text,
# from an IPython startup file), which tests/browser/test_figures.py holds to a legible size on the page.
STARTUP := $(IPYTHONDIR)/profile_default/startup/50-figure-text.py
execute: setup state
	@mkdir -p $(dir $(STARTUP))
	@echo "from diffusion_book.figure_text import install; install()" > $(STARTUP)
	cd book && for nb in $(notdir $(NB)); do echo "== $$nb"; \
	    ../$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
	        --ExecutePreprocessor.timeout=600 --ExecutePreprocessor.store_widget_state=False $$nb || exit 1; done

clean:
	rm -rf _build

distclean: clean
	rm -rf $(VENV) _vendor node_modules
