"""The `ferops` command's own options."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path


def test_version_names_ferops_and_the_libraries_a_bug_report_needs():
    r = subprocess.run([sys.executable, "-m", "ferops.cli", "--version"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "40"})  # a narrow terminal: still one line, for grep and pastes
    assert r.returncode == 0, r.stderr
    out = r.stdout.strip()
    assert "\n" not in out
    assert out.startswith(f"ferops {version('ferops')} (")
    for pkg in ("mlflow", "tensorflow", "keras", "optuna", "dvc", "scikit-learn"):
        assert f"{pkg} {version(pkg)}" in out


def test_serve_refuses_what_mlflow_models_serve_cannot_load_in_one_line(tmp_path, monkeypatch):
    """`ferops serve --model models/deep/resnet/model.keras` (a path `ferops predict --model` takes) went on to
    `mlflow models serve`, which died with "No such artifact: 'MLmodel'" and a traceback. Now: one line, exit 2,
    naming what serve takes; an MLflow model folder still goes through."""
    from argparse import Namespace

    import pytest

    from ferops import inference
    from ferops.errors import FerError

    keras_file = tmp_path / "deep" / "resnet" / "model.keras"
    keras_file.parent.mkdir(parents=True)
    keras_file.write_bytes(b"PK")
    for given, what in ((keras_file, "a Keras file"), (keras_file.parent, "a folder with no MLmodel file in it"),
                        (tmp_path / "nothing", "no such file or folder")):
        with pytest.raises(FerError, match=f"^cannot serve --model {given}: {what}. ferops serve takes a registered "
                                           r"model \(models:/<name>@<alias>"):
            inference.cli_serve(Namespace(model=str(given), params=None, host="127.0.0.1", port=5001))
    r = subprocess.run([sys.executable, "-m", "ferops.cli", "serve", "--model", str(keras_file)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "a Keras file" in r.stderr, r.stderr

    pyfunc = tmp_path / "pyfunc_model"
    pyfunc.mkdir()
    (pyfunc / "MLmodel").write_text("flavors: {}\n")
    reached = []

    def stop_at_the_registry_check(uri, fix):
        reached.append(uri)
        raise FerError("stop here")

    monkeypatch.setattr(inference, "check_registered", stop_at_the_registry_check)
    with pytest.raises(FerError, match="stop here"):
        inference.cli_serve(Namespace(model=str(pyfunc), params=None, host="127.0.0.1", port=5001))
    assert reached == [str(pyfunc)]


def test_predicts_default_output_folder_is_git_ignored_wherever_it_is_run(tmp_path):
    """`ferops predict` writes to ./predictions (--out-dir's default) from whichever folder it runs in; ferops finds
    the project from any folder under it, so run from src/ it left an untracked src/.../predictions/ (a user audit)."""
    import shutil

    import pytest

    root = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for where in ("predictions/a_pred.jpg", "src/ferops/predictions/a_pred.jpg", "data/predictions/b.csv"):
        r = subprocess.run(["git", "check-ignore", "-q", "--no-index", where], cwd=root, timeout=30)
        assert r.returncode == 0, f"{where} is not ignored"
