"""register + `ferops registry` / `ferops promote` against a real sqlite MLflow store.

Challenger/champion rules (a worse model never demotes the champion, a better one takes it), idempotent
re-runs, deliberate promotion with its audit tags, and the readable listing.
"""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import pytest

from ferops.errors import DataError

pytestmark = pytest.mark.integration

NAME = "fer2013-resnet"
CFG = {"model_name": NAME, "family": "resnet", "challenger_alias": "challenger", "champion_alias": "champion"}
INGEST = {"synthetic": False, "format": "fer2013", "sha256": "a" * 64, "source": "test", "rows": 10}


def _train(models: Path, name: str, arch: str, val: float, seed: int, ingest: dict = INGEST) -> Path:
    """A tiny Keras model dir by train_deep's contract (fresh dir + fresh MLflow run, as `dvc repro` makes)."""
    import shutil

    import keras

    from ferops.tracking import dataset_tags, model_run

    d = models / name
    shutil.rmtree(d, ignore_errors=True)  # DVC deletes a stage's outs before re-running it
    d.mkdir(parents=True)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Rescaling(1 / 255.0), keras.layers.Flatten(),
                              keras.layers.Dense(7, activation="softmax")])
    model.save(d / "model.keras")
    config = {"arch": arch, "lr": 0.001 * seed, "epochs": 1}
    (d / "config.json").write_text(json.dumps(config))
    (d / "metrics.json").write_text(json.dumps({"model": name, "kind": "deep", "arch": arch, "val_accuracy": val,
                                                "val_macro_f1": val - 0.1, "train_wall_s": 1.0}))
    with model_run("train_deep", name, config, dataset_tags(ingest), run_dir=d):
        pass
    return d


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store and a params.yaml naming the registered model."""
    from ferops.tracking import init_tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    init_tracking()
    (tmp_path / "params.yaml").write_text(f"register:\n  model_name: {NAME}\n")
    return tmp_path


def _register(models: Path, test_acc: float = 0.5) -> dict:
    from ferops.registry import register_best

    return register_best(models, {"resnet": {"test_accuracy": test_acc, "test_accuracy_tta": test_acc + 0.01}},
                         INGEST, CFG)


def test_a_model_trained_on_other_data_is_tagged_with_them_and_not_promoted_over_the_champion(store, caplog):
    """A run trained on another data file than reports/ingest.json names (trained outside DVC): its version carries
    the run's data hash, not the current one, so a higher val accuracy on other rows does not take @champion."""
    from mlflow import MlflowClient

    models = store / "models" / "deep"
    _train(models, "resnet", "resnet", val=0.50, seed=2)
    assert _register(models)["decision"] == "champion"
    _train(models, "resnet", "resnet", val=0.90, seed=3, ingest={**INGEST, "sha256": "b" * 64})
    r2 = _register(models)
    assert (r2["version"], r2["decision"], r2["champion_version"]) == (2, "challenger", 1)  # old code: v2 champion
    assert "not comparable" in r2["reason"]
    assert MlflowClient().get_model_version(NAME, "2").tags["data_sha256"] == "b" * 64
    assert "trained on data bbbbbbbbbbbb" in caplog.text


def test_a_deleted_training_run_is_one_line_naming_the_restore(store):
    """The best model's run deleted in the MLflow UI: register cannot log the served model to it. One DataError
    naming the run and both cures, not MLflow's "cannot start run ... in the deleted state" traceback."""
    from mlflow import MlflowClient

    from ferops.tracking import reopen_run

    models = store / "models" / "deep"
    d = _train(models, "resnet", "resnet", val=0.50, seed=2)
    run_id = reopen_run(d)
    MlflowClient().delete_run(run_id)
    with pytest.raises(DataError, match=f"run {run_id} \\(resnet\\) was deleted") as exc:
        _register(models)
    assert f"mlflow runs restore --run-id {run_id}" in str(exc.value) and "train_deep@resnet" in str(exc.value)
    MlflowClient().restore_run(run_id)
    assert _register(models)["decision"] == "champion"  # restored: registered as usual


def test_the_card_of_a_fixed_tta_mode_says_it_was_set_not_chosen(store):
    """evaluate tags the run with how its TTA mode came about; register's card follows it (a fixed `evaluate.tta`
    read "chosen on validation")."""
    from mlflow import MlflowClient

    from ferops.evaluation import ModelEntry, log_to_run

    models = store / "models" / "deep"
    d = _train(models, "resnet", "resnet", val=0.50, seed=2)
    assert log_to_run(ModelEntry("resnet", "deep", d), {"test_accuracy": 0.5}, [], "flip", chosen_on_val=False)
    r = _register(models)
    card = MlflowClient().get_model_version(NAME, str(r["version"])).description
    assert "the test-time augmentation mode, `flip`, was set in params.yaml `evaluate.tta`" in card


def test_evaluates_serving_file_not_a_run_tag_an_experiment_rewrote_sets_what_is_served(store):
    """evaluate's TTA mode and temperatures reach register through reports/serving.json, a DVC dep. register read them
    from the training run's `eval_*` tags, which every experiment re-evaluating the same cached run (`dvc exp run
    --temp`, `dvc queue`) rewrites: a workspace register then served the experiment's mode and temperatures."""
    from mlflow import MlflowClient

    from ferops.data.io import write_json
    from ferops.registry import read_serving, register_best

    client, models = MlflowClient(), store / "models" / "deep"
    run_id = (_train(models, "resnet", "resnet", val=0.5, seed=2) / "mlflow_run_id.txt").read_text().strip()
    # the workspace's evaluate chose flip on val; an experiment then re-evaluated the run with tencrop set in params
    entry = {"tta": "flip", "tta_chosen": "val", "temperatures": {"flip": 1.2, "none": 1.3}, "run_id": run_id}
    path = write_json({"resnet": entry}, store / "reports" / "serving.json")
    for k, v in {"eval_tta": "tencrop", "eval_tta_chosen": "params",
                 "eval_temperatures": json.dumps({"none": 2.0, "tencrop": 1.5})}.items():
        client.set_tag(run_id, k, v)
    scores = {"resnet": {"test_accuracy": 0.5}}
    r = register_best(models, scores, INGEST, CFG, serving=read_serving(path))
    mv = client.get_model_version(NAME, str(r["version"]))
    assert (r["tta_mode"], mv.tags["tta_mode"]) == ("flip", "flip")  # old code: tencrop, the experiment's
    assert json.loads(mv.tags["temperatures"]) == {"flip": 1.2, "none": 1.3}
    assert "mode were chosen on validation" in mv.description  # not "set in params.yaml", the experiment's

    # evaluate has not scored the model now in the folder (a stage run by hand, `mlflow run -e train_deep`): no entry,
    # or one of another training run — refused, naming the fix, not served with tags an experiment may have set
    fix = r"`dvc repro -f -s evaluate` \(-s: that stage alone\), then register"
    with pytest.raises(DataError, match=f"serving.json: resnet: no entry — evaluate has not scored this model; re-run .*{fix}"):
        register_best(models, scores, INGEST, CFG, serving={})
    with pytest.raises(DataError, match=f"evaluate scored MLflow run 0+, but the model now in its folder is run {run_id}"):
        register_best(models, scores, INGEST, CFG, serving={"resnet": {**entry, "run_id": "0" * 32}})

    # a malformed file: one line naming it, its entry and the fix — before anything is registered
    bad = write_json({"resnet": {"tta": "ten-crop", "tta_chosen": "val", "temperatures": {}}}, store / "bad.json")
    with pytest.raises(DataError, match=f"bad\\.json: resnet: tta 'ten-crop' is not one of .*{fix}"):
        read_serving(bad)
    for wrong in ({**entry, "temperatures": {"flip": "hot"}}, {**entry, "temperatures": {"flip": True}}, ["flip"]):
        with pytest.raises(DataError, match=f"serving\\.json: resnet: .*{fix}"):
            register_best(models, scores, INGEST, CFG, serving={"resnet": wrong})
    bad.write_text("[1, 2")
    with pytest.raises(DataError, match=r"bad\.json: not JSON"):
        read_serving(bad)
    assert len(client.search_model_versions(f"name='{NAME}'")) == 1


def test_card_and_promote_follow_the_projects_champion_alias(store, capsys):
    """register.champion_alias: best — `ferops registry --card` and `ferops promote` default to @best, the alias
    serve and predict follow (they used a literal `champion`: no card, and a promotion serving never saw)."""
    from mlflow import MlflowClient

    from ferops.registry import cli_promote, cli_registry, register_best

    (store / "params.yaml").write_text(f"register:\n  model_name: {NAME}\n  champion_alias: best\n")
    models = store / "models" / "deep"
    for seed, val in ((2, 0.5), (3, 0.4)):
        _train(models, "resnet", "resnet", val=val, seed=seed)
        register_best(models, {"resnet": {"test_accuracy": 0.5}}, INGEST, {**CFG, "champion_alias": "best"})
    params = str(store / "params.yaml")
    cli_registry(Namespace(name=None, params=params, card=""))  # `--card` with no value
    assert capsys.readouterr().out.startswith(f"# {NAME} v1:")
    cli_promote(Namespace(name=None, version="2", alias=None, reason="drill", params=params))
    assert set(MlflowClient().get_registered_model(NAME).aliases) == {"best", "challenger"}
    assert str(MlflowClient().get_model_version_by_alias(NAME, "best").version) == "2"
    capsys.readouterr()
    cli_promote(Namespace(name=None, version="2", alias="champion", reason="drill", params=params, new_alias=True))
    cli_promote(Namespace(name=None, version="1", alias="champion", reason="drill", params=params))
    out = capsys.readouterr().out  # the undo of a @champion move names it: without --alias it would move @best
    assert f"undo with `ferops promote --version 2 --alias champion --params {params}`" in out, out
    cli_promote(Namespace(name=None, version="1", alias=None, reason="drill", params=params))
    assert f"undo with `ferops promote --version 2 --params {params}`." in capsys.readouterr().out  # @best: promote's default


def test_the_undo_that_promote_prints_names_the_same_model(store, capsys):
    """`ferops promote --version 1 --name other` printed `undo with ferops promote --version 2`: run as printed, it
    moved @champion of the default model (register.model_name), not of `other`. The undo repeats --name / --params,
    and run as printed it puts the alias back."""
    from mlflow import MlflowClient

    from ferops.registry import cli_promote, register_best

    models = store / "models" / "deep"
    for seed, val in ((2, 0.4), (3, 0.5)):  # v2 beats v1 on val: @champion is v2
        _train(models, "resnet", "resnet", val=val, seed=seed)
        register_best(models, {"resnet": {"test_accuracy": 0.5}}, INGEST, {**CFG, "model_name": "other"})

    def holder(alias: str) -> str:
        return str(MlflowClient().get_model_version_by_alias("other", alias).version)

    assert holder("champion") == "2"
    cli_promote(Namespace(version="1", alias=None, name="other", reason="drill", params=None))
    assert "undo with `ferops promote --version 2 --name other`." in capsys.readouterr().out
    assert holder("champion") == "1"
    assert [m.name for m in MlflowClient().search_registered_models()] == ["other"]  # the default model untouched
    params = store / "my params.yaml"  # a path with a space: quoted, so the line pastes into a shell
    params.write_text("register:\n  model_name: other\n")
    cli_promote(Namespace(version="2", alias="staging", name=None, reason="drill", params=str(params), new_alias=True))
    cli_promote(Namespace(version="1", alias="staging", name=None, reason="drill", params=str(params)))
    assert f"undo with `ferops promote --version 2 --alias staging --params '{params}'`." in capsys.readouterr().out
    cli_promote(Namespace(version="2", alias="staging", name=None, reason="undo", params=str(params)))  # as printed
    assert (holder("staging"), holder("champion")) == ("2", "1")


def test_a_version_uri_that_is_not_there_is_one_line_listing_the_versions(store, caplog):
    """`ferops serve --model models:/<name>/<N>` with a deleted or mistyped version: a FerError naming the versions
    (it execed `mlflow models serve`, which died with MLflow's traceback); `latest` is pinned to the newest."""
    from ferops.errors import FerError
    from ferops.inference import _pinned, check_registered

    models = store / "models" / "deep"
    _train(models, "resnet", "resnet", val=0.5, seed=2)
    _register(models)
    with pytest.raises(FerError, match=rf"has model '{NAME}' but no version 7; its versions: 1 "):
        check_registered(f"models:/{NAME}/7")
    with pytest.raises(FerError, match="has no model 'nope'"):
        check_registered("models:/nope/1")
    for ref in ("1", "latest"):
        _, version = check_registered(f"models:/{NAME}/{ref}")
        assert _pinned(f"models:/{NAME}/{ref}", version) == f"models:/{NAME}/1"


def test_a_version_is_registered_again_when_the_served_code_changes(store, monkeypatch, caplog):
    """The registered model ships ferops' serving code: re-running register after a fix to inference.py reused the
    version (same run, TTA and temperatures), so the fix never reached what serves. The code's fingerprint is a tag,
    and a version is reused only with the same one."""
    from mlflow import MlflowClient

    from ferops import codebase

    models = store / "models" / "deep"
    _train(models, "resnet", "resnet", val=0.5, seed=2)
    first = _register(models)
    tags = MlflowClient().get_model_version(NAME, str(first["version"])).tags
    assert tags["code_sha256"] == codebase.served_code_fingerprint() and len(tags["code_sha256"]) == 16
    assert _register(models)["reused_existing_version"]  # nothing changed: no new version
    monkeypatch.setattr(codebase, "served_code_fingerprint", lambda: "f" * 16)  # as after an edit of inference.py
    with caplog.at_level("INFO", logger="ferops"):
        again = _register(models)
    assert not again["reused_existing_version"] and again["version"] == first["version"] + 1
    assert again["decision"] == "champion" and "with other serving code" in caplog.text  # its own run, newer code
    assert "serving with the current serving code" in again["reason"]
    assert MlflowClient().get_model_version(NAME, str(again["version"])).tags["code_sha256"] == "f" * 16

    # a better model takes @champion; a person rolls back; new serving code registers the better run again, and that
    # version must not undo the rollback (it did: a version new to the registry was compared on val as if unseen)
    from argparse import Namespace

    from ferops.registry import cli_promote

    run_id = (_train(models, "resnet", "resnet", val=0.6, seed=3) / "mlflow_run_id.txt").read_text().strip()
    better = _register(models)
    assert (better["version"], better["decision"]) == (again["version"] + 1, "champion")
    cli_promote(Namespace(name=None, version=str(again["version"]), alias="champion", reason="rollback drill",
                          params=str(store / "params.yaml")))
    monkeypatch.setattr(codebase, "served_code_fingerprint", lambda: "e" * 16)
    after = _register(models)
    assert (after["version"], after["reused_existing_version"], after["champion_version"]) == (
        better["version"] + 1, False, again["version"]), after["reason"]
    assert "was registered and compared before" in after["reason"]

    # a registration that fails while logging the model leaves the training run as it was, not FAILED
    from ferops import inference

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(codebase, "served_code_fingerprint", lambda: "d" * 16)
    monkeypatch.setattr(inference, "log_pyfunc_model", broken)
    with pytest.raises(OSError, match="disk full"):
        _register(models)
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"


def test_register_compares_val_accuracy_as_served(store, capsys):
    """The champion serves with the TTA mode evaluate chose on val, so register ranks and compares by that val figure
    (evaluate's `val_accuracy_tta`), recorded on each version as `val_accuracy_served`."""
    from argparse import Namespace

    from mlflow import MlflowClient

    from ferops.registry import cli_promote, cli_registry, register_best

    client, models = MlflowClient(), store / "models" / "deep"

    def register(served: float) -> dict:
        return register_best(models, {"resnet": {"test_accuracy": 0.5, "val_accuracy_tta": served}}, INGEST, CFG)

    _train(models, "resnet", "resnet", val=0.50, seed=2)
    first = register(0.55)
    assert client.get_model_version(NAME, "1").tags["val_accuracy_served"] == "0.550000"
    assert first["val_accuracy_served"] == 0.55
    # better on the single pass, worse as served: it stays @challenger
    _train(models, "resnet", "resnet", val=0.60, seed=3)
    second = register(0.52)
    assert (second["version"], second["decision"]) == (2, "challenger")
    assert "val accuracy as served (with its TTA mode) 0.5200 does not beat champion v1's 0.5500" in second["reason"]
    # a version registered before the tag gets it when reused
    client.delete_model_version_tag(NAME, "2", "val_accuracy_served")
    assert register(0.52)["reused_existing_version"]
    assert client.get_model_version(NAME, "2").tags["val_accuracy_served"] == "0.520000"
    # the listing and a promotion show the figures compared
    capsys.readouterr()
    cli_registry(Namespace(name=None, params=str(store / "params.yaml")))
    listing = capsys.readouterr().out
    assert "val acc (TTA)" in listing and "60.00 (52.00)" in listing and "50.00 (55.00)" in listing
    cli_promote(Namespace(name=None, version="2", alias="champion", reason="drill", params=str(store / "params.yaml")))
    out = capsys.readouterr().out
    assert "moved from v1 (val with TTA 55.00%) to v2 (val with TTA 52.00%)" in out
    assert "v2 has a lower validation accuracy than v1" in out


def test_register_promote_and_list(store, capsys):
    from mlflow import MlflowClient

    from ferops.registry import RegistryError, cli_promote, cli_registry

    client = MlflowClient()
    models = store / "models" / "deep"
    _train(models, "cnn", "cnn", val=0.99, seed=1)  # another family never counts, however good
    with pytest.raises(DataError, match="no trained model with arch `resnet`"):
        _register(models)

    # 1) first ResNet: no champion yet → v1 is champion and challenger; the TTA mode evaluate chose on val
    #    (its `eval_tta` tag on the training run) is recorded for requests' `tta: auto`
    d = _train(models, "resnet", "resnet", val=0.50, seed=2)
    client.set_tag((d / "mlflow_run_id.txt").read_text().strip(), "eval_tta", "flip")
    trained = client.get_run((d / "mlflow_run_id.txt").read_text().strip()).info
    r1 = _register(models, test_acc=0.48)
    assert (r1["version"], r1["decision"], r1["aliases"]) == (1, "champion", ["challenger", "champion"])
    # logging the model reopens the training run: its status and end time (the UI's duration) are put back
    assert (client.get_run(trained.run_id).info.status, client.get_run(trained.run_id).info.end_time) == (
        "FINISHED", trained.end_time)
    tags = client.get_model_version(NAME, "1").tags
    assert tags["tta_mode"] == "flip"
    from ferops.inference import load_classifier

    assert load_classifier(f"models:/{NAME}/1").tta == "flip"
    assert float(tags["val_accuracy"]) == 0.5 and float(tags["test_accuracy"]) == 0.48
    assert tags["data_sha256"] == INGEST["sha256"] and tags["git_commit"] and tags["source_model_dir"].endswith("resnet")
    assert json.loads(tags["params"])["arch"] == "resnet"
    # the version's description is its model card (the MLflow UI renders it); the model gets a one-line summary
    card = client.get_model_version(NAME, "1").description
    assert card == r1["model_card"] and card.startswith(f"# {NAME} v1: facial-expression classifier")
    assert "| validation (PublicTest), single pass | 50.00 %" in card and "test-time augmentation `flip` | 49.00 %" in card
    assert "@champion" in client.get_registered_model(NAME).description

    # 2) same run again: reuse v1, no duplicate version
    r1b = _register(models, test_acc=0.48)
    assert r1b["reused_existing_version"] and r1b["version"] == 1
    assert len(client.search_model_versions(f"name='{NAME}'")) == 1

    # 3) a worse retrain: v2 is challenger only, the champion stays v1
    _train(models, "resnet", "resnet", val=0.40, seed=3)
    r2 = _register(models)
    assert (r2["version"], r2["decision"], r2["aliases"], r2["champion_version"]) == (2, "challenger", ["challenger"], 1)
    assert "does not beat" in r2["reason"]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"

    # 4) a better retrain takes champion and records whom it replaced
    _train(models, "resnet", "resnet", val=0.60, seed=4)
    r3 = _register(models)
    assert (r3["version"], r3["decision"], r3["champion_version"]) == (3, "champion", 3)
    assert client.get_model_version(NAME, "3").tags["previous_champion_version"] == "1"

    # 5) deliberate rollback to v1: alias moves, audit tags written, the change is printed
    capsys.readouterr()
    cli_promote(Namespace(name=None, version="1", alias="champion", reason="rollback drill",
                          params=str(store / "params.yaml")))
    out = capsys.readouterr().out
    assert "v3" in out and "v1" in out and "rollback drill" in out and "until restarted" in out
    assert f"undo with `ferops promote --version 3 --params {store / 'params.yaml'}`" in out
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    t1 = client.get_model_version(NAME, "1").tags
    assert t1["promotion_reason"] == "rollback drill" and t1["previous_champion_version"] == "3"
    assert t1["promoted_by"] and t1["promoted_at"].startswith("20")

    # 5b) the stage re-runs (a code update, `dvc exp apply`): it reuses v3, already compared, and leaves the rollback
    r3b = _register(models)
    assert (r3b["version"], r3b["reused_existing_version"], r3b["decision"], r3b["champion_version"]) == (
        3, True, "challenger", 1)
    assert "a re-run does not move @champion" in r3b["reason"]

    # 6) the listing shows every version with its aliases and accuracies
    cli_registry(Namespace(name=None, params=str(store / "params.yaml")))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{NAME}: 3 version")
    row = {ln.split()[0]: ln for ln in lines[3:lines.index("")]}
    moves = lines[lines.index("") + 2:]  # every alias move, the stage's and the person's: an audit trail
    assert len(moves) == 3 and "@champion v- -> v1 by register stage" in moves[0]
    assert "@champion v1 -> v3 by register stage" in moves[1] and "@champion v3 -> v1" in moves[2]
    assert moves[2].endswith(": rollback drill")
    assert set(row) == {"3", "2", "1"}
    assert "champion" in row["1"] and "challenger" in row["3"] and "champion" not in row["3"]
    assert "60.00" in row["3"] and "40.00" in row["2"]
    assert "49.00 (flip)" in row["1"] and "51.00 (none)" in row["3"]  # test TTA column: accuracy (recorded mode)
    # … and `--card` prints one version's model card: the champion's by default, or a version's, or an alias's
    cli_registry(Namespace(name=None, params=str(store / "params.yaml"), card="champion"))
    assert capsys.readouterr().out.startswith(f"# {NAME} v1: facial-expression classifier")
    for ref in ("2", "v2"):
        cli_registry(Namespace(name=None, params=str(store / "params.yaml"), card=ref))
        assert capsys.readouterr().out.startswith(f"# {NAME} v2:")
    with pytest.raises(RegistryError, match="no alias 'best'; aliases: challenger, champion"):
        cli_registry(Namespace(name=None, params=str(store / "params.yaml"), card="best"))

    # 7) a version registered before the TTA mode was recorded (no `tta_mode` tag) is not reused: the same run gets
    #    a new version, which records the mode and, as the champion's own model, takes the alias over
    cli_promote(Namespace(name=None, version="3", alias="champion", reason="back", params=str(store / "params.yaml")))
    client.delete_model_version_tag(NAME, "3", "tta_mode")
    r4 = _register(models)
    assert (r4["version"], r4["decision"], r4["reused_existing_version"], r4["tta_mode"]) == (4, "champion", False, "none")
    assert "registered again" in r4["reason"] and _register(models)["version"] == 4  # and that one is reused after

    # 7b) evaluate.tta changed, so evaluate re-tagged the run with another mode: a new version serves it (v4's pyfunc
    #     holds `none`), labelled with the figures of the mode it serves, and takes the alias; then it is reused
    from ferops.inference import load_classifier

    client.set_tag((models / "resnet" / "mlflow_run_id.txt").read_text().strip(), "eval_tta", "tencrop")
    r5 = _register(models, test_acc=0.5)
    assert (r5["version"], r5["tta_mode"], r5["reused_existing_version"], r5["decision"]) == (5, "tencrop", False, "champion")
    assert client.get_model_version(NAME, "5").tags["test_accuracy_tta"] == "0.51" and "`tencrop`" in r5["model_card"]
    assert load_classifier(f"models:/{NAME}@champion").tta == "tencrop"
    assert _register(models)["version"] == 5

    # 7c) evaluate now calibrates: the run's `eval_temperatures` tag (fitted on val) makes a new version that serves
    #     them and says so in its card; v5, registered before they were recorded, is not reused for it
    temps = {"none": 1.3, "tencrop": 1.02}
    client.set_tag((models / "resnet" / "mlflow_run_id.txt").read_text().strip(), "eval_temperatures", json.dumps(temps))
    r6 = _register(models, test_acc=0.5)
    assert (r6["version"], r6["reused_existing_version"], r6["decision"]) == (6, False, "champion")
    assert load_classifier(f"models:/{NAME}@champion").temperatures == temps
    assert "temperature scaling: 1.3 for the single pass and 1.02 with `tencrop`" in r6["model_card"]
    assert _register(models)["version"] == 6

    # 7d) evaluate re-run elsewhere refits T a few 1e-4 apart: still v6 (no new version, no alias move), and the card
    #     states what v6 serves; a real change (4 %) or a mode more is a new version
    run_id = (models / "resnet" / "mlflow_run_id.txt").read_text().strip()
    client.set_tag(run_id, "eval_temperatures", json.dumps({"none": 1.3004, "tencrop": 1.0197}))
    r6b = _register(models, test_acc=0.5)
    assert (r6b["version"], r6b["reused_existing_version"]) == (6, True)
    assert "temperature scaling: 1.3 for the single pass and 1.02 with `tencrop`" in r6b["model_card"]
    client.set_tag(run_id, "eval_temperatures", json.dumps({"none": 1.35, "tencrop": 1.02}))
    assert _register(models, test_acc=0.5)["version"] == 7
    client.set_tag(run_id, "eval_temperatures", json.dumps({"none": 1.35, "tencrop": 1.02, "flip": 1.1}))
    assert _register(models, test_acc=0.5)["version"] == 8

    # 8) mistakes get clear errors, not tracebacks (FerError subclasses)
    with pytest.raises(RegistryError, match="no version '9'.*1, 2, 3"):
        cli_promote(Namespace(name=None, version="9", alias="champion", reason="x", params=str(store / "params.yaml")))
    with pytest.raises(RegistryError, match="no registered model named 'nope'"):
        cli_registry(Namespace(name="nope", params=str(store / "params.yaml")))
    for alias, version in (("v3", "1"), ("v3", "3"), ("latest", "4"), ("Latest", "1")):  # names MLflow resolves itself
        with pytest.raises(RegistryError, match=f"--alias '{alias}': reserved by MLflow"):
            cli_promote(Namespace(name=None, version=version, alias=alias, reason="x", params=str(store / "params.yaml")))
    with pytest.raises(RegistryError, match="has @champion, and aliases are case-sensitive — did you mean --alias champ"):
        cli_promote(Namespace(name=None, version="1", alias="Champion", reason="x", params=str(store / "params.yaml")))
    assert set(client.get_registered_model(NAME).aliases) == {"champion", "challenger"}
    # a typo of an alias is refused, not created beside it with "moved from nobody" (a user audit found @champoin)
    with pytest.raises(RegistryError, match=r"--alias 'champoin': fer2013-resnet has no such alias \(@challenger "
                                            r"\(v\d+\), @champion \(v\d+\)\); did you mean --alias champion\? to "
                                            r"create @champoin, add --new-alias\."):
        cli_promote(Namespace(name=None, version="1", alias="champoin", reason="x", params=str(store / "params.yaml")))
    assert set(client.get_registered_model(NAME).aliases) == {"champion", "challenger"}
    with pytest.raises(RegistryError, match="--alias 'two words': Invalid alias name"):
        cli_promote(Namespace(name=None, version="1", alias="two words", reason="x", params=str(store / "params.yaml"),
                              new_alias=True))
    cli_promote(Namespace(name=None, version="1", alias="staging", reason="x", params=str(store / "params.yaml"),
                          new_alias=True))
    assert str(client.get_registered_model(NAME).aliases["staging"]) == "1"


def test_cli_without_a_store_says_so_and_creates_none(tmp_path, monkeypatch):
    """Run outside the project (no mlflow.db): one line, and no empty store left behind in that folder."""
    from ferops.registry import RegistryError, cli_promote, cli_registry

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(f"register:\n  model_name: {NAME}\n")
    with pytest.raises(RegistryError, match=f"no MLflow store at sqlite:///{tmp_path}/mlflow.db: {tmp_path} is not "
                                            "in a ferops project — run from the project folder"):
        cli_registry(Namespace(name=None, params="params.yaml"))
    with pytest.raises(RegistryError, match="no MLflow store at"):
        cli_promote(Namespace(name=None, version="1", alias="champion", reason="x", params="params.yaml"))
    assert not (tmp_path / "mlflow.db").exists()
    # In a project (dvc.yaml) that has not run yet the cure is training, from any folder under it.
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path / "src")
    with pytest.raises(RegistryError, match=r"nothing is registered there yet — `make run` \(or `dvc repro`\) trains"):
        cli_registry(Namespace(name=None, params=None))
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "src" / "mlflow.db").exists()


def test_a_champion_validated_on_another_val_split_is_not_compared(store):
    """The same raw file split otherwise (split seed, strategy, duplicates: drop) gives another val set: the val digest
    tagged with each version keeps accuracies on the two from being compared; the card says how the split was made."""
    from mlflow import MlflowClient

    from ferops.data.io import save_npz
    from ferops.data.synthetic import make_synthetic
    from ferops.registry import register_best

    models, split = store / "models" / "deep", store / "split"
    faces = make_synthetic(40, 0)
    save_npz(faces.subset(slice(0, 20)), split / "val.npz")
    stratified = {"strategy": "stratified", "n": {"train": 30, "val": 20, "test": 20}}
    _train(models, "resnet", "resnet", val=0.50, seed=2)
    r1 = register_best(models, {"resnet": {"test_accuracy": 0.5}}, INGEST, CFG, split_dir=split, split_report=stratified)
    tags = MlflowClient().get_model_version(NAME, "1").tags
    assert r1["decision"] == "champion" and len(tags["val_digest"]) == 16
    assert "train 30 rows, validation 20, test 20: a stratified random split by class" in r1["model_card"]
    assert "| validation, single pass | 50.00 %" in r1["model_card"] and "PublicTest" not in r1["model_card"]

    save_npz(faces.subset(slice(20, 40)), split / "val.npz")  # the split changed
    _train(models, "resnet", "resnet", val=0.90, seed=3)
    r2 = register_best(models, {"resnet": {"test_accuracy": 0.5}}, INGEST, CFG, split_dir=split)
    assert (r2["decision"], r2["champion_version"]) == ("challenger", 1)
    assert "was validated on another val split" in r2["reason"] and "ferops promote --version 2" in r2["reason"]


def test_champion_decision_rules():
    from ferops.registry import champion_decision

    data = {"data_sha256": "s1", "dataset": "real"}
    champ = {"version": "4", "val_accuracy": "0.6", "data_sha256": "s1", "dataset": "real"}
    assert champion_decision("5", 0.7, data, None)[0]
    assert champion_decision("5", 0.7, data, champ)[0]
    assert not champion_decision("5", 0.6, data, champ)[0]  # a tie does not beat the champion
    assert not champion_decision("5", 0.5, data, champ)[0]
    assert champion_decision("4", 0.6, data, champ) == (True, "version 4 is already the champion")
    # validated on other data: not comparable → no silent replacement...
    ok, why = champion_decision("5", 0.9, data, {**champ, "data_sha256": "s0"})
    assert not ok and "ferops promote --version 5" in why
    # ...except a real-data model replacing a synthetic-demo champion
    assert champion_decision("5", 0.3, data, {**champ, "data_sha256": "s0", "dataset": "synthetic", "val_accuracy": "0.99"})[0]
    assert not champion_decision("5", 0.9, data, {"version": "4"})[0]  # champion without a val tag
    # the champion's own run registered again (its old version predates the recorded TTA mode): it takes over
    ok, why = champion_decision("5", 0.6, data, {**champ, "run_id": "r1"}, new_run_id="r1")
    assert ok and "registered again" in why
    assert not champion_decision("5", 0.6, data, {**champ, "run_id": "r1"}, new_run_id="r2")[0]
    # ...but a reused version of that run does not undo a person's move to the run's other version (a rollback)
    moved = {**champ, "run_id": "r1", "promoted_by": "alice"}
    ok, why = champion_decision("3", 0.6, data, moved, new_run_id="r1", reused=True)
    assert not ok and "(val_accuracy 0.6000 against champion v4's 0.6000); a re-run does not move @champion from v4" in why
    assert champion_decision("3", 0.6, data, {**moved, "promoted_by": "register stage"}, new_run_id="r1",
                             reused=True)[0]  # the stage's own earlier move: it follows the mode evaluate chose
    # a new version (new serving code) of a run compared before does not take the alias from a person's choice...
    ok, why = champion_decision("6", 0.9, data, moved, new_run_id="r2", compared_before=True)
    assert not ok and "was registered and compared before" in why
    # ...but the champion's own run, registered again with newer code, carries the alias along
    assert champion_decision("6", 0.6, data, moved, new_run_id="r1", compared_before=True)[0]
    # ...in the TTA mode the person chose: not back to the mode they rolled back from
    flip = {**moved, "tta_mode": "flip"}
    ok, why = champion_decision("7", 0.6, data, flip, new_run_id="r1", compared_before=True, new_tta="tencrop")
    assert not ok and "compared before" in why
    assert champion_decision("7", 0.6, data, flip, new_run_id="r1", compared_before=True, new_tta="flip")[0]
    # val accuracy as served (with the TTA mode chosen on val) decides when both versions record it...
    both = {**champ, "val_accuracy_served": "0.7"}
    ok, why = champion_decision("5", 0.55, data, both, new_served=0.71)
    assert ok and why == "val accuracy as served (with its TTA mode) 0.7100 beats champion v4's 0.7000"
    assert not champion_decision("5", 0.9, data, both, new_served=0.69)[0]
    # ...else the single pass's (a champion registered before the tag)
    assert not champion_decision("5", 0.55, data, champ, new_served=0.99)[0]
    # another val split (digests differ) is not comparable; a champion from before digests were tagged still is
    ok, why = champion_decision("5", 0.9, {**data, "val_digest": "v2"}, {**champ, "val_digest": "v1"})
    assert not ok and "another val split" in why
    assert champion_decision("5", 0.9, {**data, "val_digest": "v2"}, champ)[0]
    # the tag holds 6 decimals: the same score, rounded down in the tag, is a tie, not a win
    assert not champion_decision("5", 1 / 3, data, {**champ, "val_accuracy": f"{1 / 3:.6f}"})[0]
    assert champion_decision("5", 1 / 3 + 1e-6, data, {**champ, "val_accuracy": f"{1 / 3:.6f}"})[0]
    # a DVC experiment's better model stays @challenger (a user audit: `make exp` moved @champion, and the restored
    # params.yaml no longer described the served model); no champion yet, or a synthetic one, it still takes
    ok, why = champion_decision("5", 0.9, data, champ, experiment="bushy-toff")
    assert not ok and "in DVC experiment 'bushy-toff': an experiment does not move @champion" in why
    assert "`ferops promote --version 5`" in why
    assert champion_decision("5", 0.9, data, None, experiment="bushy-toff")[0]
    # ...and so does the champion's own run registered again in one (`dvc exp run -S evaluate.tta=flip`): after the
    # experiment, params.yaml says `auto`, and the champion would serve flip
    ok, why = champion_decision("5", 0.6, data, {**champ, "run_id": "r1"}, new_run_id="r1", experiment="bushy-toff")
    assert not ok and "registered again in DVC experiment 'bushy-toff'" in why


def test_serve_in_a_moved_project_says_where_the_files_were_expected(store, monkeypatch):
    """The store records absolute artifact paths: `ferops serve` in a copy of a project whose original moved says so
    in one line (as `ferops predict` does), instead of exec'ing `mlflow models serve` into "No such artifact:
    'MLmodel'" and a traceback."""
    import os

    from ferops.errors import FerError
    from ferops.inference import cli_serve

    def no_exec(*args):
        raise AssertionError(f"execve {args[1]}")

    monkeypatch.setattr(os, "execve", no_exec)
    monkeypatch.setattr("ferops.runner.ensure_port_free", lambda *a: None)
    models = store / "models" / "deep"
    _train(models, "resnet", "resnet", val=0.5, seed=2)
    _register(models)
    args = Namespace(model=None, params=str(store / "params.yaml"), host="127.0.0.1", port=5001)
    with pytest.raises(AssertionError, match="execve"):  # the files are there: it serves
        cli_serve(args)
    (store / "mlartifacts").rename(store / "elsewhere")
    with pytest.raises(FerError, match=rf"cannot serve models:/{NAME}@champion \(version 1\) .* its files are not at "
                                       rf"{store / 'mlartifacts'}.* a copied or moved project"):
        cli_serve(args)


def test_register_refuses_a_challenger_alias_that_is_the_champion_alias(store):
    """register.challenger_alias == champion_alias: each new version was given @champion as its challenger alias, so
    a worse model silently replaced the champion; a reserved alias failed after registering. Now a ConfigError first."""
    from mlflow import MlflowClient

    from ferops.errors import ConfigError
    from ferops.registry import register_best

    models = store / "models" / "deep"
    _train(models, "resnet", "resnet", val=0.5, seed=2)
    _register(models)
    _train(models, "resnet", "resnet", val=0.4, seed=3)
    for bad, match in (({"challenger_alias": "champion"}, "are both 'champion'"),
                       ({"champion_alias": "latest"}, "champion_alias: 'latest' is reserved"),
                       ({"challenger_alias": "next up"}, "'next up' is not an alias MLflow accepts")):
        with pytest.raises(ConfigError, match=match):
            register_best(models, {"resnet": {"test_accuracy": 0.5}}, INGEST, {**CFG, **bad})
    assert str(MlflowClient().get_model_version_by_alias(NAME, "champion").version) == "1"
    assert len(MlflowClient().search_model_versions(f"name='{NAME}'")) == 1
    # null reads as the default, as champion_alias does (it made an alias named 'None')
    assert register_best(models, {"resnet": {"test_accuracy": 0.5}}, INGEST,
                         {**CFG, "challenger_alias": None})["decision"] == "challenger"
    assert "None" not in MlflowClient().get_registered_model(NAME).aliases


def test_marking_the_champion_with_another_alias_does_not_make_it_a_persons_champion(store):
    """The stage made v2 (run R, TTA flip) @champion; a person marked v2 @staging too. evaluate then chose `none`
    again: R's older v1 (none) must follow @champion as the stage's own move — the @staging promotion wrote the
    version's `promoted_by`, so the stage read @champion as a person's choice and kept the stale TTA mode."""
    from mlflow import MlflowClient

    from ferops.registry import promote

    client = MlflowClient()
    models = store / "models" / "deep"
    d = _train(models, "resnet", "resnet", val=0.5, seed=2)
    run_id = (d / "mlflow_run_id.txt").read_text().strip()
    assert _register(models)["version"] == 1
    client.set_tag(run_id, "eval_tta", "flip")
    r2 = _register(models)
    assert (r2["version"], r2["champion_version"]) == (2, 2)
    promote(client, NAME, "2", alias="staging", reason="canary", by="alice")
    assert client.get_model_version(NAME, "2").tags["staging_promoted_by"] == "alice"
    client.set_tag(run_id, "eval_tta", "none")
    r = _register(models)
    assert (r["version"], r["reused_existing_version"], r["champion_version"]) == (1, True, 1), r["reason"]


def test_a_model_name_with_an_apostrophe_is_registered_once_listed_and_promoted(store, capsys):
    """register.model_name: "ann's resnet" (MLflow accepts it): the versions search put it in single quotes, an invalid
    filter — every re-run of register made a new version of the same run, and `ferops registry` / `promote` with an
    unknown version ended in MlflowException tracebacks."""
    from ferops.registry import RegistryError, cli_promote, cli_registry, register_best

    name = "ann's resnet"
    params = store / "params.yaml"
    params.write_text(f'register:\n  model_name: "{name}"\n')
    models = store / "models" / "deep"
    _train(models, "resnet", "resnet", val=0.5, seed=2)
    scores = {"resnet": {"test_accuracy": 0.5, "test_accuracy_tta": 0.51}}
    first = register_best(models, scores, INGEST, {**CFG, "model_name": name})
    again = register_best(models, scores, INGEST, {**CFG, "model_name": name})
    assert (first["version"], again["version"], again["reused_existing_version"]) == (1, 1, True)
    cli_registry(Namespace(name=None, params=str(params)))
    assert capsys.readouterr().out.startswith(f"{name}: 1 version(s)")
    with pytest.raises(RegistryError, match="has no version '2'; versions: 1"):
        cli_promote(Namespace(name=None, version="2", alias="challenger", reason="x", params=str(params)))


def test_only_a_run_the_store_lacks_asks_for_a_retrain(store, monkeypatch):
    """register's training run not in the store (reset since): retrain, it says. A locked or unreachable store said
    the same ("the store was reset; retrain"), an hour of needless training: its own error now comes through."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    models = store / "models" / "deep"
    d = _train(models, "resnet", "resnet", val=0.5, seed=2)
    (d / "mlflow_run_id.txt").write_text("0" * 32 + "\n")  # a run of a store since reset
    with pytest.raises(DataError, match=r"run 0+ is not in the MLflow store .* the store was reset; retrain with "
                                        r"`dvc repro -f -s train_deep@resnet`"):
        _register(models)

    def locked(self, run_id):
        raise MlflowException("(sqlite3.OperationalError) database is locked", error_code="INTERNAL_ERROR")

    monkeypatch.setattr(MlflowClient, "get_run", locked)
    with pytest.raises(MlflowException, match="database is locked"):
        _register(models)


def test_register_and_promote_wait_for_each_other_on_one_store(store, caplog):
    """Each reads the champion, compares, then moves aliases: two at once (`dvc queue start -j 2`, a promote while
    register runs) could leave @champion on the version that lost the comparison. On a sqlite store each now waits,
    saying so, while another holds the store's registry lock; a nested take in one thread does not wait on itself."""
    import logging
    import os
    import threading

    from mlflow import MlflowClient

    from ferops.registry import aliases_locked, promote

    caplog.set_level(logging.INFO, logger="ferops.registry")
    models = store / "models" / "deep"
    for seed, val in ((2, 0.4), (3, 0.5)):  # v2 beats v1 on val: @champion is v2
        _train(models, "resnet", "resnet", val=val, seed=seed)
        _register(models)
    client = MlflowClient()
    uri = os.environ["MLFLOW_TRACKING_URI"]

    def champion() -> str:
        return str(client.get_model_version_by_alias(NAME, "champion").version)

    _train(models, "resnet", "resnet", val=0.6, seed=4)
    for move in (lambda: promote(client, NAME, "1"), lambda: _register(models)):
        done, failed = threading.Event(), []

        def work(m=move, d=done, f=failed):
            try:
                m()
                d.set()
            except Exception as exc:  # shown by the assertion below, not lost in the thread
                f.append(exc)

        before = champion()
        with aliases_locked(uri):  # another process, mid-comparison
            worker = threading.Thread(target=work)
            worker.start()
            assert not done.wait(1.5) and champion() == before and not failed, failed  # it waits
        worker.join(120)
        assert done.is_set() and champion() != before, failed  # then moves the alias
    assert champion() == "3" and (store / "mlflow.db.registry.lock").exists()
    assert "waiting for another register or promote" in caplog.text
    with aliases_locked(uri), aliases_locked(uri):  # re-entered: no self-deadlock
        pass
