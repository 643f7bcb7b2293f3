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
