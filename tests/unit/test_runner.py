"""The entry wrapper: TF environment defaults and human error output."""

from __future__ import annotations

import os

import pytest

from ferops.errors import DataError
from ferops.runner import cap_onednn_isa, run, tf_environment


def test_tf_environment_sets_defaults_but_keeps_user_values(monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    tf_environment()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"  # oneDNN on AVX2 CPUs too (TF's default is off there)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"  # the user's choice wins
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    tf_environment()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"


def test_onednn_isa_cap_comes_from_the_model_config_and_the_user_wins(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "recorded")  # so monkeypatch restores the original state afterwards
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    cap_onednn_isa({"arch": "resnet"})
    assert "ONEDNN_MAX_CPU_ISA" not in os.environ  # no key: oneDNN picks the best kernels
    cap_onednn_isa({"arch": "mini_xception", "onednn_max_isa": "avx2"})
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    cap_onednn_isa({"onednn_max_isa": "avx2"})
    assert os.environ["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"


def test_run_prints_expected_failures_without_traceback(capsys, monkeypatch):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")  # run() sets TF defaults; keep them test-local

    def main():
        raise DataError("data/raw/x.csv row 3: expected 2304 pixel values, found 7")

    with pytest.raises(SystemExit) as exc:
        run(main)
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert err.startswith("error: data/raw/x.csv row 3") and "Traceback" not in err
