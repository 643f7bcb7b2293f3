"""ferops.tracking without a store: which MLflow store a stage and the CLI open."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ferops.tracking import tracking_uri


def test_a_relative_sqlite_tracking_uri_is_the_real_projects_file_under_dvc_exp_run_temp(tmp_path, monkeypatch):
    """`MLFLOW_TRACKING_URI=sqlite:///mlflow.db` (MLflow's docs' form) with `dvc exp run --temp` / `dvc queue start`:
    the stage runs in <repo>/.dvc/tmp/exps/<tmp>/, and the runs and registered versions went to that throw-away
    copy's mlflow.db — `ferops registry` in the project never saw them."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    temp_copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12"
    temp_copy.mkdir(parents=True)
    (temp_copy / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    monkeypatch.chdir(temp_copy)
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # in the project itself: the same file as before
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    for uri in (f"sqlite:///{tmp_path / 'other.db'}", "http://127.0.0.1:5000", "sqlite:///:memory:"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # absolute paths and servers unchanged
        assert tracking_uri() == uri


def test_a_deleted_experiment_is_one_line_naming_the_restore(tmp_path, monkeypatch):
    """The `ferops` experiment deleted in the MLflow UI (a clean-up): every training, tune, evaluate and register stage
    ended in a traceback from MLflow's set_experiment ('Cannot set a deleted experiment')."""
    import mlflow

    from ferops.errors import DataError
    from ferops.tracking import init_tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    init_tracking()
    exp_id = mlflow.get_experiment_by_name("ferops").experiment_id
    mlflow.delete_experiment(exp_id)
    with pytest.raises(DataError, match=f"experiment `ferops` in {uri} was deleted .*`MLFLOW_TRACKING_URI={uri} "
                                        f"mlflow experiments restore --experiment-id {exp_id}`"):
        init_tracking()
    restore = subprocess.run([sys.executable, "-m", "mlflow", "experiments", "restore", "--experiment-id", exp_id],
                             env={**os.environ, "MLFLOW_TRACKING_URI": uri}, capture_output=True)
    assert restore.returncode == 0, restore.stderr[-500:]  # the command named works
    init_tracking()
    assert mlflow.get_experiment_by_name("ferops").lifecycle_stage == "active"


def test_one_sqlite_file_rule_for_mlflow_and_optuna(tmp_path, monkeypatch):
    """tracking and tuning resolve sqlite URLs through config.sqlite_file: a relative path under the real project
    (also from DVC's temp copy), absolute ones as given, none for servers — nor for an in-memory store, which
    `store_missing` used to call missing (its 'file' `:memory:` never exists), refusing `ferops registry` on it."""
    from ferops.config import sqlite_file
    from ferops.tracking import store_missing

    temp_copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12"
    temp_copy.mkdir(parents=True)
    assert sqlite_file("sqlite:///optuna.db", temp_copy) == tmp_path.resolve() / "optuna.db"
    assert sqlite_file(f"sqlite:///{tmp_path / 'x.db'}", temp_copy) == tmp_path / "x.db"
    assert sqlite_file("sqlite:///:memory:") is None and sqlite_file("postgresql://h/db") is None
    assert not store_missing("sqlite:///:memory:") and store_missing(f"sqlite:///{tmp_path / 'none.db'}")


def test_a_sqlite_query_string_is_kept_and_not_part_of_the_file(tmp_path, monkeypatch):
    """`sqlite:///mlflow.db?timeout=30` (SQLAlchemy's options, which MLflow and Optuna both accept): the file is
    mlflow.db — `store_missing` looked for `mlflow.db?timeout=30`, calling an existing store missing — and the URL
    keeps its options when the path is made absolute."""
    from ferops import tuning
    from ferops.config import sqlite_file
    from ferops.tracking import store_missing

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "mlflow.db").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db?timeout=30")
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}?timeout=30"
    assert sqlite_file(tracking_uri()) == tmp_path.resolve() / "mlflow.db" and not store_missing(tracking_uri())
    monkeypatch.delenv(tuning.STORAGE_ENV, raising=False)
    assert tuning.make_storage("sqlite:///studies.db?timeout=30", tmp_path) == \
        f"sqlite:///{tmp_path.resolve() / 'studies.db'}?timeout=30"
    assert tuning._storage_file("sqlite:///studies.db?timeout=30", tmp_path) == tmp_path.resolve() / "studies.db"


def test_a_resumed_run_is_looked_up_and_only_a_missing_one_is_replaced(tmp_path, monkeypatch):
    """model_run reopens the run its run-id file names. A store that no longer holds it (reset since, or the file
    holds no run id) gets a fresh run; any other store error stops the stage. It used to start a fresh run on any
    error: a locked store made a killed training resume its epochs into a second run, the first left RUNNING."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from ferops.tracking import RUN_ID_FILE, find_run, init_tracking, model_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    init_tracking()
    run_dir = tmp_path / "out"
    with model_run("train_deep", "cnn", {"lr": 0.1}, {}, run_dir=run_dir) as run:
        first = run.info.run_id
    assert find_run(first).info.run_id == first
    assert find_run("0" * 32) is None and find_run("not a run id") is None
    with model_run("train_deep", "cnn", {"lr": 0.1}, {}, run_dir=run_dir) as run:
        assert run.info.run_id == first  # resumed
    (run_dir / RUN_ID_FILE).write_text("0" * 32 + "\n")  # a run of a store since reset
    with model_run("train_deep", "cnn", {"lr": 0.1}, {}, run_dir=run_dir) as run:
        fresh = run.info.run_id
    assert fresh != first

    def locked(self, run_id):
        raise MlflowException("(sqlite3.OperationalError) database is locked", error_code="INTERNAL_ERROR")

    n_runs = len(mlflow.search_runs(search_all_experiments=True))
    monkeypatch.setattr(mlflow.MlflowClient, "get_run", locked)
    with pytest.raises(MlflowException, match="database is locked"):
        with model_run("train_deep", "cnn", {"lr": 0.1}, {}, run_dir=run_dir):
            pass
    monkeypatch.undo()
    assert len(mlflow.search_runs(search_all_experiments=True)) == n_runs and \
        (run_dir / RUN_ID_FILE).read_text().strip() == fresh


def test_a_killed_run_is_marked_killed_unless_deleted_or_ended(tmp_path, monkeypatch):
    """end_killed_run: a RUNNING run (its process killed) becomes KILLED; one deleted in the UI meanwhile (a clean-up)
    is left as it is — MLflow refuses to update a deleted run, and train_deep stopped there with MLflow's error."""
    import mlflow

    from ferops.tracking import end_killed_run, init_tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    init_tracking()
    client = mlflow.MlflowClient()
    ids = []
    for _ in range(3):
        with mlflow.start_run() as run:
            ids.append(run.info.run_id)
    killed, deleted, finished = ids
    for r in (killed, deleted):
        client.update_run(r, status="RUNNING")  # as a killed process leaves it
    client.delete_run(deleted)
    for r in (*ids, "0" * 32):
        end_killed_run(r)
    assert [client.get_run(r).info.status for r in ids] == ["KILLED", "RUNNING", "FINISHED"]
