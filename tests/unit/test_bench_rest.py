"""benchmarks/rest.py: PrivateTest over `/invocations`, with the answers' `model` column."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import rest  # noqa: E402
import train  # noqa: E402


@pytest.mark.parametrize("answered", ["models:/fer2013-resnet/3", None])
def test_reports_the_model_that_answered(answered, tmp_path, monkeypatch):
    """Each answer names the served version (a `model` column since `ferops serve` passes it); the report must say
    which model its figures are of — and still work with a server whose answers have no such column."""
    from ferops.data.synthetic import make_synthetic

    test = make_synthetic(20, 0)
    monkeypatch.setattr(train, "read_splits", lambda path: {"test": test})
    data, out = tmp_path / "data.csv", tmp_path / "rest.json"
    data.write_text("")

    def post(url, rows, tta):
        extra = {"model": answered} if answered else {}
        return [{"label": 0, "label_name": "Angry", **{f"prob_{i}": 1 / 7 for i in range(7)}, **extra} for _ in rows]

    monkeypatch.setattr(rest, "post", post)
    monkeypatch.setattr(sys, "argv", ["rest.py", "--data", str(data), "--batch", "8", "--single-runs", "2",
                                      "--json", str(out)])
    rest.main()
    report = json.loads(out.read_text())
    assert report["served_by"] == answered
    assert report["rows"] == int(test.labeled.sum())
    assert 0 <= report["test_accuracy"] <= 1
