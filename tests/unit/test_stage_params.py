"""Stage scripts: a mistyped params.yaml number ends in `error: params.yaml <key>: …` (exit 2), before any data loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ferops.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _set(params: dict, dotted: str, value: object) -> None:
    *parents, leaf = dotted.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[leaf] = value


@pytest.mark.parametrize("stage, args, key, value, words", [
    ("evaluate", ["--split", "--models", "--ingest-report", "--metrics", "--comparison", "--submission", "--out",
                  "--serving"],
     "evaluate.batch_size", "big", "params.yaml evaluate.batch_size: 'big' is not a whole number ≥ 1."),
    ("evaluate", ["--split", "--models", "--ingest-report", "--metrics", "--comparison", "--submission", "--out",
                  "--serving"],
     "evaluate.tta", "ten-crop", "params.yaml evaluate.tta='ten-crop': use one of none, flip, tencrop, shift, auto."),
    ("validate", ["--data", "--report", "--docs"],
     "validate.min_class_fraction", "lots", "params.yaml validate.min_class_fraction: 'lots' is not a number ≥ 0 and ≤ 1."),
    ("train_baselines", ["--model", "--split", "--ingest-report", "--out"],
     "train_baselines.val_max_rows", "all", "params.yaml train_baselines.val_max_rows: 'all' is not a whole number ≥ 1."),
    ("train_baselines", ["--model", "--split", "--ingest-report", "--out"], "train_baselines.models.logreg.max_iter",
     "lots", "params.yaml train_baselines.models.logreg.max_iter='lots': give a whole number ≥ 1."),
    ("train_baselines", ["--model", "--split", "--ingest-report", "--out"], "train_baselines.models.logreg.grid.C",
     [1e-3, "fast"], "params.yaml train_baselines.models.logreg.grid.C='fast': give a number ≥ 0."),
    ("augment", ["--train", "--out", "--report", "--preview"],
     "augment.preview_n", 0, "params.yaml augment.preview_n: 0 is not a whole number ≥ 1."),
    ("tune", ["--family", "--split", "--ingest-report", "--out", "--figures"],
     "tune.families.resnet.space.lr.low", "fast", "params.yaml tune.families.resnet.space.lr: low='fast' is not a number."),
    # a section given a value: AttributeError tracebacks (tune.pruner's only after TensorFlow and the data load)
    ("tune", ["--family", "--split", "--ingest-report", "--out", "--figures"], "tune.pruner", "median",
     "params.yaml tune.pruner: 'median' is not a section — its settings go indented under `pruner:`"),
    ("tune", ["--family", "--split", "--ingest-report", "--out", "--figures"], "tune.pruner.n_warmup_steps", "one",
     "params.yaml tune.pruner.n_warmup_steps: 'one' is not a whole number ≥ 0."),
    ("tune", ["--family", "--split", "--ingest-report", "--out", "--figures"], "tune.families.resnet", 6,
     "params.yaml tune.families.resnet: 6 is not a section — its settings go indented under `resnet:`"),
])
def test_a_mistyped_number_names_its_params_key(tmp_path, stage, args, key, value, words):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    _set(params, key, value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    missing = str(tmp_path / "absent")  # no inputs: the check must come first
    cmd = [sys.executable, str(ROOT / "stages" / f"{stage}.py")]
    for a in args:
        cmd += [a, ("logreg" if a == "--model" else "resnet") if a in ("--model", "--family") else missing]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"error: {words}" in r.stderr


@pytest.mark.parametrize("value, words", [
    ("three", "params.yaml demo.max_epochs: 'three' is not a whole number ≥ 0."),
    (-1, "params.yaml demo.max_epochs: -1 is not a whole number ≥ 0."),
])
def test_train_deep_checks_the_demo_caps_before_tensorflow(tmp_path, value, words):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo"]["max_epochs"] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    (tmp_path / "ingest.json").write_text('{"synthetic": true}')  # the caps apply to the demo set only
    missing = str(tmp_path / "absent")
    cmd = [sys.executable, str(ROOT / "stages" / "train_deep.py"), "--model", "cnn", "--split", missing, "--train",
           missing, "--tuned", str(tmp_path / "tuned.json"), "--ingest-report", str(tmp_path / "ingest.json"),
           "--out", missing, "--checkpoints", missing, "--curves", missing]
    (tmp_path / "tuned.json").write_text('{"model": "cnn", "source": null, "best_params": {}}')
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"error: {words}" in r.stderr and "tensorflow" not in r.stderr.lower()


def test_shipped_baseline_settings_pass():
    from ferops.models.baselines import check_settings

    models = yaml.safe_load((ROOT / "params.yaml").read_text())["train_baselines"]["models"]
    for name, cfg in models.items():
        check_settings(cfg.get("kind", name), cfg)  # raises on any value it would refuse
    check_settings("random_forest", {"grid": {"max_depth": [None, 10]}, "n_jobs": -1, "cv": 3})
    with pytest.raises(ConfigError, match=r"^n_estimators=0: give a whole number ≥ 1\.$"):
        check_settings("random_forest", {"n_estimators": 0})


def test_train_deep_without_train_reads_train_data_and_mlproject_leaves_it_to_params(tmp_path):
    # MLproject's train_deep passed --train data/processed/split/train.npz: with train_data set to the augment
    # stage's file, `mlflow run -e train_deep` trained on another set than `dvc repro` did, silently
    entries = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    assert "--train" not in entries["train_deep"]["command"] and "--train" not in entries["tune"]["command"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train_deep"]["train_data"] = "chosen/train.npz"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    (tmp_path / "ingest.json").write_text('{"synthetic": false}')
    (tmp_path / "tuned.json").write_text('{"model": "cnn", "source": null, "best_params": {}}')
    missing = str(tmp_path / "absent")
    cmd = [sys.executable, str(ROOT / "stages" / "train_deep.py"), "--model", "cnn", "--split", missing,
           "--tuned", str(tmp_path / "tuned.json"), "--ingest-report", str(tmp_path / "ingest.json"),
           "--out", missing, "--checkpoints", missing, "--curves", missing]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "chosen/train.npz" in r.stderr.splitlines()[-1]


def test_a_demo_or_register_section_that_is_a_value_is_one_line(tmp_path):
    """`demo: 3` (tune reads it without section(): an AttributeError traceback on the demo set) and `register:
    fer2013-resnet` (`ferops predict`/`serve`/`registry` read it for the model name: the same traceback)."""
    from ferops.config import registry_names

    with pytest.raises(ConfigError, match=r"^params.yaml register: 'fer2013-resnet' is not a section"):
        registry_names({"register": "fer2013-resnet"})
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    (tmp_path / "ingest.json").write_text('{"synthetic": true}')  # the demo caps apply to the demo set only
    missing = str(tmp_path / "absent")
    cmd = [sys.executable, str(ROOT / "stages" / "tune.py"), "--family", "resnet", "--split", missing,
           "--ingest-report", str(tmp_path / "ingest.json"), "--out", missing, "--figures", missing]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "error: params.yaml demo: 3 is not a section" in r.stderr


def test_tune_warns_about_keys_of_a_family_its_space_or_the_pruner_that_nothing_reads(tmp_path):
    """`timeout_min` misspelt ran the study with no timeout, a space entry's `log` misspelt sampled a linear range,
    `n_warmup_steps` misspelt kept the default: all silently."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    fam = params["tune"]["families"]["resnet"]
    fam["timout_min"] = fam.pop("timeout_min")
    fam["space"]["lr"]["logscale"] = fam["space"]["lr"].pop("log")
    fam["space"]["batch_size"]["low"] = 32  # a range key beside `choices`: the choices win
    params["tune"]["pruner"]["n_warmup_step"] = params["tune"]["pruner"].pop("n_warmup_steps")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    missing = str(tmp_path / "absent")
    cmd = [sys.executable, str(ROOT / "stages" / "tune.py"), "--family", "resnet", "--split", missing,
           "--ingest-report", missing, "--out", missing, "--figures", missing]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    for words in ("params.yaml tune.families.resnet.timout_min: unknown key, ignored — did you mean `timeout_min`?",
                  "params.yaml tune.families.resnet.space.lr.logscale: unknown key, ignored",
                  "params.yaml tune.families.resnet.space.batch_size.low: unknown key, ignored (known: choices)",
                  "params.yaml tune.pruner.n_warmup_step: unknown key, ignored — did you mean `n_warmup_steps`?"):
        assert words in r.stderr, r.stderr
    assert "params.yaml tune.families.resnet.space.lr.low:" not in r.stderr  # the keys it reads are not warned about


@pytest.mark.parametrize("family, name, spec, words", [
    ("cnn", "learning_rate", {"low": 3.0e-4, "high": 3.0e-3, "log": True},
     "params.yaml tune.families.cnn.space.learning_rate: not a training config key; use one of lr, "),
    ("resnet", "depth", {"low": 0, "high": 2}, "params.yaml tune.families.resnet.space.depth: depth=0: must be at least 1."),
    # values training refuses, at the high end or in a later choice: only the trial drawing them failed, maybe hours in
    ("resnet", "batch_size", {"choices": [64, "big"]}, "params.yaml tune.families.resnet.space.batch_size: batch_size="),
    ("cnn", "dropout", {"low": 0.1, "high": 1.5}, "params.yaml tune.families.cnn.space.dropout: dropout="),
    ("resnet", "base_width", {"choices": [32, "x"]}, "params.yaml tune.families.resnet.space.base_width: "),
])
def test_a_space_entry_the_model_config_cannot_take_fails_before_the_data_loads(tmp_path, family, name, spec, words):
    """It failed inside the first trial, after TensorFlow and the data load (with parallel workers: a traceback each)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tune"]["families"][family]["space"][name] = spec
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    (tmp_path / "ingest.json").write_text('{"synthetic": false}')
    missing = str(tmp_path / "absent")  # no data: the check must come first
    cmd = [sys.executable, str(ROOT / "stages" / "tune.py"), "--family", family, "--split", missing,
           "--ingest-report", str(tmp_path / "ingest.json"), "--out", missing, "--figures", missing]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"error: {words}" in r.stderr, r.stderr


def test_tune_checks_a_stepped_range_at_its_last_step_and_blames_a_bad_base_config_on_its_own_key(tmp_path):
    """A stepped range's `high` off the grid is never sampled (dropout 0.1..1.0 step 0.2 tops at 0.9), so it is no
    error; a bad value of the model's own config is named at its key, not at a search-space entry."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tune"]["families"]["cnn"]["space"] = {"dropout": {"low": 0.1, "high": 1.0, "step": 0.2}}
    params["train_deep"]["models"]["cnn"]["optimizer"] = "adamw2"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    (tmp_path / "ingest.json").write_text('{"synthetic": false}')
    missing = str(tmp_path / "absent")
    cmd = [sys.executable, str(ROOT / "stages" / "tune.py"), "--family", "cnn", "--split", missing,
           "--ingest-report", str(tmp_path / "ingest.json"), "--out", missing, "--figures", missing]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "error: params.yaml train_deep.models.cnn.optimizer='adamw2'" in r.stderr, r.stderr
    params["train_deep"]["models"]["cnn"]["optimizer"] = "adamw"  # now only the data is missing: the checks passed
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert "space.dropout" not in r.stderr and "train.npz: not found" in r.stderr, r.stderr


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_tune_refuses_a_workers_flag_below_one_as_the_flag(tmp_path, value):
    """`--workers 0` fell back to params.yaml tune.workers silently, and `--workers -1` failed as `tune.workers=-1`, a
    key the user never set."""
    missing = str(tmp_path / "absent")
    cmd = [sys.executable, str(ROOT / "stages" / "tune.py"), "--family", "resnet", "--split", missing, "--workers", value,
           "--ingest-report", missing, "--out", missing, "--figures", missing]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"error: argument --workers: {value!r} is not a whole number ≥ 1" in r.stderr, r.stderr
