"""Shared fixtures: paths to the repo and the real data, quiet TF logs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
REAL_CSV = REPO.parent / "shared" / "data" / "fer2013.csv.gz"
IMAGES_SAMPLE = REPO.parent / "shared" / "data" / "fer2013_images_sample"


@pytest.fixture
def real_csv() -> Path:
    """The real FER2013 CSV, or skip with the reason."""
    if not REAL_CSV.exists():
        pytest.skip(f"real data not found at {REAL_CSV} (see ../shared/data/README.md)")
    return REAL_CSV


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A fresh real sqlite MLflow store for one test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri
