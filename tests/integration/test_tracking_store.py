"""The MLflow store's first use from several processes at once (`dvc queue start -j 2` on a fresh project)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

INIT = "from ferops.tracking import init_tracking; import mlflow; init_tracking(); print(mlflow.get_experiment_by_name('ferops').experiment_id)"


def test_processes_starting_on_a_fresh_store_share_one_experiment(tmp_path: Path):
    env = {"PATH": str(Path(sys.executable).parent), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "HOME": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", INIT], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1  # one experiment, whoever created it


def test_a_run_deleted_in_the_ui_is_not_resumed(tmp_path: Path, monkeypatch):
    """A killed stage's run, deleted in the MLflow UI, then the stage rerun: a new run (MLflow refuses to start a
    deleted one — the old code ended in a raw MlflowException on every rerun until the checkpoint went)."""
    import mlflow

    from ferops.tracking import RUN_ID_FILE, init_tracking, model_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    init_tracking()
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="killed"):
        with model_run("train_deep", "cnn", {"lr": 0.01}, {}, run_dir=run_dir) as run:
            old = run.info.run_id
            raise RuntimeError("killed")
    mlflow.delete_run(old)
    with model_run("train_deep", "cnn", {"lr": 0.01}, {}, run_dir=run_dir) as run:
        new = run.info.run_id
    assert new != old and (run_dir / RUN_ID_FILE).read_text().strip() == new
    assert mlflow.get_run(new).data.params["lr"] == "0.01"  # a fresh run logs its params
