"""Unit tests of the classic baselines: every kind learns the synthetic faces from raw pixels and pickles."""

from __future__ import annotations

import joblib
import numpy as np
import pytest

from ferops.constants import N_PIXELS, NUM_CLASSES
from ferops.data.synthetic import make_synthetic
from ferops.errors import ConfigError, DataError
from ferops.models import baselines

# Tiny data and iteration caps: non-convergence is expected here and not what these tests check.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# Small, fast settings per kind (the real-data defaults live in params.yaml).
TINY: dict[str, dict] = {
    "logreg": {"max_iter": 100},
    "random_forest": {"n_estimators": 20, "max_depth": 6, "n_jobs": 1},
    "naive_bayes": {"pca": 20},
    "knn": {"pca": 50, "per_image": True, "n_jobs": 1},  # per-image standardising: faces differ in lighting
    "hog_svm": {"C": 0.1},
    "hog_svm_linear_svc": {"C": 0.1, "classifier": "linear_svc"},
}


@pytest.fixture(autouse=True)
def one_blas_thread():
    """One BLAS thread: on a busy shared CPU, spin-waiting BLAS threads made a 300-row lbfgs fit ~40x slower."""
    import sklearn.linear_model  # noqa: F401 — load scipy's BLAS first: threadpoolctl limits only loaded libraries
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """400 synthetic faces: 300 to train, 100 to validate, as raw pixels float32 [N, 2304]."""
    X, y = baselines.to_xy(make_synthetic(400, seed=3))
    return X[:300], y[:300], X[300:], y[300:]


@pytest.mark.parametrize("case", list(TINY))
def test_kind_learns_raw_pixels_and_roundtrips_joblib(case, data, tmp_path):
    Xtr, ytr, Xva, yva = data
    kind = case.removesuffix("_linear_svc")
    model = baselines.build_estimator(kind, TINY[case], seed=0).fit(Xtr, ytr)
    proba = model.predict_proba(Xva)
    assert proba.shape == (len(Xva), NUM_CLASSES)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    acc = float((model.predict(Xva) == yva).mean())
    chance = np.bincount(yva).max() / len(yva)  # majority-class rate
    assert acc > chance, f"{kind}: val accuracy {acc:.2f} not above majority rate {chance:.2f}"
    joblib.dump(model, tmp_path / "m.joblib")
    again = joblib.load(tmp_path / "m.joblib")
    np.testing.assert_array_equal(again.predict(Xva), model.predict(Xva))
    np.testing.assert_allclose(again.predict_proba(Xva), proba, rtol=1e-5, atol=1e-7)


def test_pipelines_scale_inside(data):
    """A model fitted on 0..255 pixels gives different answers on 0..1 input: scaling is not the caller's job."""
    Xtr, ytr, Xva, _ = data
    model = baselines.build_estimator("logreg", {"max_iter": 50}, seed=0).fit(Xtr, ytr)
    assert not np.allclose(model.predict_proba(Xva), model.predict_proba(Xva / 255.0))


def test_grid_selects_the_val_best_point(data):
    Xtr, ytr, Xva, yva = data
    cfg = {"kind": "knn", "pca": 20, "n_jobs": 1, "grid": {"n_neighbors": [1, 3, 25, 60]}}
    best, rows, best_params = baselines.fit_with_grid("knn", cfg, Xtr, ytr, Xva, yva, seed=0, progress=False)
    assert [r["n_neighbors"] for r in rows] == [1, 3, 25, 60]
    top = max(rows, key=lambda r: r["val_accuracy"])
    assert best_params == {"n_neighbors": top["n_neighbors"]}
    assert best.named_steps["clf"].n_neighbors == top["n_neighbors"]
    assert [r["selected"] for r in rows].count(True) == 1 and top["selected"]
    # The returned model is the one trained on train with the best params, so it scores the reported accuracy.
    assert float((best.predict(Xva) == yva).mean()) == pytest.approx(top["val_accuracy"])
    assert {"fit_s", "val_macro_f1", "train_accuracy"} <= set(rows[0])


def test_grid_with_cv_reports_fold_scores(data):
    Xtr, ytr, Xva, yva = data
    cfg = {"kind": "naive_bayes", "cv": 3, "grid": {"pca": [5, 20]}}
    _, rows, best_params = baselines.fit_with_grid("naive_bayes", cfg, Xtr, ytr, Xva, yva, seed=0, progress=False)
    assert all(0.0 <= r["cv_accuracy"] <= 1.0 for r in rows)
    assert best_params == {"pca": max(rows, key=lambda r: r["cv_accuracy"])["pca"]}


def test_unknown_kind_and_setting_are_config_errors(data):
    Xtr, ytr, Xva, yva = data
    with pytest.raises(ConfigError, match="unknown kind `svm`"):
        baselines.build_estimator("svm", {}, seed=0)
    with pytest.raises(ConfigError, match="n_neighbours"):
        baselines.fit_with_grid("knn", {"grid": {"n_neighbours": [3]}}, Xtr, ytr, Xva, yva, seed=0, progress=False)
    with pytest.raises(ConfigError, match="non-empty list"):
        baselines.fit_with_grid("knn", {"grid": {"n_neighbors": 3}}, Xtr, ytr, Xva, yva, seed=0, progress=False)


def test_a_pca_above_the_rows_or_pixels_is_a_config_error_before_any_point_trains(data):
    Xtr, ytr, Xva, yva = data
    small = baselines.to_xy(make_synthetic(80, seed=1))  # e.g. a small train_max_rows
    with pytest.raises(ConfigError, match=r"knn: pca=100 is above the 80 dimensions the fit has \(80 train rows.*max_rows"):
        baselines.fit_with_grid("knn", {}, *small, Xva, yva, seed=0, progress=False)
    big = np.zeros((2400, N_PIXELS), np.float32), np.arange(2400) % NUM_CLASSES
    with pytest.raises(ConfigError, match=r"naive_bayes: grid.pca=3000 is above the 2304 dimensions .*; lower it\.$"):
        baselines.fit_with_grid("naive_bayes", {"grid": {"pca": [None, 3000]}}, *big, Xva, yva, seed=0, progress=False)
    with pytest.raises(ConfigError, match=r"pca=250 is above the 240 dimensions .*per 5-fold CV fit"):
        baselines.fit_with_grid("knn", {"pca": 250, "cv": 5}, Xtr, ytr, Xva, yva, seed=0, progress=False)


def test_knn_neighbours_above_the_rows_and_n_jobs_0_are_config_errors_before_any_point_trains(data, monkeypatch):
    # sklearn accepts both in fit: KNN failed at predict ("Expected n_neighbors <= n_samples_fit"), and n_jobs=0 in
    # joblib's Parallel — each a traceback after the grid points before it had trained
    Xtr, ytr, Xva, yva = data
    monkeypatch.setattr(baselines, "_evaluate_point", lambda *a, **k: pytest.fail("a grid point trained"))
    small = baselines.to_xy(make_synthetic(80, seed=1))
    with pytest.raises(ConfigError, match=r"knn: grid.n_neighbors=81 is above the 80 train rows the fit has; lower "
                                          r"it, or raise train_baselines.train_max_rows\.$"):
        baselines.fit_with_grid("knn", {"pca": None, "grid": {"n_neighbors": [5, 81]}}, *small, Xva, yva, seed=0,
                                progress=False)
    with pytest.raises(ConfigError, match=r"knn: n_neighbors=70 is above the 64 train rows .*per 5-fold CV fit"):
        baselines.fit_with_grid("knn", {"pca": None, "n_neighbors": 70, "cv": 5}, *small, Xva, yva, seed=0,
                                progress=False)
    with pytest.raises(ConfigError, match=r"^grid.n_jobs=0: give a whole number other than 0"):
        baselines.check_settings("random_forest", {"grid": {"n_jobs": [-1, 0]}})


def test_a_bad_setting_in_a_later_grid_point_fails_before_the_first_point_trains(data, monkeypatch):
    Xtr, ytr, Xva, yva = data
    monkeypatch.setattr(baselines, "_evaluate_point", lambda *a, **k: pytest.fail("a grid point trained"))
    with pytest.raises(ConfigError, match="classifier must be `logreg` or `linear_svc`, got 'linearsvc'"):
        baselines.fit_with_grid("hog_svm", {"grid": {"classifier": ["logreg", "linearsvc"]}}, Xtr, ytr, Xva, yva,
                                seed=0, progress=False)
    with pytest.raises(ConfigError, match=r"pixels_per_cell × cells_per_block = 64 is above the 48-px image"):
        baselines.fit_with_grid("hog_svm", {"grid": {"pixels_per_cell": [8, 32]}}, Xtr, ytr, Xva, yva, seed=0,
                                progress=False)


def test_a_value_sklearn_refuses_in_a_later_grid_point_fails_before_the_first_point_trains(data, monkeypatch):
    # sklearn checks its parameters only in fit: `max_features: auto` (removed in sklearn 1.3) ended in a traceback
    # after the `sqrt` points trained
    Xtr, ytr, Xva, yva = data
    monkeypatch.setattr(baselines, "_evaluate_point", lambda *a, **k: pytest.fail("a grid point trained"))
    with pytest.raises(ConfigError, match=r"random_forest: The 'max_features' parameter .* Got 'auto' instead"):
        baselines.fit_with_grid("random_forest", {"grid": {"max_features": ["sqrt", "auto"]}}, Xtr, ytr, Xva, yva,
                                seed=0, progress=False)
    with pytest.raises(ConfigError, match=r"hog_svm: The 'C' parameter of LinearSVC .* Got 0\.0 instead"):
        baselines.fit_with_grid("hog_svm", {"classifier": "linear_svc", "grid": {"C": [0.1, 0]}}, Xtr, ytr, Xva, yva,
                                seed=0, progress=False)


def test_wrong_input_shape_is_a_data_error(data):
    Xtr, ytr, Xva, yva = data
    with pytest.raises(DataError, match="2304"):
        baselines.fit_with_grid("naive_bayes", {}, Xtr[:, :100], ytr, Xva, yva, seed=0, progress=False)


def test_to_xy_drops_unlabeled_and_subsamples_stratified():
    d = make_synthetic(300, seed=1)
    d.emotion[:10] = -1
    X, y = baselines.to_xy(d)
    assert X.shape == (290, N_PIXELS) and X.dtype == np.float32 and (y >= 0).all()
    Xs, ys = baselines.to_xy(d, max_rows=100, seed=0)
    assert len(Xs) == 100
    assert set(np.unique(ys)) == set(np.unique(y))  # every class kept, Disgust included
    np.testing.assert_array_equal(baselines.to_xy(d, max_rows=100, seed=0)[1], ys)  # deterministic


def test_hog_features_shape():
    X = make_synthetic(4, seed=0).pixels.reshape(4, -1).astype(np.float32)
    assert baselines.hog_features(X).shape == (4, 900)  # 5x5 blocks x 2x2 cells x 9 orientations
    assert baselines.hog_features(X[:0]).shape == (0, 900)


def test_skops_trusts_only_our_own_types(data):
    Xtr, ytr, _, _ = data
    model = baselines.build_estimator("hog_svm", TINY["hog_svm"], seed=0).fit(Xtr, ytr)
    trusted = baselines.skops_trusted_types(model)
    assert trusted is not None and "ferops.models.baselines.hog_features" in trusted
    assert all(t.split(".")[0] in ("sklearn", "ferops", "numpy", "scipy", "builtins", "collections") for t in trusted)


def test_model_requirements_are_pinned_and_kind_specific(data):
    Xtr, ytr, _, _ = data
    hog = baselines.build_estimator("hog_svm", TINY["hog_svm"], seed=0).fit(Xtr, ytr)
    nb = baselines.build_estimator("naive_bayes", TINY["naive_bayes"], seed=0).fit(Xtr, ytr)
    assert all("==" in r for r in baselines.model_requirements(hog))
    assert any(r.startswith("scikit-image==") for r in baselines.model_requirements(hog))
    assert not any(r.startswith("scikit-image==") for r in baselines.model_requirements(nb))


def test_every_baseline_kind_has_a_tiny_test_config():
    """A kind added to baselines.DEFAULTS without an entry in TINY would pass the suite untested."""
    from ferops.models.baselines import KINDS

    assert set(KINDS) <= set(TINY)
