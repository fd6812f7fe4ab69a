# Set-up and entry points. Everything installs into .venv/ in the repo root.
#   make run    DetectTask on the embedded sample archive (installs first)
#   make test   installs, then runs the test suite
#   make bench  benchmarks -> docs/benchmarks.md     make fuzz  10,000 parser fuzz cases
#   make results  detection quality on six dev archives x three seeds -> docs/results.md

PYTHON_SYSTEM ?= python3
VENV          := .venv
PY            := $(VENV)/bin/python
LUIGI         := $(VENV)/bin/luigi
STAMP         := $(VENV)/.installed
DATE          ?= 2026-01-03
ARCHIVE       ?= sample/archive
WAREHOUSE     ?= warehouse
SHARED_DATA   ?= ../shared/data
SHARED_DATA_B ?= ../shared/data-b
DEV_ARCHIVES  ?= .bench/archives
RESULTS_WH    ?= .bench/results
SEEDS         ?= 42,0,1
FUZZ_CASES    ?= 10000
export PYSPARK_PYTHON    := $(CURDIR)/$(PY)

.PHONY: install run test bench fuzz results clean help

help:
	@sed -n '1,7p' Makefile

install: $(STAMP)

# --compile-bytecode: uv does not write .pyc files by default, and where
# PYTHONDONTWRITEBYTECODE is set (as on our CI machines) nothing ever does, so every
# process (luigi, each Spark Python worker) compiled torch, PyG, pandas... from source:
# 'import pipeline.detectors.rearview.training' took 9.1 s instead of 3.7 s.
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
	@echo "Tables:   $(WAREHOUSE)/{flows,flow_scores,incidents,relationship_nights,atoms,ingest_stats,ingest_errors}/date=$(DATE)/"
	@echo "          Spark SQL database 'traffic' (metastore $(WAREHOUSE)/metastore_db)"
	@echo "Report:   $$(ls -d $(WAREHOUSE)/reports/date=$(DATE)/*/report.html | tail -n 1)"

# Two pytest workers (pytest-xdist): much of the suite waits on JVMs, subprocesses and small
# Spark jobs, so two workers fill the two cores. Each test module stays on one worker, and the
# modules that read the session's DetectTask run share one (tests/conftest.py), so every
# expensive fixture is built once; `pytest` alone runs the same tests in one process.
# More options: make test PYTEST_ARGS="--durations=25" (or -m "not slow", -k NAME).
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

bench: install
	$(PY) bench/run_all.py --shared-data $(SHARED_DATA)

fuzz: install
	$(PY) bench/fuzz_capture.py --cases $(FUZZ_CASES) --shared-data $(SHARED_DATA)

# The verdict, both detectors and the baselines on six dev archives x three training
# seeds (docs/results.md; docs/verdict.md has the rules these numbers decide). Four of the
# archives are drawn from the shared captures with ../shared/tools/new_dev_archive.sh
# (needs Wireshark's editcap: apt-get install -y tshark).
results: install
	@command -v editcap >/dev/null || { echo "editcap is required to draw the dev archives (apt-get install -y tshark)"; exit 1; }
	test -d $(DEV_ARCHIVES)/s13/archive || ../shared/tools/new_dev_archive.sh 13 $(DEV_ARCHIVES)/s13 --gz-night 1
	test -d $(DEV_ARCHIVES)/s14k/archive || ../shared/tools/new_dev_archive.sh 14 $(DEV_ARCHIVES)/s14k --known-service-kinds c2,exfil
	test -d $(DEV_ARCHIVES)/f21/archive || ../shared/tools/new_dev_archive.sh 21 $(DEV_ARCHIVES)/f21
	test -d $(DEV_ARCHIVES)/f22k/archive || ../shared/tools/new_dev_archive.sh 22 $(DEV_ARCHIVES)/f22k --known-service-kinds c2,exfil
	$(PY) -m bench.results --seeds $(SEEDS) --warehouse $(RESULTS_WH) --out docs/results.md \
		--archive-set A=$(SHARED_DATA)/archive --archive-set B=$(SHARED_DATA_B)/archive \
		--archive-set S13=$(DEV_ARCHIVES)/s13/archive --archive-set S14K=$(DEV_ARCHIVES)/s14k/archive \
		--archive-set F21=$(DEV_ARCHIVES)/f21/archive --archive-set F22K=$(DEV_ARCHIVES)/f22k/archive

clean:
	rm -rf $(WAREHOUSE) spark-warehouse metastore_db derby.log .pytest_cache
