"""The train_baselines stage end to end on a tiny synthetic split: model dir, MLflow run, loadable model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import yaml

from ferops.data.io import save_npz, write_json
from ferops.data.synthetic import make_synthetic
from ferops.models.baselines import to_xy

STAGE = Path(__file__).resolve().parents[2] / "stages" / "train_baselines.py"


def _project(tmp: Path, models: dict) -> Path:
    """A minimal project folder: params.yaml, a 300/100 synthetic split and an ingest report."""
    d = make_synthetic(400, seed=5)
    save_npz(d.subset(np.arange(300)), tmp / "split" / "train.npz")
    save_npz(d.subset(np.arange(300, 400)), tmp / "split" / "val.npz")
    write_json({"synthetic": True, "format": "synthetic", "sha256": "abc123", "source": "synthetic", "rows": 400},
               tmp / "reports" / "ingest.json")
    params = {"seed": 7, "train_baselines": {"train_max_rows": 250, "val_max_rows": None, "models": models}}
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp


def _stage(tmp: Path, model: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(STAGE), "--model", model, "--split", "split", "--ingest-report",
                           "reports/ingest.json", "--out", f"models/baselines/{model}"],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture()
def env(tmp_path, monkeypatch) -> dict:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # MLflow 3.17 refuses to deserialize any sklearn model (skops included) unless this is set.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    from ferops.tracking import init_tracking

    init_tracking()  # create the store once, before the stage process writes to it
    return {**os.environ, "FEROPS_LOG_LEVEL": "WARNING"}


def test_stage_logs_run_and_loadable_model(tmp_path, env):
    import mlflow

    models = {"hog": {"kind": "hog_svm", "grid": {"C": [0.01, 0.1]}, "blas_threads": 1}}
    proj = _project(tmp_path, models)
    res = _stage(proj, "hog", env)
    assert res.returncode == 0, res.stderr[-3000:]

    out = proj / "models" / "baselines" / "hog"
    for f in ("model.joblib", "metrics.json", "grid.csv", "confusion_val.png", "mlflow_run_id.txt"):
        assert (out / f).stat().st_size > 0, f
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "hog" and metrics["kind"] == "baseline" and metrics["estimator"] == "hog_svm"
    assert metrics["train_rows"] == 250 and metrics["val_rows"] == 100
    grid = pd.read_csv(out / "grid.csv")
    assert list(grid["C"]) == [0.01, 0.1] and grid["selected"].sum() == 1
    assert metrics["val_accuracy"] == pytest.approx(grid.loc[grid["selected"], "val_accuracy"].item())

    run_id = (out / "mlflow_run_id.txt").read_text().strip()
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "train_baselines" and run.data.tags["model"] == "hog"
    assert run.data.tags["dataset"] == "synthetic" and run.data.tags["kind"] == "hog_svm"
    assert run.data.params["kind"] == "hog_svm" and "best.C" in run.data.params
    assert run.data.params["seed"] == "7"  # params.yaml's seed: folds, forests and PCA draw from it
    assert run.data.metrics["val_accuracy"] == pytest.approx(metrics["val_accuracy"])
    assert "val_f1_happy" in run.data.metrics and "train_wall_s" in run.data.metrics
    steps = mlflow.MlflowClient().get_metric_history(run_id, "grid_val_accuracy")
    assert sorted(m.step for m in steps) == [0, 1]
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert {"grid.csv", "confusion_val.png", "metrics.json"} <= arts

    # The logged model (skops format) predicts exactly what model.joblib predicts, natively and via pyfunc.
    from ferops.data.io import load_npz

    X, _ = to_xy(load_npz(proj / "split" / "val.npz"))
    local = joblib.load(out / "model.joblib")
    logged = mlflow.sklearn.load_model(metrics["mlflow_model_uri"])
    np.testing.assert_array_equal(logged.predict(X), local.predict(X))
    np.testing.assert_allclose(logged.predict_proba(X), local.predict_proba(X))
    pyfunc = mlflow.pyfunc.load_model(metrics["mlflow_model_uri"])
    np.testing.assert_array_equal(np.asarray(pyfunc.predict(X)), local.predict(X))


def test_stage_unknown_model_is_a_readable_error(tmp_path):
    proj = _project(tmp_path, {"nb": {"kind": "naive_bayes"}})
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    res = _stage(proj, "nope", env)
    assert res.returncode == 2
    assert "error:" in res.stderr and "nope" in res.stderr and "nb" in res.stderr
    assert "Traceback" not in res.stderr


def test_stage_a_bare_model_entry_trains_that_kind_with_its_defaults(tmp_path, env):
    # params.yaml `naive_bayes:` with nothing under it (DVC's foreach accepts it) is `naive_bayes: {}`
    proj = _project(tmp_path, {"naive_bayes": None, "fast": "yes"})
    res = _stage(proj, "naive_bayes", env)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((proj / "models" / "baselines" / "naive_bayes" / "metrics.json").read_text())
    assert metrics["estimator"] == "naive_bayes" and metrics["best_params"] == {}
    res = _stage(proj, "fast", env)  # a value instead of a section: one line naming the key, no traceback
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "train_baselines.models.fast: 'yes' is not a section" in res.stderr
