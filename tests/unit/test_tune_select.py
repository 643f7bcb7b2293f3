"""tune_select stage: what train_deep reads from reports/tuning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _select(tmp_path: Path, report: dict) -> tuple[dict, str]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train_deep"]["use_tuned"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "tuning").mkdir()
    (tmp_path / "tuning" / "cnn.json").write_text(json.dumps(report))
    r = subprocess.run([sys.executable, str(ROOT / "stages" / "tune_select.py"), "--model", "cnn", "--tuning",
                        "tuning", "--out", "tuned/cnn.json"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads((tmp_path / "tuned" / "cnn.json").read_text()), r.stderr


def test_a_study_without_a_complete_trial_is_not_named_as_the_source(tmp_path):
    out, err = _select(tmp_path, {"family": "cnn", "best_params": {}, "n_complete": 0})
    assert out == {"model": "cnn", "source": None, "best_params": {}}  # train_deep tags tuned_from=params.yaml
    assert "no best params" in err


def test_tuned_params_are_passed_on_with_their_source(tmp_path):
    out, _ = _select(tmp_path, {"family": "cnn", "best_params": {"lr": 1e-3}, "n_complete": 2})
    assert out == {"model": "cnn", "source": "tuning/cnn.json", "best_params": {"lr": 1e-3}}
