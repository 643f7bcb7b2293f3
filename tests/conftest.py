"""Shared fixtures: paths to the repo and the real data, quiet TF logs, process state each test leaves as found."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # tests that clean their subprocess' env lost pytest's mark
# The caller's settings that point ferops, MLflow or make elsewhere: a developer who exported a shared Optuna or MLflow
# store (as the README suggests) had test trials and runs written into it, and `make test VENV=/x` or an exported
# PORT reached the Makefile tests' own `make` calls. Every test starts from the defaults; each sets what it needs.
# (KERAS_BACKEND stays: a runtime choice, e.g. JAX on a machine without TensorFlow, not a place to write to.)
for _name in ("FEROPS_OPTUNA_STORAGE", "FEROPS_REPRO_ID", "FEROPS_SERVED_MODEL", "FEROPS_MAX_IMAGE_PIXELS",
              "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME",
              "MLFLOW_EXPERIMENT_ID", "DVC_EXP_NAME", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "VENV",
              "LOCK", "PORT", "HOST", "PROFILE", "TEST_WORKERS"):
    os.environ.pop(_name, None)

REPO = Path(__file__).resolve().parents[1]
REAL_CSV = REPO.parent / "shared" / "data" / "fer2013.csv.gz"
IMAGES_SAMPLE = REPO.parent / "shared" / "data" / "fer2013_images_sample"


@pytest.fixture
def real_csv() -> Path:
    """The real FER2013 CSV, or skip with the reason."""
    if not REAL_CSV.exists():
        pytest.skip(f"real data not found at {REAL_CSV} (put FER2013's fer2013.csv.gz there to run this test)")
    return REAL_CSV


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A fresh real sqlite MLflow store for one test, run from tmp_path: MLflow puts the Default experiment's
    artifacts in ./mlruns of the folder the store is created from (it was the repository's root)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


@pytest.fixture(autouse=True)
def _keras_dtype_policy_restored():
    """Training sets Keras' global dtype policy and leaves it set (bf16 on CPUs with AVX512-BF16/AMX, or asked): a
    later test on the same xdist worker built its models in bfloat16 and test_zoo's exact comparisons failed."""
    keras = sys.modules.get("keras")  # not imported here: the tests without Keras stay free of its start-up
    before = keras.mixed_precision.global_policy().name if keras is not None else None
    yield
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.mixed_precision.set_global_policy(before or keras.config.floatx())


@contextmanager
def _environ_kept():
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(before):
            del os.environ[key]
        for key, value in before.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


@contextmanager
def _mlflow_kept():
    """mlflow.set_tracking_uri / set_registry_uri also set MLflow's in-process URIs, which outrank the environment
    `_environ_kept` puts back: a later test on the same xdist worker that sets only MLFLOW_TRACKING_URI
    (`mlflow_store`) would log into the earlier test's store. A run the test left active (a failed one) is ended
    too, or the next start_run fails ("Run ... is already active") — not one that was open before it."""
    mlflow = sys.modules.get("mlflow")  # not imported here, as for Keras above
    run = mlflow.active_run() if mlflow is not None else None
    kept = run.info.run_id if run is not None else None  # a module fixture's run, open for its tests: left open
    before = _mlflow_globals() if mlflow is not None else (None, None, None)
    try:
        yield
    finally:
        mlflow = sys.modules.get("mlflow")
        if mlflow is not None:
            while (run := mlflow.active_run()) is not None and run.info.run_id != kept:
                mlflow.end_run("KILLED")
            _mlflow_globals(before)  # the variables themselves: the environment is restored by _environ_kept


def _mlflow_globals(restore: tuple[str | None, str | None, str | None] | None = None
                 ) -> tuple[str | None, str | None, str | None]:
    """MLflow's in-process tracking URI, registry URI and active experiment id (set_experiment's, which names an
    experiment of the store it was set in: another store has no such id); with `restore`, set them first."""
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    if restore is not None:
        tracking._tracking_uri, registry._registry_uri, fluent._active_experiment_id = restore
    return tracking._tracking_uri, registry._registry_uri, fluent._active_experiment_id


# Code under test changes process state for the rest of the process: mlflow.set_tracking_uri / set_registry_uri
# export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI (an earlier test's store, inherited by every later subprocess) and
# set MLflow's in-process URIs, set_seeds PYTHONHASHSEED, tf_environment the TF/oneDNN defaults. Kept per test and
# per module: a module fixture opens a store for its tests (init_tracking in test_mlflow_deep's `trained`,
# test_tune_resume's `tracking`, test_inference's `registered`) before its first test, so the per-test restore keeps
# it for the module and the per-module one ends it there — no test sees what another ran before it on its worker.
@pytest.fixture(autouse=True, scope="module")
def _process_state_restored_per_module():
    with _environ_kept(), _mlflow_kept():
        yield


@pytest.fixture(autouse=True)
def _process_state_restored():
    with _environ_kept(), _mlflow_kept():
        yield
