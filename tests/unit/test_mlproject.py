"""`mlflow run -e main` nests the runs its own `dvc repro` started, and no one else's."""

from __future__ import annotations

import time

import mlflow


def test_only_the_runs_of_this_repro_are_nested_under_the_project_run(tmp_path, monkeypatch):
    """Another user's run started in the same store while the pipeline ran stayed top-level: it used to be nested
    under this project run (every top-level run started since counted as the pipeline's)."""
    from ferops.mlproject import nest_new_runs
    from ferops.tracking import REPRO_ENV, init_tracking, model_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    init_tracking()
    with mlflow.start_run() as project:
        pass
    since = int(time.time() * 1000)
    monkeypatch.setenv(REPRO_ENV, "repro-1")
    with model_run("train_deep", "cnn", {"lr": 0.1}, {}) as ours:
        pass
    monkeypatch.delenv(REPRO_ENV)
    with model_run("train_deep", "vgg", {"lr": 0.1}, {}) as theirs:  # someone else's, meanwhile
        pass
    assert nest_new_runs(project.info.run_id, since, "repro-1") == [ours.info.run_id]
    client = mlflow.MlflowClient()
    assert client.get_run(ours.info.run_id).data.tags["mlflow.parentRunId"] == project.info.run_id
    assert "mlflow.parentRunId" not in client.get_run(theirs.info.run_id).data.tags
    assert "train_deep-cnn" in client.get_run(project.info.run_id).data.tags["mlflow.note.content"]
