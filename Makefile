# Vigil: `make run` runs the whole fleet locally on the sample video; `make test` runs the test suite.
# Both install what is missing first (a virtual environment with the packages and the server binaries), from
# the lock file requirements/local.txt: every package pinned and hash-checked. `make lock` remakes the locks
# from pyproject.toml (scripts/lock.py); UPGRADE=1 moves the pins to the newest versions pyproject allows.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
LOCK   := requirements/local.txt
STAMP  := $(VENV)/.installed-$(shell cksum $(LOCK) | cut -d' ' -f1)
DETECTION ?= 1
CLASSIFICATION ?= 1
PYTEST_ARGS ?=
TEST_JOBS ?= 4

.PHONY: install lock config-docs secrets run test test-deps test-unit test-integration test-e2e check-config bench bench-reader bench-router bench-workers bench-clips bench-registrator bench-registrator-scaling bench-notifier bench-bounded-state bench-tracking bench-cascade bench-reduced-decode bench-gpu bench-e2e soak soak-sources soak-reader lint format check up down logs ps scale-workers test-compose clean

install: $(STAMP)

# The project itself is not installed, as in the images: everything runs from the repository's root.
$(STAMP): $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Vigil needs Python 3.11 or newer")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r $(LOCK)
	rm -f $(VENV)/.installed-*
	touch $@

lock: install
	$(PY) -m scripts.lock $(if $(UPGRADE),--upgrade)

# docs/configuration.md's settings reference, from the settings classes' Field descriptions.
config-docs: install
	$(PY) -m scripts.settings_doc

run: install
	$(PY) -m fleet --detection $(DETECTION) --classification $(CLASSIFICATION) $(if $(SOURCE),--source $(SOURCE)) $(if $(SERVE),--serve) $(if $(NATS_NODES),--nats-nodes $(NATS_NODES)) $(if $(VOLUME_SERVERS),--volume-servers $(VOLUME_SERVERS)) $(if $(REGISTRATORS),--registrators $(REGISTRATORS)) $(if $(READERS),--readers $(READERS))

# The tests mostly wait on servers and processes, so TEST_JOBS processes share them (pytest-xdist; tests/conftest.py
# keeps the sample fleet run and module-wide servers in one process each); TEST_JOBS=0 runs them in this one.
test: install test-deps
	$(PY) -m pytest -n $(TEST_JOBS) --dist loadgroup $(PYTEST_ARGS)

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
bench: bench-reader bench-router bench-workers bench-clips bench-registrator bench-registrator-scaling bench-notifier bench-bounded-state bench-tracking bench-cascade bench-reduced-decode bench-e2e

bench-reader: install
	$(PY) -m bench.reader $(or $(REPEATS),3)

bench-router: install
	$(PY) -m bench.router $(or $(REPEATS),3)

bench-registrator: install
	$(PY) -m bench.registrator $(or $(REPEATS),3)

# Issue 17: the most 10-fps sources one registrator replica keeps up with (results and proofs), then two, in one run.
bench-registrator-scaling: install
	$(PY) -m bench.registrator_scaling $(if $(LADDER),--ladder $(LADDER)) $(if $(REPLICA_CPU),--replica-cpu $(REPLICA_CPU))

bench-notifier: install
	$(PY) -m bench.notifier $(or $(REPEATS),3)

# Redis growth of deduplication per source, and the cost of a filtered listing page, at 10k and 100k events.
bench-bounded-state: install
	$(PY) -m bench.bounded_state $(or $(RECORDS),10000 100000)

# Offline: the SSD over the sample video in-process, ByteTrack and per-object events with the default rules.
# FRAMES=<dir> also saves key frames with the track ids drawn.
bench-tracking: install
	$(PY) -m bench.tracking $(if $(FRAMES),--frames $(FRAMES))

# Offline: the cascade's per-crop CPU cost (decode, cut, classify) on video/cars.mp4, and each car's crop classes.
bench-cascade: install
	$(PY) -m bench.cascade

# Offline: the workers' reduced JPEG decode next to the whole one, its CPU and the models' answers from each.
bench-reduced-decode: install
	$(PY) -m bench.reduced_decode

# Issue 19's GPU part: the worker's stages against bare onnxruntime on CUDA (docs/development.md says how to
# bring onnxruntime-gpu to the team's GPU machine); PROVIDER=CPUExecutionProvider runs it anywhere.
bench-gpu: install
	$(PY) -m bench.gpu $(if $(PROVIDER),--provider $(PROVIDER))

bench-workers: install
	$(PY) -m bench.workers $(or $(REPEATS),2)

# Proof-clip encoding: CPU, size and PSNR for a few x264 settings on the sample video's frames.
bench-clips: install
	$(PY) -m bench.clips $(or $(REPEATS),3)

# The whole fleet on the sample video (as fast as possible, then at 10 fps, then 4 sources at 10 fps) next to a
# bare sequential loop.
bench-e2e: install
	$(PY) -m bench.e2e $(or $(REPEATS),1)

# The whole fleet on the sample video looped at 10 fps for DURATION seconds (default 1800; CI runs 180):
# memory and disk slopes; fails on clear growth. Runs under 900 s write bench/results/soak_short.json.
soak: install
	$(PY) -m bench.soak $(or $(DURATION),1800)

# Issue 17's soak: 8 cameras, 2 registrators, one killed half-way; every event FINISHED once, Redis and RSS flat.
soak-sources: install
	$(PY) -m bench.soak $(or $(DURATION),1800) --sources $(or $(SOURCES),8) --registrators 2 --kill-registrator

# RSS and threads of a reader looping the sample as fast as it can, sampled over DURATION seconds (default 600);
# SOURCES=8: eight camera-paced copies in one reader.
soak-reader: install
	$(PY) -m bench.reader_soak $(or $(DURATION),600) $(if $(SOURCES),--sources $(SOURCES))

# `make check`, which CI runs first: ruff's lint, ruff's formatting and mypy (strict; pyproject.toml's [tool.mypy]).
# `make format` rewrites the files as `ruff format --check` wants them. .pre-commit-config.yaml runs the same.
CODE := shared services fleet bench tests scripts

lint: install
	$(PY) -m ruff check $(CODE)

format: install
	$(PY) -m ruff format $(CODE)

check: install
	$(PY) -m ruff check $(CODE)
	$(PY) -m ruff format --check $(CODE)
	$(PY) -m mypy

check-config: install
	@for s in reader router detection classification registrator api notifier; do $(PY) -m services.$$s --check-config || exit 1; done

# Docker: the fleet as containers (docker-compose.yml; docs/operations.md). Engine 20.10+ with Compose v2.20+.
# GPU=1 runs the workers on onnxruntime-gpu (the gpu profile) instead of the CPU ones. `.env` may set
# COMPOSE_FILE (multi-machine) and COMPOSE_PROFILES; docker compose reads both from it. down, logs and ps
# always name the gpu profile, so they also reach GPU workers started without GPU=1 in the command.
# Every Docker target checks the engine first (scripts/compose_preflight.py), so that a machine without one,
# or with one too old, hears what to do instead; `up` also checks the api's port and explains a failed build.
COMPOSE   := docker compose
PREFLIGHT := DETECTION=$(DETECTION) CLASSIFICATION=$(CLASSIFICATION) python3 scripts/compose_preflight.py
GPU_ON    := $(filter 1 yes true,$(GPU))
WORKERS   := $(if $(GPU_ON),detection-gpu classification-gpu,detection classification)

# The fleet's passwords, keys, api token, CA and TLS certificates (with openssl), made once
# (scripts/compose_secrets.py; docs/security.md). `make up` runs it first. It needs the virtual environment,
# not its newest packages: one that exists is used as it is.
VENV_ONCE := $(if $(wildcard $(PY)),,install)

secrets: $(VENV_ONCE)
	@$(PY) -m scripts.compose_secrets

up: $(VENV_ONCE)
	@$(PREFLIGHT) up
	@$(PY) -m scripts.compose_secrets
	@$(COMPOSE) $(if $(GPU_ON),--profile gpu) build || { $(PREFLIGHT) build-failed; exit 1; }
	$(COMPOSE) $(if $(GPU_ON),--profile gpu) up -d $(if $(GPU_ON),--scale detection=0 --scale classification=0)
	@$(PREFLIGHT) dashboard
down:
	@$(PREFLIGHT) engine
	$(COMPOSE) --profile gpu down
logs:
	@$(PREFLIGHT) engine
	$(COMPOSE) --profile gpu logs -f --tail=100
ps:
	@$(PREFLIGHT) engine
	$(COMPOSE) --profile gpu ps
# Only the named worker services are touched (--no-deps): running replicas stay (--no-recreate), and the
# other services are neither recreated nor started again (an ended file reader would replay its file).
scale-workers:
	@$(PREFLIGHT) engine
	$(COMPOSE) $(if $(GPU_ON),--profile gpu) up -d --no-recreate --no-deps \
	  --scale $(word 1,$(WORKERS))=$(DETECTION) --scale $(word 2,$(WORKERS))=$(CLASSIFICATION) $(WORKERS)

# The deploy suite (tests/deploy): the compose fleet on a real Docker engine, built from local images.
# As root on a machine without an engine it installs Debian's docker.io and runs a private dockerd.
test-compose: install
	$(PY) -m pytest tests/deploy -m deploy $(PYTEST_ARGS)

clean:
	rm -rf .data .pytest_cache
