# Vigil: `make run` runs the whole fleet locally on the sample video; `make test` runs the test suite.
# Both install what is missing first (a virtual environment with the packages and the server binaries).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
DETECTION ?= 1
CLASSIFICATION ?= 1
PYTEST_ARGS ?=

.PHONY: install run test test-deps test-unit test-integration test-e2e check-config bench bench-reader bench-router bench-workers bench-registrator soak-reader lint up down logs ps scale-workers clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Vigil needs Python 3.11 or newer")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all]'
	rm -f $(VENV)/.installed-*
	touch $@

run: install
	$(PY) -m fleet --detection $(DETECTION) --classification $(CLASSIFICATION) $(if $(SOURCE),--source $(SOURCE))

test: install test-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# Debian's GStreamer RTSP server for the test camera: installed when root, else those tests skip and say why.
test-deps:
	@if [ "$$(id -u)" = 0 ]; then bash scripts/install-test-deps.sh; \
	else echo "not root: the RTSP tests need scripts/install-test-deps.sh run as root, else they are skipped"; fi

test-unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: install
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: install
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

# Benchmarks print a table and write JSON under bench/results/.
bench: bench-reader bench-router bench-workers bench-registrator

bench-reader: install
	$(PY) -m bench.reader $(or $(REPEATS),3)

bench-router: install
	$(PY) -m bench.router $(or $(REPEATS),3)

bench-registrator: install
	$(PY) -m bench.registrator $(or $(REPEATS),3)

bench-workers: install
	$(PY) -m bench.workers $(or $(REPEATS),2)

# RSS of a reader looping the sample as fast as it can, sampled over DURATION seconds (default 600).
soak-reader: install
	$(PY) -m bench.reader_soak $(or $(DURATION),600)

lint: install
	$(PY) -m ruff check shared services fleet bench tests

check-config: install
	@for s in reader router detection classification registrator; do $(PY) -m services.$$s --check-config || exit 1; done

# Docker (needs a Docker engine).
up:
	docker compose up -d --build
down:
	docker compose down
logs:
	docker compose logs -f --tail=100
ps:
	docker compose ps
scale-workers:
	docker compose up -d --no-recreate --scale detection=$(DETECTION) --scale classification=$(CLASSIFICATION)

clean:
	rm -rf .data .pytest_cache
