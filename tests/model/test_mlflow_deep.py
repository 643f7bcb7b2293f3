"""train_deep through MLflow: params, per-epoch metrics, artifacts, and a logged model that predicts like model.keras."""

from __future__ import annotations

import numpy as np
import pytest

import keras
import mlflow

from ferops.data.io import read_json  # noqa: E402
from ferops.tracking import init_tracking  # noqa: E402
from ferops.training import train_deep_model  # noqa: E402

CFG = {"arch": "cnn", "filters": [8, 16], "dense": 16, "dropout": 0.1, "epochs": 2, "batch_size": 32, "lr": 2e-3,
       "optimizer": "adam", "schedule": "plateau", "label_smoothing": 0.0, "early_stopping_patience": 3,
       "online_aug": {"hflip": True, "crop": 44}, "precision": "fp32"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training through the stage function, into a fresh sqlite MLflow store (shared by the tests)."""
    from ferops import training
    from ferops.data.io import data_digest
    from ferops.data.synthetic import make_synthetic

    tmp_path = tmp_path_factory.mktemp("train_deep")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    init_tracking()
    digests = []  # the data's digest (~0.1 s on FER2013): once per training, not once for the run and again in fit
    d = make_synthetic(260, 3)
    train, val = d.subset(np.arange(260) < 200), d.subset(np.arange(260) >= 200)
    out = tmp_path / "models" / "cnn"
    with pytest.MonkeyPatch.context() as count:
        count.setattr(training, "data_digest", lambda *d: digests.append(d) or data_digest(*d))
        summary = train_deep_model("cnn", CFG, train, val, seed=0, ingest_report={"synthetic": True, "sha256": "abc",
                                   "format": "synthetic"}, out_dir=out, checkpoint_dir=tmp_path / "ckpt",
                                   curves_csv=tmp_path / "curves" / "cnn.csv", verbose=0)
    yield summary, out, val, tmp_path, len(digests)
    mp.undo()


def test_model_dir_contract_and_dvc_curves(trained):
    summary, out, _, tmp_path, digests = trained
    for f in ("model.keras", "config.json", "metrics.json", "history.csv", "curves.png", "confusion_val.png", "mlflow_run_id.txt"):
        assert (out / f).exists(), f
    m = read_json(out / "metrics.json")
    assert m["kind"] == "deep" and m["arch"] == "cnn" and m["model"] == "cnn" and m == summary
    assert {"val_accuracy", "val_macro_f1", "train_wall_s", "epochs_run", "best_epoch", "images_per_s"} <= set(m)
    assert read_json(out / "config.json")["arch"] == "cnn"
    header = (tmp_path / "curves" / "cnn.csv").read_text().splitlines()[0]
    assert header == "epoch,accuracy,val_accuracy,loss,val_loss,lr"
    assert not (tmp_path / "ckpt").exists()  # finished: checkpoint removed
    assert digests == 1


def test_mlflow_run_has_params_epoch_metrics_artifacts_and_a_loadable_model(trained):
    summary, out, val, _, _ = trained
    run_id = (out / "mlflow_run_id.txt").read_text().strip()
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["arch"] == "cnn" and run.data.params["online_aug.crop"] == "44"
    assert run.data.params["seed"] == "0"  # the run says which seed made it (the config alone does not)
    assert run.data.tags["stage"] == "train_deep" and run.data.tags["dataset"] == "synthetic"
    assert run.data.metrics["val_accuracy"] == pytest.approx(summary["val_accuracy"])
    client = mlflow.MlflowClient()
    epochs = client.get_metric_history(run_id, "epoch_val_accuracy")
    assert [h.step for h in epochs] == list(range(1, summary["epochs_run"] + 1))
    assert len(client.get_metric_history(run_id, "epoch_lr")) == summary["epochs_run"]
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"curves.png", "history.csv", "confusion_val.png", "config.json", "metrics.json"} <= names

    x = val.pixels[:16, :, :, None].astype("float32")
    local = keras.models.load_model(out / "model.keras").predict(x, verbose=0)
    logged = mlflow.keras.load_model(summary["mlflow_model_uri"])
    np.testing.assert_allclose(logged.predict(x, verbose=0), local, atol=1e-6)
    pyfunc = mlflow.pyfunc.load_model(summary["mlflow_model_uri"])
    np.testing.assert_allclose(np.asarray(pyfunc.predict(x)), local, atol=1e-6)


def test_a_checkpoint_of_another_config_gets_a_new_mlflow_run(trained, tmp_path, monkeypatch):
    """Killed, then the config changed: training starts fresh, and so does its MLflow run (not the killed run, whose
    params describe the old config)."""
    from ferops.data.synthetic import make_synthetic
    from ferops.tracking import RUN_ID_FILE

    summary, _, _, store, _ = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    init_tracking()
    d = make_synthetic(120, 4)
    train, val = d.subset(np.arange(120) < 90), d.subset(np.arange(120) >= 90)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / RUN_ID_FILE).write_text(summary["mlflow_run_id"] + "\n")  # as a killed run of the first config left it
    (ckpt / "mlflow_run_config.json").write_text("{}")
    changed = {**CFG, "dropout": 0.35, "epochs": 1}
    (tmp_path / "out").mkdir()  # and the script was run by hand: nothing emptied `out`, which still names that run
    (tmp_path / "out" / RUN_ID_FILE).write_text(summary["mlflow_run_id"] + "\n")
    m = train_deep_model("cnn", changed, train, val, seed=0, ingest_report={"synthetic": True, "sha256": "abc",
                         "format": "synthetic"}, out_dir=tmp_path / "out", checkpoint_dir=ckpt, verbose=0)
    assert m["mlflow_run_id"] != summary["mlflow_run_id"]
    assert mlflow.get_run(m["mlflow_run_id"]).data.params["dropout"] == "0.35"
    assert mlflow.get_run(summary["mlflow_run_id"]).data.params["dropout"] == "0.1"  # the old run left as it was


def _killed_while_logging(store, tmp_path, monkeypatch, data_seed: int):
    """A stage killed after training, while it saved and logged the model: (train, val, out, ckpt, report, the run
    it left), for the rerun."""
    import ferops.plots
    from ferops.data.synthetic import make_synthetic

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}/mlflow.db")
    init_tracking()
    d = make_synthetic(120, data_seed)
    train, val = d.subset(np.arange(120) < 90), d.subset(np.arange(120) >= 90)
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    report = {"synthetic": True, "sha256": "abc", "format": "synthetic"}

    def killed(*args, **kwargs):
        raise RuntimeError("killed while logging")

    with monkeypatch.context() as kill:
        kill.setattr(ferops.plots, "training_curves", killed)
        with pytest.raises(RuntimeError, match="killed while logging"):
            train_deep_model("cnn", CFG, train, val, seed=0, ingest_report=report, out_dir=out, checkpoint_dir=ckpt,
                             verbose=0)
    mlflow.end_run()  # the killed process' run ends with it
    return train, val, out, ckpt, report, (out / "mlflow_run_id.txt").read_text().strip()


def test_a_run_killed_while_logging_its_model_resumes_without_training_again(trained, tmp_path, monkeypatch):
    """Killed after training, while the stage saved and logged the model: the rerun trains no epoch again and
    finishes the same MLflow run (the old code had removed the checkpoint, run id included, at the end of
    training: it retrained the model from epoch 1 into a second run and left the first one unfinished)."""
    train, val, out, ckpt, report, first = _killed_while_logging(trained[3], tmp_path, monkeypatch, 5)
    m = train_deep_model("cnn", CFG, train, val, seed=0, ingest_report=report, out_dir=out, checkpoint_dir=ckpt, verbose=0)
    assert m["mlflow_run_id"] == first and mlflow.get_run(first).info.status == "FINISHED"
    steps = [h.step for h in mlflow.MlflowClient().get_metric_history(first, "epoch_val_accuracy")]
    assert steps == list(range(1, m["epochs_run"] + 1))  # each epoch logged once: none trained again
    assert not ckpt.exists()


def test_a_checkpoint_of_other_training_code_starts_fresh(trained, tmp_path, monkeypatch, capsys):
    """Killed, then the training code changed (a `git pull`; DVC re-runs the stage for it): the rerun trains from
    epoch 1 into a new run. Resumed, its model had been trained partly by each version of the code."""
    from ferops import training

    train, val, out, ckpt, report, first = _killed_while_logging(trained[3], tmp_path, monkeypatch, 6)
    mlflow.MlflowClient().update_run(first, status="RUNNING")  # as a killed process leaves it
    assert training.training_code() == training.training_code()  # stable while the code is the same
    monkeypatch.setattr(training, "training_code", lambda: "0123456789abcdef")  # as after an edit of zoo.py
    m = train_deep_model("cnn", CFG, train, val, seed=0, ingest_report=report, out_dir=out, checkpoint_dir=ckpt, verbose=0)
    assert m["mlflow_run_id"] != first and "another config, data or training code" in capsys.readouterr().err
    assert mlflow.get_run(first).info.status == "KILLED"  # not left RUNNING in the UI for good
    steps = [h.step for h in mlflow.MlflowClient().get_metric_history(m["mlflow_run_id"], "epoch_val_accuracy")]
    assert steps == list(range(1, m["epochs_run"] + 1))  # every epoch trained in the new run
