"""The entry wrapper: TF environment defaults and human error output."""

from __future__ import annotations

import os

import pytest

from ferops.errors import DataError
from ferops.runner import run, tf_environment


def test_tf_environment_sets_defaults_but_keeps_user_values(monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    tf_environment()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"  # oneDNN on AVX2 CPUs too (TF's default is off there)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"  # the user's choice wins
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    tf_environment()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"


def test_run_prints_expected_failures_without_traceback(capsys, monkeypatch):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")  # run() sets TF defaults; keep them test-local

    def main():
        raise DataError("data/raw/x.csv row 3: expected 2304 pixel values, found 7")

    with pytest.raises(SystemExit) as exc:
        run(main)
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert err.startswith("error: data/raw/x.csv row 3") and "Traceback" not in err
