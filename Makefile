# The two commands a newcomer needs: `make bench` (the main job) and `make test`.
# Both create .venv and install the package on first use; later runs reuse it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_JSON ?= reports/run.json
BENCH_ARGS ?=

.PHONY: bench test test-slow lint report clean-cache

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,deploy]'
	touch $(STAMP)

# The main job: every (method, rate, scope, device, batch) case, gated, timed, written to JSON,
# then summarised as tables and plots in reports/.
bench: $(STAMP)
	$(BIN)/pytest bench/ --benchmark-json=$(RUN_JSON) $(BENCH_ARGS)
	$(BIN)/vggprune report $(RUN_JSON) --out reports/

# The unit and harness tests, under 5 minutes; test-slow runs the rest (the seed model, own-data learning
# runs, Ray, timing worker processes, damaged or unwritable caches), which CI runs too.
test: $(STAMP)
	$(BIN)/pytest tests/ -m "not slow"

test-slow: $(STAMP)
	$(BIN)/pytest tests/ -m slow

lint: $(STAMP)
	$(BIN)/ruff check vggprune bench tests conftest.py

clean-cache:
	rm -rf "$${VGGPRUNE_CACHE_DIR:-$${XDG_CACHE_HOME:-$$HOME/.cache}/vggprune}"
