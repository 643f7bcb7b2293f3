"""`mlflow run -e main` nests the runs its own `dvc repro` started, and no one else's."""

from __future__ import annotations

import os

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
    monkeypatch.setenv(REPRO_ENV, "repro-1")
    with model_run("train_deep", "cnn", {"lr": 0.1}, {}) as ours:
        pass
    monkeypatch.delenv(REPRO_ENV)
    with model_run("train_deep", "vgg", {"lr": 0.1}, {}) as theirs:  # someone else's, meanwhile
        pass
    assert nest_new_runs(project.info.run_id, "repro-1") == [ours.info.run_id]
    client = mlflow.MlflowClient()
    assert client.get_run(ours.info.run_id).data.tags["mlflow.parentRunId"] == project.info.run_id
    assert "mlflow.parentRunId" not in client.get_run(theirs.info.run_id).data.tags
    assert "train_deep-cnn" in client.get_run(project.info.run_id).data.tags["mlflow.note.content"]


def test_repro_names_itself_to_the_stages_and_nests_what_they_started(tmp_path, monkeypatch):
    """`repro` hands dvc (so every stage) one FEROPS_REPRO_ID and nests the runs tagged with it afterwards."""
    import subprocess

    from ferops import mlproject
    from ferops.tracking import REPRO_ENV

    seen: dict[str, str] = {}

    def dvc(cmd):
        seen["cmd"], seen["id"] = " ".join(cmd[1:]), os.environ[REPRO_ENV]
        return 0

    nested: list[tuple[str, str]] = []
    monkeypatch.setenv("MLFLOW_RUN_ID", "project-run")
    monkeypatch.delenv(REPRO_ENV, raising=False)  # repro sets it for good: put back as it was after the test
    monkeypatch.setattr(subprocess, "call", dvc)
    monkeypatch.setattr(mlproject, "nest_new_runs", lambda project, repro_id: nested.append((project, repro_id)) or [])
    assert mlproject.repro(["--pull"]) == 0
    assert seen["cmd"] == "-m dvc repro --pull" and len(seen["id"]) == 32
    assert nested == [("project-run", seen["id"])] and "MLFLOW_RUN_ID" not in os.environ
