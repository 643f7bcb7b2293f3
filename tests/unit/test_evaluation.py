"""evaluate: model discovery, metrics/comparison building, submission writing, selection by validation only."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ferops.constants import EMOTIONS
from ferops.data.io import FerData
from ferops.errors import DataError
from ferops.evaluation import (SUMMARY_KEYS, best_tta, by_validation, comparison_markdown, confusion_rows, declared_models,
                               discover_models, evaluate_all, metrics_summary, select_best, write_confusion,
                               score, seen_in, write_submission)


def _data(n: int, seed: int) -> FerData:
    """Synthetic demo faces."""
    from ferops.data.synthetic import make_synthetic

    return make_synthetic(n, seed)


def _separable(n: int, seed: int) -> FerData:
    """Faces whose brightness encodes the class: any sensible model learns it in milliseconds."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 7, n).astype(np.int8)
    pixels = np.clip(20 + 30 * y[:, None, None] + rng.normal(0, 8, (n, 48, 48)), 0, 255).astype(np.uint8)
    return FerData(pixels, y, np.array(["Training"] * n), np.array([f"r{i}" for i in range(n)]))


def _write(d: Path, name: str, obj) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(json.dumps(obj))


def _result(model: str, val: float, test: float, kind: str = "baseline", **kw) -> dict:
    r = {"model": model, "kind": kind, "arch": kw.pop("arch", model), "val_accuracy": val, "val_macro_f1": val - 0.05,
         "train_wall_s": 12.0, "test_accuracy": test, "test_macro_f1": test - 0.1, "test_weighted_f1": test - 0.02}
    r.update(kw)
    return r


def test_discover_models_by_contract(tmp_path):
    root = tmp_path / "models"
    _write(root / "baselines" / "logreg", "metrics.json", {"model": "logreg", "kind": "baseline", "val_accuracy": 0.3})
    (root / "baselines" / "logreg" / "model.joblib").write_bytes(b"x")
    _write(root / "baselines" / "unfinished", "metrics.json", {"val_accuracy": 0.9})  # no model file → skipped
    _write(root / "deep" / "cnn", "metrics.json", {"model": "cnn", "kind": "deep", "val_accuracy": 0.5})
    _write(root / "deep" / "cnn", "config.json", {"arch": "cnn"})
    (root / "deep" / "cnn" / "model.keras").write_bytes(b"x")
    _write(root / "deep" / "logreg", "metrics.json", {"val_accuracy": 0.4})  # same name as a baseline
    _write(root / "deep" / "logreg", "config.json", {"arch": "dnn"})
    (root / "deep" / "logreg" / "model.keras").write_bytes(b"x")

    entries = discover_models(root)
    assert [(e.key, e.kind, e.arch) for e in entries] == [
        ("baselines/logreg", "baseline", "logreg"), ("cnn", "deep", "cnn"), ("deep/logreg", "deep", "dnn")]


def test_a_model_params_yaml_no_longer_lists_is_not_scored_nor_registered(tmp_path, caplog):
    """DVC leaves a removed or renamed model's folder in place: evaluate scores only the models params.yaml lists,
    and register only those evaluate scored."""
    from ferops.registry import find_candidates

    root = tmp_path / "models"
    for name, val in (("resnet", 0.5), ("resnet_old", 0.9)):  # resnet_old: renamed away, and better on val
        _write(root / "deep" / name, "metrics.json", {"model": name, "kind": "deep", "val_accuracy": val})
        _write(root / "deep" / name, "config.json", {"arch": "resnet"})
        (root / "deep" / name / "model.keras").write_bytes(b"x")
    params = {"train_baselines": {"models": {"knn": {}}}, "train_deep": {"models": {"resnet": {}, "cnn": {}}}}
    with caplog.at_level("WARNING", logger="ferops.evaluation"):
        entries = discover_models(root, declared_models(params))
    assert [e.name for e in entries] == ["resnet"]
    assert "resnet_old: not in params.yaml train_deep.models — skipped" in caplog.text
    assert [e.name for e in find_candidates(root / "deep", "resnet")] == ["resnet_old", "resnet"]  # without the list
    assert [e.name for e in find_candidates(root / "deep", "resnet", scored={"resnet": {}})] == ["resnet"]
    # with evaluate's figures, the candidates are ranked by val accuracy as served (their TTA mode's)
    scored = {"resnet": {"val_accuracy_tta": 0.95}, "resnet_old": {"val_accuracy_tta": 0.91}}
    assert [e.name for e in find_candidates(root / "deep", "resnet", scored=scored)] == ["resnet", "resnet_old"]


def test_discover_models_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="no trained models"):
        discover_models(tmp_path / "models")
    d = tmp_path / "models" / "baselines" / "knn"
    _write(d, "metrics.json", {"model": "knn"})
    (d / "model.joblib").write_bytes(b"x")
    with pytest.raises(DataError, match=r"knn/metrics\.json.*val_accuracy"):
        discover_models(tmp_path / "models")


def test_selection_uses_validation_never_test():
    # val and test disagree: the model that is best on test must NOT be chosen.
    results = [_result("test_winner", val=0.50, test=0.90), _result("val_winner", val=0.60, test=0.40)]
    assert select_best(results)["model"] == "val_winner"
    # ties on val accuracy are broken by val macro-F1, still never by test
    tie = [_result("a", 0.6, 0.9, val_macro_f1=0.40), _result("b", 0.6, 0.1, val_macro_f1=0.50)]
    assert select_best(tie)["model"] == "b"
    # a deep model is ranked by its val accuracy as served, with the TTA mode evaluate chose on val: it predicts the
    # submission with it, and `ferops predict` answers with it
    served = [_result("single_best", 0.66, 0.5, kind="deep", val_accuracy_tta=0.68),
              _result("served_best", 0.65, 0.5, kind="deep", val_accuracy_tta=0.70), _result("knn", 0.69, 0.9)]
    assert [r["model"] for r in by_validation(served)] == ["served_best", "knn", "single_best"]
    assert "| 65.00 (70.00) |" in comparison_markdown(served, "auto")


def test_metrics_summary_and_comparison_table():
    results = [_result("logreg", 0.31, 0.33),
               _result("resnet", 0.66, 0.65, kind="deep", arch="resnet", test_accuracy_tta=0.67, test_macro_f1_tta=0.64,
                       test_f1_happy=0.8),
               _result("cnn", 0.55, 0.57, kind="deep", arch="cnn", test_accuracy_tta=0.58)]
    summary = metrics_summary(results)
    assert set(summary) == {"logreg", "resnet", "cnn"}
    assert all(set(v) == set(SUMMARY_KEYS) for v in summary.values())
    assert summary["logreg"]["test_accuracy_tta"] is None  # no TTA for baselines
    assert summary["resnet"]["test_accuracy_tta"] == 0.67
    assert summary["resnet"]["test_macro_f1_tta"] == 0.64  # the model card's TTA row reads it from here
    json.dumps(summary)  # DVC reads it: plain JSON

    md = comparison_markdown(results, "flip", {"synthetic": True, "format": "synthetic", "sha256": "abc"})
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert [ln.split("|")[2].strip() for ln in table] == ["**resnet** ★", "cnn", "logreg"]  # sorted by val
    assert "| 66.00 |" in table[0] and "| 67.00 |" in table[0]  # val and TTA test accuracy in %
    assert "validation" in md and "flip" in md and "synthetic" in md
    assert "| resnet | " in md and "80.00" in md  # per-class F1 table
    # the submission sentence says what the file holds (it claimed predictions when no row was unlabeled)
    assert "this data has no unlabeled rows, so the file is empty" in md
    kaggle = comparison_markdown(results, "flip", {"synthetic": False, "format": "kaggle", "unlabeled": 7178})
    assert "its predictions of the 7178 unlabeled rows are in the submission file" in kaggle
    assert "sure of every answer" not in md
    # KNN with k = 1: probability 1 for every answer, so its ECE is 100 minus its accuracy (59 points read as broken)
    knn = comparison_markdown([*results, _result("knn", 0.40, 0.406799, test_ece=0.593201)], "flip")
    assert "`knn` is sure of every answer (probability 1, as KNN with one neighbour), so its ECE is 100 minus" in knn


def test_test_images_copied_from_train_are_counted_and_scored_apart():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (50, 48, 48), dtype=np.uint8)
    test = rng.integers(0, 256, (6, 48, 48), dtype=np.uint8)
    test[[1, 4]] = train[[7, 30]]
    seen = seen_in(test, train)
    assert seen.tolist() == [False, True, False, False, True, False]
    y = np.array([0, 1, 2, 3, 4, 5])
    probs = np.eye(7)[[0, 1, 6, 6, 4, 5]]  # right on both copies, wrong on 2 of the 4 others
    tta = np.eye(7)[[0, 1, 2, 6, 4, 5]]
    m = score(y, probs, tta, seen)
    assert m["test_accuracy"] == pytest.approx(4 / 6) and m["test_accuracy_unseen"] == pytest.approx(2 / 4)
    assert m["test_accuracy_tta_unseen"] == pytest.approx(3 / 4) and m["test_n_seen"] == 2
    assert "test_n_seen" not in score(y, probs, tta)  # no train images given: nothing claimed
    none, every = score(y, probs, tta, np.zeros(6, bool)), score(y, probs, tta, np.ones(6, bool))
    assert none["test_n_seen"] == 0 and every["test_n_seen"] == 6  # `split.duplicates: drop`; nothing new to score
    assert not [k for k in (*none, *every) if k.endswith("_unseen")]
    assert "No test image is an exact copy" in comparison_markdown([_result("cnn", 0.5, 0.6, **none)], "flip")
    assert "Every test image (6) is an exact copy" in comparison_markdown([_result("cnn", 0.5, 0.6, **every)], "flip")
    assert metrics_summary([_result("cnn", 0.5, 0.6, **m)])["cnn"]["test_n_seen"] == 2  # a count, not 2.0
    assert seen_in(test[:0], train).shape == (0,)
    md = comparison_markdown([_result("cnn", 0.5, 0.6, kind="deep", arch="cnn", **m)], "flip")
    assert "2 test images are exact copies of a train image" in md and "| 50.00 (75.00) |" in md
    assert "Val holds" not in md  # not known: not claimed
    md = comparison_markdown([_result("cnn", 0.5, 0.6, kind="deep", arch="cnn", val_n_seen=3, **m)], "flip")
    assert "Val holds 3 such copies too, so every choice on val rewards that recall a little." in md
    md = comparison_markdown([_result("cnn", 0.5, 0.6)], "flip")
    assert "exact cop" not in md and "unseen" not in md  # not known: no sentence, no column


def test_comparison_chart_names_the_tta_mode_set(tmp_path, monkeypatch):
    """The TTA bars say `chosen on val` only for evaluate.tta=auto; a fixed mode is named (it was not chosen)."""
    import ferops.diagnostics as diag
    from ferops.evaluation import comparison_chart

    seen = []
    monkeypatch.setattr(diag, "model_comparison_chart", lambda names, series, path, title="": seen.append(list(series)))
    results = [_result("cnn", 0.55, 0.57, kind="deep", test_accuracy_tta=0.58)]
    comparison_chart(results, tmp_path / "c.png", "auto")
    comparison_chart(results, tmp_path / "c.png", "flip")
    assert [s[-1] for s in seen] == ["test, TTA chosen on val", "test, TTA flip"]
    assert seen[0][:2] == ["val as served (deep: with TTA)", "test, single pass"]  # the bars the rows are sorted by


def test_write_submission(tmp_path):
    p = write_submission(np.array(["id7", "id9"]), np.array([3, 6]), tmp_path / "sub.csv")
    assert p.read_text().splitlines() == ["id,emotion", "id7,3", "id9,6"]
    ids = ["test:00012", "test:img:07", "test:2019-01-01T10:30", "test/unlabeled/a.png", "test/12:30.png"]
    p = write_submission(np.array(ids), np.arange(5), tmp_path / "ids.csv")  # the Kaggle id whole, colons and all
    assert p.read_text().splitlines()[1:] == ["00012,0", "img:07,1", "2019-01-01T10:30,2", "test/unlabeled/a.png,3",
                                              "test/12:30.png,4"]
    empty = write_submission(np.zeros(0, str), np.zeros(0, int), tmp_path / "empty.csv")
    assert empty.read_text().splitlines() == ["id,emotion"]


def test_confusion_csv_is_long_format(tmp_path):
    y, p = np.array([0, 3, 3, 6]), np.array([0, 3, 4, 6])
    assert confusion_rows(y, p)[2] == ("Happy", "Sad")
    png, csv_path = write_confusion(y, p, tmp_path / "m", "m")
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 4 and set(rows[0]) == {"actual", "predicted"}
    assert {r["actual"] for r in rows} <= set(EMOTIONS)
    assert png.stat().st_size > 1000


def test_log_to_run_leaves_the_training_runs_end_and_logs_a_value_once(tmp_path, monkeypatch):
    """evaluate reopened each training run with start_run: the run became RUNNING and its end time moved to the
    evaluation, so the UI's duration of a 10-s training grew with every re-run, and each re-run added a copy of every
    test metric to its history. Now logged by run id: the end time stays, an unchanged value is logged once."""
    from mlflow import MlflowClient

    from ferops.evaluation import ModelEntry, log_to_run
    from ferops.tracking import init_tracking, model_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    init_tracking()
    with model_run(stage="train_baselines", model="nb", params={}, tags={}, run_dir=tmp_path / "nb") as run:
        pass
    client, entry = MlflowClient(), ModelEntry("nb", "baseline", tmp_path / "nb")
    trained = client.get_run(run.info.run_id).info
    (tmp_path / "confusion_test.csv").write_text("actual,predicted\n0,0\n")
    for accuracy in (0.5, 0.5, 0.625):
        assert log_to_run(entry, {"test_accuracy": accuracy}, [tmp_path / "confusion_test.csv"], "flip")
    after = client.get_run(run.info.run_id)
    assert (after.info.status, after.info.end_time) == ("FINISHED", trained.end_time)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "test_accuracy")] == [0.5, 0.625]
    assert after.data.tags["evaluated"] == "true" and after.data.tags["eval_tta"] == "n/a"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "evaluation")] == ["evaluation/confusion_test.csv"]


def _baseline_dir(root: Path, name: str, est, val: float, train: FerData) -> Path:
    """A baseline model dir by the train stage's contract, with its MLflow run."""
    import joblib

    from ferops.tracking import model_run

    d = root / "baselines" / name
    d.mkdir(parents=True)
    est.fit(train.pixels.reshape(len(train), -1).astype(np.float32), train.emotion)
    joblib.dump(est, d / "model.joblib")
    (d / "metrics.json").write_text(json.dumps({"model": name, "kind": "baseline", "val_accuracy": val,
                                                "val_macro_f1": val, "train_wall_s": 1.0}))
    with model_run("train_baselines", name, {"kind": name}, {}, run_dir=d):
        pass
    return d


def test_evaluate_all_scores_once_logs_to_run_and_submits_best_by_val(tmp_path, monkeypatch):
    """Real sklearn models + a real sqlite MLflow store; val says `dummy`, test says `nb` → dummy is used."""
    import mlflow
    from sklearn.dummy import DummyClassifier
    from sklearn.naive_bayes import GaussianNB

    from ferops.tracking import init_tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    init_tracking()
    data = _separable(420, seed=3)
    train, test = data.subset(np.arange(300)), data.subset(np.arange(300, 400))
    predict = data.subset(np.arange(400, 420))
    root = tmp_path / "models"
    _baseline_dir(root, "nb", GaussianNB(), val=0.30, train=train)  # fits in ms
    dummy = _baseline_dir(root, "dummy", DummyClassifier(strategy="most_frequent"), val=0.95, train=train)

    val = data.subset(np.arange(200, 300))
    results, labels = evaluate_all(discover_models(root), test, predict, tmp_path / "eval", tta="flip", val=val)
    by = {r["model"]: r for r in results}
    assert by["nb"]["test_accuracy"] > by["dummy"]["test_accuracy"]  # test disagrees with val...
    majority = int(np.bincount(train.emotion).argmax())
    assert labels.tolist() == [majority] * 20  # ...and the submission still comes from the best-by-val model
    assert "test_accuracy_tta" not in by["nb"]  # TTA applies to deep models only
    assert (tmp_path / "eval" / "nb" / "confusion_test.csv").read_text().count("\n") == 101
    # the majority-class dummy is always 100 % sure and mostly wrong: badly calibrated, unlike naive Bayes here
    assert by["dummy"]["test_ece"] == pytest.approx(1 - by["dummy"]["test_accuracy"])
    assert 0 <= by["nb"]["test_ece"] < by["dummy"]["test_ece"]
    assert by["nb"]["test_ece_single"] == by["nb"]["test_ece"]  # no TTA for a baseline: the same probabilities
    for f in ("mistakes_val.png", "calibration_test.png"):
        assert (tmp_path / "eval" / "dummy" / f).stat().st_size > 1000
    # the list of val errors is no figure: beside the figures' folder, whose CSVs DVC draws as confusion matrices
    assert not (tmp_path / "eval" / "dummy" / "mistakes_val.csv").exists()
    wrong = list(csv.DictReader(open(tmp_path / "mistakes" / "dummy" / "mistakes_val.csv")))
    assert len(wrong) == int((val.emotion != majority).sum())  # every val error, listed
    assert {r["predicted"] for r in wrong} == {EMOTIONS[majority]} and all(r["actual"] != EMOTIONS[majority] for r in wrong)
    assert {r["source_id"] for r in wrong} <= set(val.source_id)
    assert (tmp_path / "eval" / "model_comparison.png").stat().st_size > 1000

    run = mlflow.get_run((dummy / "mlflow_run_id.txt").read_text().strip())
    assert run.data.metrics["test_accuracy"] == pytest.approx(by["dummy"]["test_accuracy"])
    assert "test_recall_happy" in run.data.metrics
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert arts == {f"evaluation/{f}" for f in ("confusion_test.png", "confusion_test.csv", "calibration_test.png",
                                                  "mistakes_val.png", "mistakes_val.csv")}

    _, none = evaluate_all(discover_models(root), test, data.subset(np.arange(0)), tmp_path / "eval2", track=False)
    assert none.shape == (0,)  # no unlabeled rows → nothing to predict (header-only submission)
    assert not (tmp_path / "eval2" / "nb" / "mistakes_val.png").exists()  # no val given: no val error analysis


def test_a_baseline_scored_on_a_val_subsample_is_ranked_on_the_whole_val_split(tmp_path, caplog, mlflow_store):
    # train_baselines.val_max_rows: its metrics.json val_accuracy came from a subsample, and evaluate ranked (and
    # chose the submission model) on that figure beside others scored on every val row
    from sklearn.dummy import DummyClassifier

    from ferops.tracking import init_tracking

    init_tracking()  # its own store: the runs went to whatever store an earlier test on the worker had left set

    data = _separable(400, seed=3)
    train, val, test = data.subset(np.arange(200)), data.subset(np.arange(200, 300)), data.subset(np.arange(300, 400))
    root = tmp_path / "models"
    d = _baseline_dir(root, "dummy", DummyClassifier(strategy="most_frequent"), val=0.99, train=train)
    metrics = json.loads((d / "metrics.json").read_text())
    (d / "metrics.json").write_text(json.dumps({**metrics, "val_rows": 20}))  # 0.99 on 20 lucky rows
    _baseline_dir(root, "whole", DummyClassifier(strategy="most_frequent"), val=0.50, train=train)  # all 100 rows
    results, _ = evaluate_all(discover_models(root), test, data.subset(np.arange(0)), tmp_path / "eval", val=val,
                              track=False)
    by = {r["model"]: r for r in results}
    majority = int(np.bincount(train.emotion).argmax())
    assert by["dummy"]["val_accuracy"] == pytest.approx(float((val.emotion == majority).mean()))
    assert by["whole"]["val_accuracy"] == 0.50  # trained on every val row: its own figure stands
    assert "ranked here on all of them" in caplog.text


def test_evaluate_deep_model_reports_plain_and_tta_accuracy(tmp_path, monkeypatch):
    import keras

    from ferops import diagnostics, plots

    titles: dict[str, str] = {}  # each figure's title names the predictions it shows (single pass, TTA mode)

    def recording(name, draw):
        def record(*args, **kw):
            titles[name] = kw.get("title", "")
            return draw(*args, **kw)
        return record

    for module, fn in ((plots, "confusion_matrix_plot"), (diagnostics, "mistakes_grid"),
                       (diagnostics, "reliability_diagram")):
        monkeypatch.setattr(module, fn, recording(fn, getattr(module, fn)))

    data = _data(120, seed=5)
    d = tmp_path / "models" / "deep" / "tiny"
    d.mkdir(parents=True)
    model = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(7, activation="softmax")])
    model.save(d / "model.keras")
    (d / "config.json").write_text(json.dumps({"arch": "dnn"}))
    (d / "metrics.json").write_text(json.dumps({"model": "tiny", "kind": "deep", "arch": "dnn", "val_accuracy": 0.2,
                                                "epochs_run": 3, "train_wall_s": 12.5}))
    results, labels = evaluate_all(discover_models(tmp_path / "models"), data.subset(np.arange(100)),
                                   data.subset(np.arange(100, 120)), tmp_path / "eval", tta="flip", track=False)
    r = results[0]
    assert 0.0 <= r["test_accuracy"] <= 1.0 and 0.0 <= r["test_accuracy_tta"] <= 1.0
    # what the training cost, beside the figures in `dvc exp show` (a time budget's epochs vary with the host)
    assert metrics_summary(results)["tiny"]["epochs_run"] == 3 and metrics_summary(results)["tiny"]["train_wall_s"] == 12.5
    assert labels.shape == (20,) and set(labels.tolist()) <= set(range(7))

    # auto: the mode is chosen per model on val, never on test
    val = data.subset(np.arange(100, 120))
    test = data.subset(np.arange(100))
    auto, _ = evaluate_all(discover_models(tmp_path / "models"), test, val, tmp_path / "eval", tta="auto",
                           track=False, val=val, train_pixels=test.pixels[:30])  # 30 test images also in train
    by_mode = {m: auto[0][f"val_accuracy_tta_{m}"] for m in ("none", "flip", "tencrop", "shift")}
    assert auto[0]["tta_mode"] == best_tta(by_mode)
    assert auto[0]["val_accuracy_tta"] == by_mode[auto[0]["tta_mode"]]  # val with the mode served
    assert auto[0]["test_n_seen"] == 30 and 0 <= auto[0]["test_accuracy_unseen"] <= 1
    assert "test_accuracy_tta_unseen" in auto[0]
    served = "single pass" if auto[0]["tta_mode"] == "none" else f"TTA {auto[0]['tta_mode']}"
    assert titles["confusion_matrix_plot"].endswith("(single pass)")  # test_accuracy's, not the TTA one
    assert f"on val, {served} (" in titles["mistakes_grid"] and f"points, {served}" in titles["reliability_diagram"]
    assert (tmp_path / "mistakes" / "tiny" / "mistakes_val.csv").exists()
    assert by_mode["tencrop"] == by_mode["shift"] == by_mode["flip"]  # no crop layer: only flip's views
    assert best_tta({"none": 0.5, "flip": 0.6, "tencrop": 0.6}) == "flip"  # ties → fewer views
    with pytest.raises(DataError, match="validation split"):
        evaluate_all(discover_models(tmp_path / "models"), data.subset(np.arange(100)), val, tmp_path / "eval",
                     tta="auto", track=False)


def test_tta_modes_are_picked_out_of_one_pass_over_all_views():
    from ferops.errors import DataError
    from ferops.evaluation import accuracy_by_tta, tta_probas

    y = np.array([0, 1, 2])
    eye = np.eye(7)[y]
    wrong = np.eye(7)[[3, 3, 3]]
    views = [wrong, wrong] + [eye] * 8 + [wrong] * 16  # plain + mirror wrong, corners right, one-pixel shifts wrong
    np.testing.assert_array_equal(tta_probas(views, "none"), wrong.astype(np.float32))
    assert accuracy_by_tta(views, y) == {"none": 0.0, "flip": 0.0, "tencrop": 1.0, "shift": 0.0}
    with pytest.raises(DataError, match="26"):
        tta_probas(views[:10], "shift")  # a ten-crop pass lacks the shifted views
    assert tta_probas(views[:2], "tencrop").shape == (3, 7)  # a crop-less model has two views only


def test_calibration_bins_and_ece():
    from ferops.diagnostics import calibration_bins, expected_calibration_error

    y = np.zeros(10, dtype=int)
    sure = np.tile([1.0, 0, 0, 0, 0, 0, 0], (10, 1))
    assert expected_calibration_error(y, sure) == 0.0  # certain and right
    assert expected_calibration_error(np.ones(10, dtype=int), sure) == 1.0  # certain and wrong
    conf, acc, counts = calibration_bins(y, sure)
    assert counts[-1] == 10 and counts.sum() == 10 and acc[-1] == 1.0  # confidence 1.0 falls in the last bin
    assert np.isnan(conf[0]) and counts[0] == 0
    # 0.85 sure (bin 0.8–0.9), right 6 times in 10: the gap is 0.25
    p = np.tile([0.85, 0.15, 0, 0, 0, 0, 0], (10, 1))
    assert expected_calibration_error(np.array([0] * 6 + [1] * 4), p) == pytest.approx(0.25)


def test_a_temperature_fitted_on_val_undoes_overconfidence_and_keeps_every_label():
    from ferops.diagnostics import expected_calibration_error, fit_temperature
    from ferops.inference import apply_temperature

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, (4000, 7))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(7, p=row) for row in true_p])
    sharp = np.exp(1.6 * logits) / np.exp(1.6 * logits).sum(1, keepdims=True)  # a net 1.6x too sure of itself
    t = fit_temperature(y[:2000], sharp[:2000])  # fitted on one half ("val"), checked on the other ("test")
    assert t == pytest.approx(1.6, abs=0.15)
    fixed = apply_temperature(sharp[2000:], t)
    assert expected_calibration_error(y[2000:], fixed) < 0.5 * expected_calibration_error(y[2000:], sharp[2000:])
    np.testing.assert_array_equal(fixed.argmax(1), sharp[2000:].argmax(1))
    np.testing.assert_allclose(fixed.sum(1), 1.0, rtol=1e-5)
    assert fit_temperature(y[:2000], true_p[:2000]) == pytest.approx(1.0, abs=0.1)  # calibrated already: ~1
    assert apply_temperature(sharp, 1.0) is sharp and fit_temperature(np.zeros(0, int), np.zeros((0, 7))) == 1.0
    close = np.array([[np.nextafter(np.float32(0.3), np.float32(0)), np.float32(0.3), 0.1, 0, 0, 0, 0]],
                     dtype=np.float32)  # the top two one float32 step apart: softened 20x, class 1 must stay on top
    assert apply_temperature(close, 20.0).argmax(1).tolist() == [1]


def test_evaluate_calibrates_each_tta_mode_on_val_and_logs_the_temperatures(tmp_path, mlflow_store):
    """A deep model's served probabilities get a temperature per TTA mode, fitted on val; test accuracies are those
    of the raw probabilities (calibration never changes a label), and the ECE figures are the served ones."""
    import keras
    import mlflow

    from ferops.diagnostics import fit_temperature
    from ferops.evaluation import choose_tta, tta_probas
    from ferops.tracking import RUN_ID_FILE
    from ferops.tta import view_probas

    data = _separable(300, seed=3)
    d = tmp_path / "models" / "deep" / "tiny"
    d.mkdir(parents=True)
    # a sharp, partly wrong linear model: confident far beyond its accuracy, so T > 1
    init = keras.initializers.RandomNormal(stddev=0.3, seed=0)
    model = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(7, activation="softmax", kernel_initializer=init)])
    model.save(d / "model.keras")
    (d / "config.json").write_text(json.dumps({"arch": "dnn"}))
    (d / "metrics.json").write_text(json.dumps({"model": "tiny", "kind": "deep", "arch": "dnn", "val_accuracy": 0.2}))
    with mlflow.start_run() as run:
        pass
    (d / RUN_ID_FILE).write_text(run.info.run_id)
    val, test = data.subset(np.arange(150)), data.subset(np.arange(150, 300))
    results, _ = evaluate_all(discover_models(tmp_path / "models"), test, test.subset(np.arange(0)), tmp_path / "eval",
                              tta="auto", val=val)
    r = results[0]
    views = view_probas(model, val.pixels, 64, "all")
    want = {m: fit_temperature(val.emotion.astype(int), tta_probas(views, m)) for m in ("none", "flip", "tencrop", "shift")}
    assert r["temperatures"] == pytest.approx(want)
    assert want["none"] > 1.5  # the case calibration is for
    assert r["test_ece_single"] < r["test_ece_single_raw"]
    logged = mlflow.get_run(run.info.run_id).data
    assert json.loads(logged.tags["eval_temperatures"]) == pytest.approx(want)
    assert logged.metrics["temperature_none"] == pytest.approx(want["none"])
    assert "raw)" in comparison_markdown(results, "auto")
    # reports/serving.json, what register serves: the very values tagged (register read only the tags, which an
    # experiment re-evaluating the same run overwrote), in the form register reads back; no entry for a baseline
    from ferops.data.io import write_json
    from ferops.evaluation import serving_summary
    from ferops.registry import read_serving

    serving = serving_summary([*results, _result("logreg", 0.5, 0.5)], "auto")
    assert serving == {"tiny": {"tta": logged.tags["eval_tta"], "tta_chosen": logged.tags["eval_tta_chosen"],
                                "temperatures": json.loads(logged.tags["eval_temperatures"]),
                                "run_id": run.info.run_id}}  # which training run they are of
    assert logged.tags["eval_tta_chosen"] == "val" and read_serving(write_json(serving, tmp_path / "s.json")) == serving

    # a mode set in params.yaml (the single pass, and a large mode): every mode is calibrated all the same (a request
    # may ask for any), and val's accuracy by mode is logged beside it, while the mode used stays the one set
    for mode in ("none", "tencrop"):
        fixed, _ = evaluate_all(discover_models(tmp_path / "models"), test, test.subset(np.arange(0)),
                                tmp_path / "eval", tta=mode, val=val, track=False)
        assert fixed[0]["tta_mode"] == mode and fixed[0]["temperatures"] == pytest.approx(want)
        assert serving_summary(fixed, mode)["tiny"] == {"tta": mode, "tta_chosen": "params", "run_id": run.info.run_id,
                                                        "temperatures": fixed[0]["temperatures"]}
        assert fixed[0]["val_accuracy_tta_shift"] == r["val_accuracy_tta_shift"]
    # ... and the val probabilities it goes on with (diagnostics, the val figures) are the set mode's
    mode, _, probs_val, _ = choose_tta(model, discover_models(tmp_path / "models")[0], val, "none", 64)
    assert mode == "none" and np.allclose(probs_val, views[0])


def test_confident_mistakes_picks_wrong_rows_most_confident_first():
    from ferops.diagnostics import confident_mistakes, mistakes_rows

    y = np.array([0, 0, 0, 0, 1])
    probs = np.zeros((5, 7))
    probs[0, [0, 1]] = [0.9, 0.1]  # right
    probs[1, [0, 3]] = [0.4, 0.6]  # wrong, 0.6 sure
    probs[2, [0, 2]] = [0.1, 0.9]  # wrong, 0.9 sure
    probs[3, [0, 5]] = [0.3, 0.7]  # wrong, 0.7 sure
    probs[4, [1, 6]] = [0.2, 0.8]  # wrong
    out = confident_mistakes(y, probs, per_class=2)
    assert [o.tolist() for o in out] == [[2, 3], [4], [], [], [], [], []]
    rows = mistakes_rows(np.array([f"f:{i}" for i in range(5)]), y, probs)  # every error, most confident first
    assert [r[2] for r in rows] == ["f:2", "f:4", "f:3", "f:1"]
    assert rows[0] == ("Angry", "Fear", "f:2", 0.9, 0.1)


def test_log_to_run_of_a_deleted_training_run_warns_instead_of_failing(tmp_path, monkeypatch, caplog):
    """A training run deleted in the MLflow UI: evaluate keeps its files and goes on, as for a reset store."""
    import mlflow

    from ferops.evaluation import ModelEntry, log_to_run
    from ferops.tracking import init_tracking, model_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    init_tracking()
    with model_run(stage="train_baselines", model="nb", params={}, tags={}, run_dir=tmp_path / "nb") as run:
        pass
    mlflow.delete_run(run.info.run_id)
    with caplog.at_level("WARNING", logger="ferops"):
        assert log_to_run(ModelEntry("nb", "baseline", tmp_path / "nb"), {"test_accuracy": 0.5}, [], "flip") is False
    assert f"MLflow run {run.info.run_id} was deleted" in caplog.text
    assert mlflow.get_run(run.info.run_id).info.lifecycle_stage == "deleted"  # left as the user left it
    # a run the store does not hold (it was reset) warns too...
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "mlflow_run_id.txt").write_text("0123456789abcdef0123456789abcdef")
    with caplog.at_level("WARNING", logger="ferops"):
        assert log_to_run(ModelEntry("gone", "baseline", tmp_path / "gone"), {"test_accuracy": 0.5}, [], "flip") is False
    assert "not in the store" in caplog.text
    # ...but a store that fails to answer stops evaluate: register would read the run's stale TTA tags
    from mlflow.exceptions import MlflowException

    def busy(self, run_id):
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    monkeypatch.setattr(mlflow.MlflowClient, "get_run", busy)
    with pytest.raises(MlflowException, match="database is locked"):
        log_to_run(ModelEntry("nb", "baseline", tmp_path / "nb"), {"test_accuracy": 0.5}, [], "flip")
