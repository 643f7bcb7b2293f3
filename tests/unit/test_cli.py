"""The `ferops` command's own options."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version


def test_version_names_ferops_and_the_libraries_a_bug_report_needs():
    r = subprocess.run([sys.executable, "-m", "ferops.cli", "--version"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "40"})  # a narrow terminal: still one line, for grep and pastes
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip()
    assert "\n" not in out
    assert out.startswith(f"ferops {version('ferops')} (")
    for pkg in ("mlflow", "tensorflow", "keras", "optuna", "dvc", "scikit-learn"):
        assert f"{pkg} {version(pkg)}" in out
