"""A real `dvc repro` of the data stages (ingest → validate → split → augment) in a temp repo."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline_repo import dvc, make_repo

pytestmark = pytest.mark.integration


def _ran(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}


def test_data_stages_repro_cache_and_param_change(tmp_path):
    repo = make_repo(tmp_path / "repo", with_training=False)
    first = dvc(repo, "repro")
    assert first.returncode == 0, first.stdout + first.stderr
    assert _ran(first.stdout) == {"ingest", "validate", "split", "augment"}

    ingest = json.loads((repo / "reports/ingest.json").read_text())
    assert ingest["synthetic"] is True and ingest["rows"] == 700
    split = json.loads((repo / "reports/split.json").read_text())
    assert sum(split["n"][s] for s in ("train", "val", "test", "predict")) == 700
    for f in ("data/processed/split/train.npz", "data/processed/augmented/train.npz", "reports/figures/samples.png",
              "reports/figures/class_hist.png", "reports/figures/augment_preview.png", "reports/validation.json"):
        assert (repo / f).exists(), f
    assert json.loads((repo / "reports/validation.json").read_text())["success"] is True

    second = dvc(repo, "repro")
    assert second.returncode == 0 and _ran(second.stdout) == set(), second.stdout

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["augment"]["copies"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = dvc(repo, "repro")
    assert third.returncode == 0, third.stdout + third.stderr
    assert _ran(third.stdout) == {"augment"}
