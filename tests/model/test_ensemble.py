"""Seed ensembles (`ensemble_seeds`): one flat model averaging its members, trained, resumed and logged by train_deep."""

from __future__ import annotations

import numpy as np
import pytest

import keras
import mlflow

from ferops.data.io import read_json  # noqa: E402
from ferops.errors import ConfigError  # noqa: E402
from ferops.models.zoo import build_model, crop_size, ensemble_model, fold_batchnorm  # noqa: E402
from ferops.training import ensemble_seeds, train_deep_model, train_members  # noqa: E402
from ferops.tta import predict_proba  # noqa: E402

RESNET = {"arch": "resnet", "stages": [1, 1], "widths": [8, 16], "online_aug": {"crop": 44}}
TINY = {"arch": "dnn", "hidden": [16], "dropout": 0.0, "epochs": 2, "batch_size": 32, "lr": 1e-3, "optimizer": "adamw",
        "schedule": "cosine", "warmup_epochs": 0, "early_stopping_patience": 5, "online_aug": {"hflip": True},
        "precision": "fp32"}


@pytest.fixture(scope="module")
def tiny():
    from ferops.data.synthetic import make_synthetic

    d = make_synthetic(240, 1)
    return d.subset(np.arange(240) < 180), d.subset(np.arange(240) >= 180)


def test_ensemble_model_is_the_members_average_and_survives_save_load_and_folding(tmp_path):
    members = [build_model(RESNET, seed=s, inference=True) for s in (1, 2, 3)]
    ens = ensemble_model(members)
    x = np.random.default_rng(0).uniform(0, 255, (6, 48, 48, 1)).astype("float32")
    mean = np.mean([m.predict(x, verbose=0) for m in members], axis=0)
    np.testing.assert_allclose(ens.predict(x, verbose=0), mean, atol=1e-6)
    assert crop_size(ens) == 44  # evaluate's ten-crop finds the members' crop in the flat graph
    assert ens.count_params() == sum(m.count_params() for m in members)
    ens.save(tmp_path / "e.keras")
    loaded = keras.models.load_model(tmp_path / "e.keras", compile=False)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), mean, atol=1e-6)
    folded = fold_batchnorm(loaded)
    assert len(folded.layers) < len(loaded.layers)  # every member's BNs folded, as for a single model
    np.testing.assert_allclose(folded.predict(x, verbose=0), mean, atol=1e-5)
    with pytest.raises(ConfigError, match="at least two"):
        ensemble_model(members[:1])


@pytest.mark.parametrize("bad", [[1, 1], "42,7", [1.5, 2], [True, 2], 3])
def test_ensemble_seeds_are_checked(bad):
    assert ensemble_seeds({}, 42) == [42] and ensemble_seeds({"ensemble_seeds": None}, 42) == [42]
    assert ensemble_seeds({"ensemble_seeds": [7]}, 42) == [7]
    with pytest.raises(ConfigError, match="distinct integer seeds"):
        ensemble_seeds({"ensemble_seeds": bad}, 42)


def test_killed_ensemble_resumes_at_the_member_it_had_reached(tiny, tmp_path):
    train, val = tiny
    ckpt = tmp_path / "ckpt"

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("killed in member 2")

    with pytest.raises(RuntimeError, match="killed"):
        train_members(TINY, train, val, [1, 2], checkpoint_dir=ckpt, verbose=0,
                      callbacks_for=lambda p: [Kill()] if p == "m2_" else [])
    assert (ckpt / "member_1_done" / "model.keras").exists() and (ckpt / "member_2").exists()

    asked: list[str] = []
    members = train_members(TINY, train, val, [1, 2], checkpoint_dir=ckpt, verbose=0,
                            callbacks_for=lambda p: asked.append(p) or [])
    assert asked == ["m2_"]  # member 1 came back from its folder; member 2 resumed from its checkpoint
    assert [m.epochs_run for m in members] == [2, 2]
    straight = train_members(TINY, train, val, [1], verbose=0)[0]
    np.testing.assert_allclose(predict_proba(members[0].model, val.pixels), straight.val_proba, atol=1e-5)
    # a finished member made with another config is trained again
    asked.clear()
    train_members({**TINY, "epochs": 1}, train, val, [1, 2], checkpoint_dir=ckpt, verbose=0,
                  callbacks_for=lambda p: asked.append(p) or [])
    assert asked == ["m1_", "m2_"]


def test_an_ensemble_member_killed_after_its_fit_is_not_trained_again(tiny, tmp_path, monkeypatch):
    """Killed after member 1's `fit` returned but before the member was kept (its inference copy, val scoring or
    `save_member`): the rerun trains no epoch of member 1 again — its checkpoint outlives train_keras' own cleanup
    until the member is saved, as a single model's does (`keep_checkpoint`)."""
    import ferops.training as training

    train, val = tiny
    ckpt = tmp_path / "ckpt"
    real = training.save_member

    def killed(*args, **kwargs):
        raise RuntimeError("killed while keeping member 1")

    monkeypatch.setattr(training, "save_member", killed)
    with pytest.raises(RuntimeError, match="killed"):
        train_members(TINY, train, val, [1, 2], checkpoint_dir=ckpt, verbose=0)
    monkeypatch.setattr(training, "save_member", real)

    seen: dict[str, list[int]] = {}

    class Epochs(keras.callbacks.Callback):
        def __init__(self, prefix):
            super().__init__()
            self.epochs = seen.setdefault(prefix, [])

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append(epoch)

    members = train_members(TINY, train, val, [1, 2], checkpoint_dir=ckpt, verbose=0,
                            callbacks_for=lambda prefix: [Epochs(prefix)])
    assert seen == {"m1_": [], "m2_": [0, 1]}  # the old code trained member 1's two epochs again
    assert [m.epochs_run for m in members] == [2, 2]
    assert (ckpt / "member_1_done").exists() and not (ckpt / "member_1").exists()  # kept, then its checkpoint goes
    straight = train_members(TINY, train, val, [1], verbose=0)[0]
    np.testing.assert_allclose(predict_proba(members[0].model, val.pixels), straight.val_proba, atol=1e-5)


def test_train_deep_saves_one_averaged_model_with_member_metrics_and_curves(tiny, tmp_path, monkeypatch):
    from ferops.tracking import init_tracking

    from ferops import training

    train, val = tiny
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    init_tracking()
    digests = []  # the data's digest (~0.1 s on FER2013) was computed 4 times: the run, the members, each member
    monkeypatch.setattr(training, "data_digest", lambda *d: digests.append(d) or "d1g3st")
    out = tmp_path / "models" / "dnn_x2"
    m = train_deep_model("dnn_x2", {**TINY, "ensemble_seeds": [3, 4]}, train, val, seed=0,
                         ingest_report={"synthetic": True, "sha256": "abc", "format": "synthetic"}, out_dir=out,
                         checkpoint_dir=tmp_path / "ckpt", curves_csv=tmp_path / "curves.csv", verbose=0)
    assert m["n_members"] == 2 and m["epochs_run"] == 4 and "best_epoch" not in m
    assert m["train_wall_s"] == pytest.approx(m["m1_train_wall_s"] + m["m2_train_wall_s"], abs=0.02)
    assert read_json(out / "config.json")["ensemble_seeds"] == [3, 4] and not (tmp_path / "ckpt").exists()
    assert len(digests) == 1
    model = keras.models.load_model(out / "model.keras", compile=False)
    assert model.count_params() == m["n_params"] and sum(ly.name.startswith("m2_") for ly in model.layers) > 1
    proba = predict_proba(model, val.pixels)
    assert m["val_accuracy"] == pytest.approx(float((proba.argmax(1) == val.emotion).mean()))
    curves = (tmp_path / "curves.csv").read_text().splitlines()
    assert curves[0] == "epoch,accuracy,val_accuracy,loss,val_loss,lr,member,member_epoch"
    assert [r.split(",")[-2:] for r in curves[1:]] == [["1", "1"], ["1", "2"], ["2", "1"], ["2", "2"]]

    run = mlflow.get_run(m["mlflow_run_id"])
    assert run.data.tags["ensemble_seeds"] == "3,4" and run.data.metrics["n_members"] == 2
    client = mlflow.MlflowClient()
    for i in (1, 2):
        assert [h.step for h in client.get_metric_history(run.info.run_id, f"m{i}_epoch_val_accuracy")] == [1, 2]
    logged = mlflow.pyfunc.load_model(m["mlflow_model_uri"])
    np.testing.assert_allclose(np.asarray(logged.predict(val.pixels[:8, :, :, None].astype("float32"))),
                               proba[:8], atol=1e-5)
