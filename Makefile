# PolyAlpaca: two commands do all the set-up on a fresh machine with Python 3.11.
#   make book   install everything, execute every chapter on the offline CPU default, build _build/html
#   make test   install everything, run the test suite (the tiny-profile book build included)
#   make quick  the quick loop while developing: every test not marked slow (no book build, no real training)
#   make clean  remove the built book (`polyalpaca clean --profile P` removes a profile's artefacts)

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.polyalpaca-installed
PROFILE ?= cpu

.PHONY: book test quick install system-deps bench clean clean-book

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: this version's CPU wheel; a looser spec can pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (polyalpaca)" >/dev/null
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium for the browser test of the built book (skipped where apt is unavailable).
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null; \
	  else echo "chromium not found: install Debian's chromium for the browser test"; fi; }

book: $(STAMP)
	$(BIN)/polyalpaca book --profile $(PROFILE)

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

quick: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py --method lora
	$(BIN)/python benchmarks/bench_train.py --method full
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_translate.py
	$(BIN)/python benchmarks/bench_load.py

# The built book (HTML and executed chapters). Artefacts and models stay: `polyalpaca clean` removes those.
clean:
	rm -rf _build book/chapters

clean-book: clean
