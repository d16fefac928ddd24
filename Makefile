# `make run` and `make test` work from a bare clone with only python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Only what running needs (`make run`); $(STAMP) adds the test and lint tools on top.
RUN_STAMP := $(VENV)/.runtime-stamp

.PHONY: install run test lint bench protos clean

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(RUN_STAMP)
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
	rm -rf $(VENV) .cluster .pytest_cache .ui-test

# `docker compose up` end to end on a real engine: scripts/docker-local.sh sets one up when
# missing (root; Debian's docker.io, compose v2 from PyPI, a debootstrapped python:3.11-slim),
# then scripts/compose_test.py builds, runs master + 3 slaves, checks them through the CLI,
# and always tears down (`down -v`). Never passes without having run.
.PHONY: compose-test docker-setup

# $(call prerequisite,TARGET,SCRIPT,WHY): run the set-up SCRIPT; when it fails, TARGET is
# "NOT RUN" (a failure, never a pass), and "FAILED" under CI=true.
prerequisite = @bash $(2) || { if [ "$$CI" = true ]; then echo "$(1) FAILED (CI=true): $(3)" >&2; \
  else echo "$(1) NOT RUN: $(3)" >&2; fi; exit 1; }

docker-setup:
	bash scripts/docker-local.sh

compose-test: $(STAMP)
	$(call prerequisite,compose-test,scripts/docker-local.sh,Docker could not be set up by scripts/docker-local.sh (see above))
	$(BIN)/python scripts/compose_test.py

# `docker compose --profile ha` end to end: ZooKeeper and PostgreSQL images built from
# docker/*.Dockerfile (Debian's packages on the same local base), three masters, two slaves;
# scripts/compose_ha_test.py checks the election, a redirect, tasks through zk://, and a
# `docker kill` of the leader with a task running across it; always `down -v`.
.PHONY: compose-ha-test
compose-ha-test: $(STAMP)
	$(call prerequisite,compose-ha-test,scripts/docker-local.sh,Docker could not be set up by scripts/docker-local.sh (see above))
	$(BIN)/python scripts/compose_ha_test.py

# The web dashboard in a real browser: scripts/browser-local.sh installs Debian's chromium and
# chromium-driver when missing (root), then scripts/ui_test.py starts a real master and slave
# and drives headless Chromium through selenium (screenshots in .ui-test/). Never passes
# without having run.
.PHONY: ui-test browser-setup

browser-setup:
	bash scripts/browser-local.sh

ui-test: $(STAMP)
	$(call prerequisite,ui-test,scripts/browser-local.sh,no browser: scripts/browser-local.sh could not install chromium and chromium-driver (see above))
	$(BIN)/python scripts/ui_test.py

# High availability against real servers: scripts/ha-local.sh installs Debian's zookeeper and
# postgresql when missing (root; their own services are kept stopped), then tests/ha/ starts a
# private ZooKeeper and a private PostgreSQL (as the postgres user) on free loopback ports under
# /tmp/libproc-ha-*, and removes them at the end. A missing prerequisite fails, never skips.
.PHONY: ha-test ha-setup

ha-setup:
	bash scripts/ha-local.sh

ha-test: $(STAMP)
	$(call prerequisite,ha-test,scripts/ha-local.sh,ZooKeeper/PostgreSQL could not be set up by scripts/ha-local.sh (see above))
	$(BIN)/python -m pytest -q tests/ha
