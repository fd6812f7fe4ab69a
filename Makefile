# Set-up and entry points. Everything installs into .venv/ in the repo root.
#   make run    DetectTask on the embedded sample archive (installs first)
#   make test   installs, then runs the test suite
#   make bench  benchmarks -> docs/benchmarks.md     make fuzz  10,000 parser fuzz cases

PYTHON_SYSTEM ?= python3
VENV          := .venv
PY            := $(VENV)/bin/python
LUIGI         := $(VENV)/bin/luigi
STAMP         := $(VENV)/.installed
DATE          ?= 2026-01-03
ARCHIVE       ?= sample/archive
WAREHOUSE     ?= warehouse
SHARED_DATA   ?= ../shared/data
FUZZ_CASES    ?= 10000
export PYSPARK_PYTHON    := $(CURDIR)/$(PY)

.PHONY: install run test bench fuzz results clean help

help:
	@sed -n '1,6p' Makefile

install: $(STAMP)

# --compile-bytecode: uv does not write .pyc files by default, and where
# PYTHONDONTWRITEBYTECODE is set (as on our CI machines) nothing ever does, so every
# process (luigi, each Spark Python worker) compiled torch, PyG, pandas... from source:
# 'import pipeline.rearview_stage' took 9.1 s instead of 3.7 s.
$(STAMP): setup.cfg setup.py Makefile
	@command -v java >/dev/null || { echo "Java 17 is required by Spark (apt-get install openjdk-17-jre-headless)"; exit 1; }
	test -x $(PY) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==0.13.9
	$(VENV)/bin/uv pip install --compile-bytecode --python $(PY) -e '.[test,bench]'
	touch $(STAMP)

run: install
	$(LUIGI) --module jobs DetectTask --date $(DATE) --archive $(ARCHIVE) --warehouse $(WAREHOUSE) \
		--ReportTask-labels sample/labels.csv --local-scheduler
	@echo
	@echo "Tables:   $(WAREHOUSE)/{flows,flow_scores,atoms,ingest_stats,ingest_errors}/date=$(DATE)/"
	@echo "          Spark SQL database 'traffic' (metastore $(WAREHOUSE)/metastore_db)"
	@echo "Report:   $$(ls -d $(WAREHOUSE)/reports/date=$(DATE)/*/report.html | tail -n 1)"

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) bench/run_all.py --shared-data $(SHARED_DATA)

fuzz: install
	$(PY) bench/fuzz_capture.py --cases $(FUZZ_CASES) --shared-data $(SHARED_DATA)

results: install
	$(PY) -m pipeline.results --archive $(SHARED_DATA)/archive --labels $(SHARED_DATA)/labels.csv \
		--warehouse .bench/dev-warehouse --out docs/results.md

clean:
	rm -rf $(WAREHOUSE) spark-warehouse metastore_db derby.log .pytest_cache
