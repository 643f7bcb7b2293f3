"""The Makefile's variables, read through make itself (`--eval` adds a target that prints one; nothing is run)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _make_var(name: str, *args: str) -> str:
    out = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT), f"--eval=_print_var: ; @echo $({name})",
                          *args, "_print_var"], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_an_absolute_venv_is_put_on_the_path_as_given(tmp_path):
    # `make run VENV=/abs/venv` put $(CURDIR)//abs/venv/bin on the PATH: dvc, mlflow and ruff were then not found
    venv = tmp_path / "venv"
    assert _make_var("PATH", f"VENV={venv}").split(":")[0] == f"{venv}/bin"
    assert _make_var("PATH").split(":")[0] == f"{ROOT}/.venv/bin"
