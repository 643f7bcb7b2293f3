"""A real `dvc repro` of the data stages (ingest → validate → split → augment) in a temp repo."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from pipeline_repo import dvc, make_repo, ran_stages

pytestmark = pytest.mark.integration


def test_data_stages_repro_cache_and_param_change(tmp_path):
    repo = make_repo(tmp_path / "repo", with_training=False)
    first = dvc(repo, "repro")
    assert first.returncode == 0, first.stdout + first.stderr
    assert ran_stages(first.stdout) == {"ingest", "validate", "split", "augment"}

    ingest = json.loads((repo / "reports/ingest.json").read_text())
    assert ingest["synthetic"] is True and ingest["rows"] == 700
    split = json.loads((repo / "reports/split.json").read_text())
    assert sum(split["n"][s] for s in ("train", "val", "test", "predict")) == 700
    for f in ("data/processed/split/train.npz", "data/processed/augmented/train.npz", "reports/figures/samples.png",
              "reports/figures/class_hist.png", "reports/figures/augment_preview.png", "reports/validation.json"):
        assert (repo / f).exists(), f
    assert json.loads((repo / "reports/validation.json").read_text())["success"] is True

    second = dvc(repo, "repro")
    assert second.returncode == 0 and ran_stages(second.stdout) == set(), second.stdout

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["augment"]["copies"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = dvc(repo, "repro")
    assert third.returncode == 0, third.stdout + third.stderr
    assert ran_stages(third.stdout) == {"augment"}

    # `dvc exp run --temp` / `dvc queue` run in a copy of what git and DVC track. With a dataset git ignores in
    # data/raw, the copy's ingest made the experiment a synthetic-demo run; it stops now, naming the `dvc add` that
    # brings the data into experiments, and after it the experiment reads the real file.
    from ferops.data.synthetic import make_synthetic

    d = make_synthetic(300, seed=3)
    rows = [f"{e},{' '.join(map(str, p.reshape(-1)))},{u}" for p, e, u in zip(d.pixels, d.emotion, d.usage)]
    (repo / "data/raw/fer2013.csv").write_text("\n".join(["emotion,pixels,Usage", *rows]) + "\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    assert subprocess.run(git + ["check-ignore", "-q", "data/raw/fer2013.csv"], cwd=repo).returncode == 0
    refused = dvc(repo, "exp", "run", "--temp")
    assert refused.returncode != 0 and "SYNTHETIC" not in refused.stderr, refused.stdout + refused.stderr
    assert "`dvc add data/raw/fer2013.csv && git add data/raw/fer2013.csv.dvc" in refused.stdout + refused.stderr
    added = dvc(repo, "add", "data/raw/fer2013.csv")  # as the message says: DVC finds the .dvc file git keeps
    assert added.returncode == 0, added.stdout + added.stderr
    subprocess.run(git + ["add", "-A"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "track the dataset"], cwd=repo, check=True)
    before = {f: (repo / f).read_text() for f in ("params.yaml", "dvc.lock", "reports/augment.json")}
    exp = dvc(repo, "exp", "run", "--temp", "-S", "augment.preview_n=4")
    assert exp.returncode == 0 and "SYNTHETIC" not in exp.stderr, exp.stdout + exp.stderr
    assert {f: (repo / f).read_text() for f in before} == before  # --temp (`make demo`): the workspace untouched
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    (trial,) = [r for base in shown for e in base.get("experiments") or [] for r in e["revs"]]
    assert trial["data"]["deps"]["data/raw"]["nfiles"] == 3  # .gitkeep, the dataset and its .dvc file
