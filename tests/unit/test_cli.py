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


def test_the_undo_that_promote_prints_names_the_same_model(monkeypatch, capsys, tmp_path):
    """`ferops promote --version 1 --name other` printed `undo with ferops promote --version 2`: run as printed, it
    moved @champion of the default model (register.model_name), not of `other`. The undo repeats --name / --params."""
    from argparse import Namespace

    from ferops import registry

    monkeypatch.setattr(registry, "_existing_store_client", lambda: None)
    monkeypatch.setattr(registry, "promote", lambda client, name, version, alias, reason, champion_alias: {
        "name": name, "alias": alias, "version": version, "previous_version": "2", "changed": True,
        "val_accuracy": "0.5", "previous_val_accuracy": "0.4"})
    registry.cli_promote(Namespace(version="1", alias=None, name="other", reason="drill", params=None))
    assert "undo with `ferops promote --version 2 --name other`." in capsys.readouterr().out
    params = tmp_path / "my params.yaml"  # a path with a space: quoted, so the line pastes into a shell
    params.write_text("register:\n  model_name: other\n")
    registry.cli_promote(Namespace(version="1", alias="staging", name=None, reason="drill", params=str(params)))
    assert f"undo with `ferops promote --version 2 --alias staging --params '{params}'`." in capsys.readouterr().out
