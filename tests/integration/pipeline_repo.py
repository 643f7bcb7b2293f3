"""Build a shrunk copy of the project in a temp dir so a real `dvc repro` runs in minutes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from ferops.config import deep_merge

REPO = Path(__file__).resolve().parents[2]
COPY = ["dvc.yaml", "params.yaml", "MLproject", "python_env.yaml", "pyproject.toml", "stages", "src", ".dvc/config",
        "data/raw/.gitkeep"]

# Tiny but complete: every stage kind runs, with minutes-scale compute on 2 cores.
SHRINK: dict[str, Any] = {
    "demo": {"max_epochs": 1, "max_trials": 2, "max_train_rows": 400},
    "ingest": {"synthetic": {"n": 700, "seed": 7}},
    "augment": {"preview_n": 3},
    "train_baselines": {"models": None},
    "tune": {"families": None},
    "train_deep": {"models": None},
}
BASELINES = {"naive_bayes": {"kind": "naive_bayes", "grid": {"var_smoothing": [1.0e-9]}}}
TUNE = {"resnet": {"n_trials": 2, "timeout_min": 3, "epochs": 1, "train_max_rows": 300,
                   "space": {"lr": {"low": 1.0e-3, "high": 3.0e-3, "log": True}}}}
DEEP = {
    "cnn": {"arch": "cnn", "filters": [8, 16], "dense": 32, "dropout": 0.2, "epochs": 1, "batch_size": 64},
    "resnet": {"arch": "resnet", "stages": [1, 1], "widths": [8, 16], "stem_stride": 2, "stem_pool": False,
               "activation": "relu", "dropout": 0.0, "epochs": 1, "batch_size": 64},
}


def make_repo(dest: Path, with_training: bool = True) -> Path:
    """Copy the project into `dest`, shrink params.yaml, git+dvc init it; returns dest."""
    for rel in COPY:
        src = REPO / rel
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / rel)
    (dest / "data" / "raw").mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = deep_merge(params, SHRINK)
    params["train_baselines"]["models"] = BASELINES
    params["tune"]["families"] = TUNE
    params["train_deep"]["models"] = DEEP
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not with_training:
        stages = yaml.safe_load((dest / "dvc.yaml").read_text())
        keep = {"ingest", "validate", "split", "augment"}
        stages["stages"] = {k: v for k, v in stages["stages"].items() if k in keep}
        (dest / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    raw_rules = [ln for ln in (REPO / ".gitignore").read_text().splitlines() if ln.lstrip("!").startswith("/data/raw/")]
    (dest / ".gitignore").write_text("\n".join(["/data/interim", "/data/processed", "/models", "/reports", "/mlflow.db",
                                                "/mlflow.db.lock", "/mlflow.db.registry.lock", "/mlartifacts", "/optuna.db", "/checkpoints",
                                                *raw_rules]) + "\n")  # the project's rules for datasets
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


def dvc(dest: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the venv's dvc in `dest` with the venv's python first on PATH and a local MLflow store."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{dest / 'mlflow.db'}"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["FEROPS_LOG_LEVEL"] = "WARNING"
    env["DVC_SITE_CACHE_DIR"] = str(dest.parent / f"{dest.name}.dvc_site")  # DVC's per-repo state: not /var/tmp
    return subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=dest, env=env,
                          capture_output=True, text=True, timeout=timeout)


def ran_stages(out: str) -> set[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it ran."""
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}
