PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: test pythons bench soak demo lint venv clean docker-init

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check parallel_connection tests benchmarks
	$(PY) -m mypy
	$(PY) -m pytest

# The other classified Pythons (3.10 with the dependency floors, 3.12 with psycopg2 built from
# source, 3.13), each in a throwaway virtualenv under .venv-pythons/, on a subset of the suite.
pythons: $(STAMP)
	$(PY) scripts/pythons.py

soak: $(STAMP)
	$(PY) -m pytest -m slow

demo: $(STAMP)
	$(PY) -m parallel_connection.demo

bench: $(BENCH_STAMP)
	$(PY) -m benchmarks

docker-init: $(STAMP)
	$(PY) -c 'from parallel_connection.sample import init_sql; \
	[open(f"docker/shard{k}.sql", "w").write(init_sql(k, 3, orders=100_000)) for k in range(3)]'

lint: $(STAMP)
	$(PY) -m ruff check parallel_connection tests benchmarks
	$(PY) -m mypy

clean:
	rm -rf $(VENV) .venv-pythons *.egg-info .pytest_cache .hypothesis
