# ferops — two commands: `make run` (pipeline) and `make test` (test suite). Both set up first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# abspath: VENV may be given absolute (make run VENV=/opt/venvs/ferops), not only relative to the project
export PATH := $(abspath $(VENV))/bin:$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2
# oneDNN kernels on AVX2 CPUs too (TF enables them only on AVX-512/AMX CPUs): 1.5-2x faster training
export TF_ENABLE_ONEDNN_OPTS ?= 1
HOST ?= 127.0.0.1
STAMP := $(VENV)/.installed

.PHONY: FORCE setup lock run demo exp typecheck lint test test-all bench ui dashboard serve clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

# The versions the suite and RESULTS ran with, transitive ones included: a clone installs what was tested, not what
# was released since. `make setup LOCK=` lifts it (the newest that pyproject.toml's ranges allow): it installs each
# time it is asked, up to date or not, and upgrades what is installed, dependencies too (pip keeps any version that
# still satisfies a range otherwise). Back to the lock after that: `touch constraints.txt; make setup`.
LOCK ?= constraints.txt
# Every pin has a wheel for Python 3.11-3.13 on Linux x86-64 (antlr4-python3-runtime is a pure-Python sdist): `make
# test` passed within them on 3.11.7, 3.12.1 and 3.13.0 (2026-12-06; 3.12+ venvs add an unpinned setuptools, which
# tensorflow requires and 3.11's venv ships). Elsewhere a pin may
# lack a wheel, and pip's own error names a package, not the way out:
LOCK_FAILED = { echo "make setup: pip could not install within $(LOCK) (pins tested on Linux x86-64 with Python\
 3.11-3.13). \`make setup LOCK=\` installs the newest versions pyproject.toml allows instead." >&2;\
 exit 1; }

$(STAMP): pyproject.toml $(wildcard $(LOCK)) $(if $(LOCK),,FORCE)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]" $(if $(LOCK),--constraint $(LOCK) || $(LOCK_FAILED),--upgrade --upgrade-strategy eager)
	touch $(STAMP)

FORCE:

# ferops is installed editable: a VENV shared by two clones (VENV=/opt/venvs/ferops) runs the code of the clone that
# installed it last, while DVC hashes this one's src/. So setup re-points it here when it points elsewhere.
OWNER = $(PY) -c 'import ferops, pathlib; print(pathlib.Path(ferops.__file__).resolve().parents[1])' 2>/dev/null
setup: $(STAMP)  ## create .venv and install ferops with its dependencies (the tested versions: constraints.txt)
	@owner=$$($(OWNER)); if [ -n "$$owner" ] && [ "$$owner" != "$(realpath $(CURDIR)/src)" ]; then \
	  echo "make setup: $(VENV) ran ferops from $$owner; installing this project's ($(CURDIR)) instead — the other\
	 project's commands now run this one's code until its own make re-points it (one VENV per project avoids that)" >&2; \
	  $(PY) -m pip install --quiet --no-deps -e . && touch $(STAMP); fi

# After `make setup LOCK=` (or a changed pyproject.toml range) has passed `make test-all`: record what it installed.
# The file is LOCK's (constraints.txt when LOCK= is empty); its comment lines are kept.
LOCK_FILE = $(or $(LOCK),constraints.txt)
lock: setup  ## rewrite constraints.txt (or LOCK=<file>) from .venv's installed versions
	{ sed -n '/^#/p' $(LOCK_FILE) 2>/dev/null; $(PY) -m pip freeze --exclude-editable; } > $(LOCK_FILE).new
	mv $(LOCK_FILE).new $(LOCK_FILE) && touch $(STAMP)

run: setup  ## run the whole pipeline (real data if data/raw/ has it, else the synthetic demo)
	dvc repro

# `dvc exp run -S` writes the override into params.yaml (and reformats it): `make exp` restores the file afterwards,
# so a later `make run` trains on params.yaml's own settings again, not the profile's. The copy stays in the project
# (.dvc/tmp, git-ignored by DVC), not in VENV: projects sharing one VENV would restore each other's params.yaml.
# An EXIT trap restores it on Ctrl-C too (the INT/TERM trap turns the signal into an exit that runs it); the
# recipe's status stays dvc's.
SAVED = .dvc/tmp/params-before-$@.yaml
RESTORE = trap 'cp $(SAVED) params.yaml' EXIT; trap 'exit 130' INT TERM
# --temp: in DVC's copy of the project, so the workspace's params.yaml, dvc.lock and outputs stay as they were (in
# the workspace, returning to the real data re-trained every model: DVC's run cache skips stages with uncached outs).
demo: setup  ## the pipeline on the synthetic demo set (a DVC experiment), whatever is in data/raw/
	dvc exp run --temp -S ingest.source=synthetic

# A params profile as one DVC experiment (`dvc exp run -S` per key); params.yaml restored afterwards.
# set -f: the overrides hold brackets (stages=[2,2,2,2]) that the shell must not glob; `&&`: a bad profile stops here
# instead of leaving an empty override list, which would run the default pipeline.
exp: setup  ## a params profile as a DVC experiment: make exp PROFILE=profiles/gpu.yaml
	@test -n "$(PROFILE)" || { echo "error: name a profile: make exp PROFILE=profiles/gpu.yaml" >&2; exit 2; }
	@mkdir -p $(dir $(SAVED)) && cp params.yaml $(SAVED)
	set -f; $(RESTORE); args=$$($(PY) -m ferops.profiles "$(PROFILE)") && dvc exp run $$args

# Settings in pyproject.toml [tool.mypy]: not strict, untyped dependencies are Any. ~30 s from cold, a few with
# its cache (.mypy_cache, which ignores itself in git).
typecheck: setup  ## mypy: type errors in src/ferops and stages
	$(VENV)/bin/mypy

lint: setup typecheck  ## typecheck (mypy), then ruff: unused and undefined names, likely bugs (`make test` runs it first)
	$(VENV)/bin/ruff check src stages tests benchmarks

# Two pytest-xdist workers: most of the suite's time is single-threaded (TF start-up and tracing, subprocesses, DVC),
# so on 2 cores they cut it ~1.5x (11 min 13 s -> 7 min 12 s); three were no faster (2-core Zen 4, alternated 2,3,3,2:
# 475 / 511 s against 502 / 561 s). `make test TEST_WORKERS=0` runs in one process. --dist loadscope: a module's tests
# on one worker, so its module-scoped fixtures (trained models, studies) are built once, not on both: 9 min 0 s against
# 10 min 44 s for the suite, 12.8 against 16.5 CPU-minutes (2-core Zen 4, back to back, session 62).
# --no-loadscope-reorder: modules go out in file order, not most-tests-first, which sent the one-test end-to-end DVC
# module (~4.5 min) out last, to run alone while the other worker sat idle: 7 min 44 s against 9 min 51 s, back to back
# in one tree, and 8 min 51 s against 9 min 52 s in a fresh clone (2-core Zen 4, session 63).
TEST_WORKERS ?= 2
DIST = $(if $(filter 0,$(TEST_WORKERS)),,--dist loadscope --no-loadscope-reorder)

test: lint  ## lint, then the default test suite (fast tiers; slow ones are marked)
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(DIST)

test-all: lint  ## every test, slow and real-data ones included
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(DIST) -m ""

bench: setup  ## benchmarks (real data from ../shared/data); figures go to benchmarks/RESULTS.md by hand
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/inference.py

ui: setup  ## MLflow UI on http://127.0.0.1:5000 (PORT= another port)
	mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" --host $(HOST) --port $(or $(PORT),5000) --workers 2

dashboard: setup  ## optuna-dashboard on http://127.0.0.1:8080 (the storage params.yaml's tune: section names; PORT= another port)
	$(PY) -m ferops.cli dashboard --host $(HOST) --port $(or $(PORT),8080)

serve: setup  ## serve the champion (params.yaml register:) over REST on http://127.0.0.1:5001/invocations (PORT= another port)
	$(PY) -m ferops.cli serve --host $(HOST) --port $(or $(PORT),5001)

# reports/ goes too, but for what git tracks there (the README has users commit reports/metrics.json as the baseline
# `dvc exp show` compares against; removing it left a deleted tracked file)
clean:  ## remove pipeline outputs, stores and caches (keeps data/raw, .venv, your predictions/ and committed reports)
	rm -rf data/interim data/processed models checkpoints mlflow.db mlflow.db.lock mlflow.db.registry.lock mlartifacts mlruns optuna.db optuna.db.claim.lock optuna_journal* dvc_plots .dvc/cache .dvc/tmp
	@tracked=$$(git ls-files reports 2>/dev/null); \
	if [ -z "$$tracked" ]; then rm -rf reports; \
	else find reports -depth -mindepth 1 \( -type f -o -type l \) | grep -vxF "$$tracked" | xargs -r -d '\n' rm -f; \
	     find reports -depth -mindepth 1 -type d -empty -delete; fi
