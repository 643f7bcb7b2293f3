"""Classic baselines on raw pixels: one sklearn Pipeline per kind, hyperparameters chosen on validation.

Every pipeline takes raw pixels flattened to float32 [N, 2304] in 0..255 and does its own scaling,
so evaluate/serve can feed any baseline the same array. Kinds:

- ``logreg``        StandardScaler (or /255) → multinomial LogisticRegression (lbfgs).
- ``random_forest`` RandomForestClassifier on raw pixels (trees need no scaling).
- ``naive_bayes``   /255 (optionally PCA) → GaussianNB.
- ``knn``           /255 (or per-image standardising, ``per_image: true``) → PCA (100 dims by default:
                    each distance 23x cheaper) → KNeighborsClassifier.
- ``hog_svm``       scikit-image HOG descriptor → StandardScaler → linear classifier with predict_proba:
                    multinomial LogisticRegression (default: on FER2013 as accurate as a LinearSVC and ~20x
                    faster) or ``classifier: linear_svc`` (LinearSVC, sigmoid-calibrated on internal folds).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ferops.constants import IMG_SIZE, N_PIXELS
from ferops.data.io import FerData
from ferops.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Keys of a `train_baselines.models.<name>` entry that are not estimator settings.
META_KEYS = ("kind", "grid", "cv", "blas_threads")

# Every setting a kind understands, with its default; params.yaml may set any of them (fixed or in `grid`).
DEFAULTS: dict[str, dict[str, Any]] = {
    "logreg": {"C": 3e-4, "max_iter": 300, "tol": 1e-4, "scaler": "standard", "class_weight": None},
    "random_forest": {"n_estimators": 100, "max_depth": 10, "min_samples_split": 5, "min_samples_leaf": 1,
                      "max_features": "sqrt", "class_weight": None, "n_jobs": -1},
    "naive_bayes": {"var_smoothing": 1e-9, "pca": None},
    "knn": {"n_neighbors": 5, "weights": "uniform", "pca": 100, "per_image": False, "metric": "euclidean",
            "n_jobs": -1},
    "hog_svm": {"C": 0.01, "classifier": "logreg", "orientations": 9, "pixels_per_cell": 8, "cells_per_block": 2,
                "max_iter": 300, "calibration_cv": 3, "class_weight": None},
}
KINDS: tuple[str, ...] = tuple(DEFAULTS)

# Top-level modules whose types we accept as "trusted" when MLflow saves the pipeline in skops format.
_SKOPS_SAFE_MODULES = ("sklearn", "numpy", "scipy", "ferops", "builtins", "collections")


def scale_01(X: np.ndarray) -> np.ndarray:
    """Raw grey levels 0..255 → float32 0..1 (module-level so the pipeline pickles)."""
    return np.asarray(X, dtype=np.float32) / np.float32(255.0)


def standardize_images(X: np.ndarray) -> np.ndarray:
    """Each raw-pixel row to zero mean, unit variance (removes lighting/contrast differences between faces)."""
    X = np.asarray(X, dtype=np.float32) / np.float32(255.0)
    return (X - X.mean(axis=1, keepdims=True)) / (X.std(axis=1, keepdims=True) + np.float32(1e-3))


def hog_features(X: np.ndarray, orientations: int = 9, pixels_per_cell: int = 8, cells_per_block: int = 2) -> np.ndarray:
    """HOG descriptor of each raw-pixel row [N, 2304] → float32 [N, F] (module-level so the pipeline pickles)."""
    from skimage.feature import hog

    imgs = np.asarray(X, dtype=np.float32).reshape(-1, IMG_SIZE, IMG_SIZE) / np.float32(255.0)
    ppc, cpb = (int(pixels_per_cell),) * 2, (int(cells_per_block),) * 2
    feats = [hog(im, orientations=int(orientations), pixels_per_cell=ppc, cells_per_block=cpb,
                 block_norm="L2-Hys", feature_vector=True) for im in imgs]
    if not feats:  # an empty batch still needs the right width
        n = (IMG_SIZE // ppc[0] - cpb[0] + 1) ** 2 * cpb[0] ** 2 * int(orientations)
        return np.zeros((0, n), dtype=np.float32)
    return np.stack(feats).astype(np.float32)


def resolve_settings(kind: str, fixed: dict[str, Any]) -> dict[str, Any]:
    """Defaults of `kind` overridden by `fixed`; unknown kinds or keys raise ConfigError naming them."""
    if kind not in DEFAULTS:
        raise ConfigError(f"train_baselines: unknown kind `{kind}`; use one of {', '.join(KINDS)}.")
    unknown = sorted(set(fixed) - set(DEFAULTS[kind]))
    if unknown:
        raise ConfigError(f"train_baselines: kind `{kind}` has no setting(s) {unknown}; "
                          f"allowed: {', '.join(DEFAULTS[kind])} (plus {', '.join(META_KEYS)}).")
    return {**DEFAULTS[kind], **fixed}


NULLABLE = ("max_depth", "pca")  # null = no depth limit / no PCA


def check_settings(kind: str, cfg: dict[str, Any]) -> None:
    """ConfigError `key=value: why` for the first numeric setting of a baseline's params entry (fixed, a grid value,
    `cv`, `blas_threads`) that is not a usable number; the stage calls it before the data loads, since int('lots')
    deep in build_estimator would end in a traceback. Numeric = what DEFAULTS holds a number for."""
    from ferops.config import number_problem

    if kind not in DEFAULTS:
        return  # resolve_settings names the unknown kind
    grid = g if isinstance(g := cfg.get("grid"), dict) else {}
    values = [(k, k, v) for k, v in cfg.items() if k not in ("kind", "grid")]
    values += [(f"grid.{k}", k, v) for k, vs in grid.items() if isinstance(vs, list) for v in vs]
    for where, key, value in values:
        default = DEFAULTS[kind].get(key, 1 if key == "blas_threads" else None)  # blas_threads: a META_KEY
        if key == "cv":
            problem = number_problem(value or 0, whole=True, low=0)
        elif value is None and (key in NULLABLE or key == "blas_threads"):
            continue
        elif key in NULLABLE or (isinstance(default, (int, float)) and not isinstance(default, bool)):
            whole = key in NULLABLE or isinstance(default, int)
            problem = number_problem(value, whole=whole, low=None if key == "n_jobs" else 1 if whole else 0)
            if key == "n_jobs" and not problem and int(float(value)) == 0:  # joblib's ValueError, deep in fit
                problem = "a whole number other than 0 (-1: all cores, 1: one)"
        else:
            continue
        if problem:
            raise ConfigError(f"{where}={value!r}: give {problem}.")


def build_estimator(kind: str, fixed: dict[str, Any], seed: int) -> Any:
    """An unfitted sklearn Pipeline of `kind` whose input is raw pixels float32 [N, 2304] in 0..255."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.decomposition import PCA
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler
    from sklearn.svm import LinearSVC

    s = resolve_settings(kind, fixed)
    to01 = ("scale", FunctionTransformer(scale_01))

    def pca(n: Any) -> list[tuple[str, Any]]:
        # Randomized SVD: a few seconds on 28k x 2304, versus a full SVD's minutes.
        return [("pca", PCA(n_components=int(n), svd_solver="randomized", random_state=seed))] if n else []

    if kind == "logreg":
        if s["scaler"] not in ("standard", "unit"):
            raise ConfigError(f"train_baselines logreg: scaler must be `standard` or `unit` (/255), got {s['scaler']!r}.")
        scaler = ("scale", StandardScaler()) if s["scaler"] == "standard" else to01
        # lbfgs fits the multinomial loss directly (the default for >2 classes) and handles dense 28k x 2304 well.
        clf = LogisticRegression(C=float(s["C"]), solver="lbfgs", max_iter=int(s["max_iter"]), tol=float(s["tol"]),
                                 class_weight=s["class_weight"], random_state=seed)
        return Pipeline([scaler, ("clf", clf)])
    if kind == "random_forest":
        clf = RandomForestClassifier(
            n_estimators=int(s["n_estimators"]), max_depth=None if s["max_depth"] is None else int(s["max_depth"]),
            min_samples_split=int(s["min_samples_split"]), min_samples_leaf=int(s["min_samples_leaf"]),
            max_features=s["max_features"], class_weight=s["class_weight"], n_jobs=s["n_jobs"], random_state=seed)
        return Pipeline([to01, ("clf", clf)])
    if kind == "naive_bayes":
        return Pipeline([to01, *pca(s["pca"]), ("clf", GaussianNB(var_smoothing=float(s["var_smoothing"])))])
    if kind == "knn":
        clf = KNeighborsClassifier(n_neighbors=int(s["n_neighbors"]), weights=s["weights"], metric=s["metric"],
                                   n_jobs=s["n_jobs"])
        norm = ("scale", FunctionTransformer(standardize_images)) if s["per_image"] else to01
        return Pipeline([norm, *pca(s["pca"]), ("clf", clf)])
    cells = int(s["pixels_per_cell"]) * int(s["cells_per_block"])
    if cells > IMG_SIZE:  # skimage's ValueError would come at fit time, as a traceback
        raise ConfigError(f"train_baselines hog_svm: pixels_per_cell × cells_per_block = {cells} is above the "
                          f"{IMG_SIZE}-px image; lower one of them.")
    hog = FunctionTransformer(hog_features, kw_args={k: int(s[k]) for k in ("orientations", "pixels_per_cell",
                                                                                 "cells_per_block")})
    if s["classifier"] == "logreg":
        clf = LogisticRegression(C=float(s["C"]), max_iter=int(s["max_iter"]), class_weight=s["class_weight"],
                                 random_state=seed)
    elif s["classifier"] == "linear_svc":
        # LinearSVC has no predict_proba; sigmoid calibration on internal folds adds it (k+ fits per point: slow).
        svc = LinearSVC(C=float(s["C"]), dual="auto", max_iter=int(s["max_iter"]), class_weight=s["class_weight"],
                        random_state=seed)
        clf = CalibratedClassifierCV(svc, method="sigmoid", cv=int(s["calibration_cv"]))
    else:
        raise ConfigError(f"train_baselines hog_svm: classifier must be `logreg` or `linear_svc`, got {s['classifier']!r}.")
    return Pipeline([("hog", hog), ("std", StandardScaler()), ("clf", clf)])


def to_xy(data: FerData, max_rows: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labeled rows as (raw pixels float32 [N, 2304], labels int64 [N]), optionally a stratified subsample
    (the same cut as the deep models and tuning: `ferops.data.split.stratified_subsample`)."""
    from ferops.data.split import stratified_subsample

    data = stratified_subsample(data, int(max_rows) if max_rows else None, seed)
    return data.pixels.reshape(len(data), N_PIXELS).astype(np.float32), data.emotion.astype(np.int64)


def _grid_points(grid: Any, kind: str) -> list[dict[str, Any]]:
    """The grid mapping name → list of values, expanded to points in a stable order."""
    from sklearn.model_selection import ParameterGrid

    if not grid:
        return [{}]
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"train_baselines {kind}: `grid` must map a setting name to a non-empty list of values, got {grid!r}.")
    resolve_settings(kind, dict.fromkeys(grid))  # fail before any training on a misspelt name
    return list(ParameterGrid(grid))


def _check_sizes(kind: str, fixed: dict[str, Any], points: list[dict[str, Any]], n_rows: int, cv: int) -> None:
    """ConfigError for a `pca` above what the fit can have (its rows — per CV fold — and 2304 pixels), or a KNN
    `n_neighbors` above its rows: sklearn's ValueError would come mid-grid (KNN's only at predict), as a traceback,
    after the points before it trained."""
    fit_rows = n_rows - -(-n_rows // cv) if cv > 1 else n_rows  # a fold fits on all but its ~n/cv held-out rows
    limit = min(fit_rows, N_PIXELS)
    for point in points:
        settings = resolve_settings(kind, {**fixed, **point})
        k = settings.get("n_neighbors")
        if k is not None and int(k) > fit_rows:
            raise ConfigError(f"train_baselines {kind}: {'grid.' if 'n_neighbors' in point else ''}n_neighbors={k} "
                              f"is above the {fit_rows} train rows the fit has"
                              f"{f' per {cv}-fold CV fit' if cv > 1 else ''}; lower it, or raise "
                              f"train_baselines.train_max_rows.")
        n = settings.get("pca")  # knn's default is 100
        if n and int(n) > limit:
            where = "grid.pca" if "pca" in point else "pca"
            fix = "lower it" if limit == N_PIXELS else "lower it, or raise train_baselines.train_max_rows"
            raise ConfigError(f"train_baselines {kind}: {where}={n} is above the {limit} dimensions the fit has "
                              f"({fit_rows} train rows{f' per {cv}-fold CV fit' if cv > 1 else ''}, {N_PIXELS} "
                              f"pixels); {fix}.")


def _check_sklearn_params(kind: str, est: Any) -> None:
    """ConfigError for a value sklearn refuses (`C: 0`, `max_features: auto`, `weights: gaussian`): sklearn checks
    them only in fit, which would end mid-grid in a traceback, after the points before it trained."""
    try:  # sklearn's private module: if a release moves it, fit's own check (a traceback) is the fallback
        from sklearn.utils._param_validation import InvalidParameterError
    except ImportError:
        return
    for _, step in est.steps:
        for obj in (step, getattr(step, "estimator", None)):  # CalibratedClassifierCV: its LinearSVC too
            try:
                if obj is not None and hasattr(obj, "_validate_params"):
                    obj._validate_params()
            except InvalidParameterError as exc:
                raise ConfigError(f"train_baselines {kind}: {exc} Fix: that setting or grid value under params.yaml "
                                  f"train_baselines.models.") from None


def _check_xy(X: np.ndarray, y: np.ndarray, what: str) -> None:
    if X.ndim != 2 or X.shape[1] != N_PIXELS or len(X) != len(y):
        raise DataError(f"{what}: expected raw pixels [N, {N_PIXELS}] with N labels, got X{X.shape} y{y.shape}.")
    if len(X) == 0:
        raise DataError(f"{what}: no labeled rows — check the split stage's output.")


def _evaluate_point(est: Any, i: int, point: dict[str, Any], cv: int, seed: int, train_X: np.ndarray,
                    train_y: np.ndarray, val_X: np.ndarray, val_y: np.ndarray, sub: np.ndarray) -> dict[str, Any]:
    """Fit `est` in place on train (after `cv` folds when cv > 1) and return its grid row."""
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    from ferops.metrics import classification_metrics

    row: dict[str, Any] = {"point": i, **point}
    if cv > 1:
        t0 = time.perf_counter()
        folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
        scores = cross_val_score(clone(est), train_X, train_y, cv=folds, scoring="accuracy")
        row.update(cv_accuracy=float(scores.mean()), cv_accuracy_std=float(scores.std()),
                   cv_s=round(time.perf_counter() - t0, 2))
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        # max_iter is a deliberate time budget: record non-convergence in the grid instead of printing warnings.
        warnings.simplefilter("always", ConvergenceWarning)
        est.fit(train_X, train_y)
    row["fit_s"] = round(time.perf_counter() - t0, 2)
    row["converged"] = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    n_iter = getattr(est[-1], "n_iter_", None)  # iterative solvers: shows whether max_iter was the limit
    if n_iter is not None:
        row["n_iter"] = int(np.max(n_iter))
    t0 = time.perf_counter()
    m = classification_metrics(val_y, est.predict(val_X), prefix="val_")
    row["predict_val_s"] = round(time.perf_counter() - t0, 2)
    row.update(val_accuracy=m["val_accuracy"], val_macro_f1=m["val_macro_f1"],
               train_accuracy=float((est.predict(train_X[sub]) == train_y[sub]).mean()))
    return row


def fit_with_grid(kind: str, cfg: dict[str, Any], train_X: np.ndarray, train_y: np.ndarray, val_X: np.ndarray,
                  val_y: np.ndarray, seed: int, progress: bool = True) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    """Fit every grid point on train, select by validation accuracy (or `cv: k` folds on train); return
    (best fitted estimator, one result row per grid point, best grid params)."""
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    _check_xy(train_X, train_y, "train split")
    _check_xy(val_X, val_y, "val split")
    fixed = {k: v for k, v in cfg.items() if k not in META_KEYS}
    points = _grid_points(cfg.get("grid"), kind)
    cv = int(cfg.get("cv") or 0)
    _check_sizes(kind, fixed, points, len(train_X), cv)
    # Train accuracy on a fixed subsample: shows over/under-fitting without predicting all 28k rows (slow for KNN).
    rng = np.random.default_rng(seed)
    sub = rng.choice(len(train_X), size=min(2000, len(train_X)), replace=False)

    rows: list[dict[str, Any]] = []
    best, best_score, best_i = None, -np.inf, -1
    bar = tqdm(points, desc=f"{kind} grid", unit="point", disable=not progress)
    for point in points:  # bad settings of any point fail now, not after the points before it trained
        _check_sklearn_params(kind, build_estimator(kind, {**fixed, **point}, seed))  # (also loads scipy's BLAS)
    # `blas_threads: 1` avoids BLAS spin-waiting on a busy shared CPU (lbfgs got ~40x slower on small data).
    with threadpool_limits(limits=cfg.get("blas_threads"), user_api="blas"):
        for i, point in enumerate(bar):
            est = build_estimator(kind, {**fixed, **point}, seed)
            row = _evaluate_point(est, i, point, cv, seed, train_X, train_y, val_X, val_y, sub)
            rows.append(row)
            score = row["cv_accuracy"] if cv > 1 else row["val_accuracy"]
            if score > best_score:  # strict: ties keep the earlier (listed first) point
                best, best_score, best_i = est, score, i
            bar.set_postfix(val_acc=f"{row['val_accuracy']:.3f}", best=f"{best_score:.3f}")
            log.info("%s point %d/%d %s: val_accuracy=%.4f fit %.1fs", kind, i + 1, len(points), point,
                     row["val_accuracy"], row["fit_s"])
    for r in rows:
        r["selected"] = r["point"] == best_i
    return best, rows, dict(points[best_i])


def skops_trusted_types(model: Any) -> list[str] | None:
    """Types a skops dump of `model` needs trusted, or None when some come from outside sklearn/numpy/scipy/ferops."""
    import skops.io

    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    return untrusted if all(t.split(".")[0] in _SKOPS_SAFE_MODULES for t in untrusted) else None


def model_requirements(model: Any) -> list[str]:
    """Pinned pip requirements of a pipeline (explicit: MLflow's inference costs ~6 s and picks up test tools).

    The pipelines also reference ferops functions (scale_01, hog_features): load them where ferops is installed.
    """
    from importlib.metadata import version

    dists = ["mlflow", "scikit-learn", "skops", "numpy", "scipy"]
    if "hog" in getattr(model, "named_steps", {}):
        dists.append("scikit-image")
    return [f"{d}=={version(d)}" for d in dists]


def log_sklearn_model(model: Any, X_example: np.ndarray, name: str = "model") -> Any:
    """Log a fitted pipeline to the active MLflow run (skops format, our own types trusted); returns ModelInfo.

    Loading it back needs MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true (MLflow 3.17 gates every sklearn format).
    """
    import mlflow
    from mlflow.models import infer_signature

    X_example = np.asarray(X_example[:5], dtype=np.float32)
    signature = infer_signature(X_example, model.predict(X_example))
    reqs = model_requirements(model)
    trusted = skops_trusted_types(model)
    if trusted is None:  # a type we cannot vouch for: fall back to pickle (MLflow warns about it)
        return mlflow.sklearn.log_model(model, name=name, signature=signature, serialization_format="pickle",
                                        pip_requirements=reqs)
    return mlflow.sklearn.log_model(model, name=name, signature=signature, serialization_format="skops",
                                    skops_trusted_types=trusted, pip_requirements=reqs)


def train_baseline_model(name: str, kind: str, cfg: dict[str, Any], train: tuple[np.ndarray, np.ndarray],
                         val: tuple[np.ndarray, np.ndarray], *, seed: int, ingest_report: dict[str, Any],
                         out_dir: str | Path) -> dict[str, Any]:
    """Fit one baseline (grid selected on val) inside its own MLflow run and write its model directory
    (model.joblib, grid.csv, confusion_val.png, metrics.json); returns metrics.json's content."""
    import joblib
    import mlflow
    import pandas as pd

    from ferops import tracking
    from ferops.data.io import write_json
    from ferops.metrics import classification_metrics, confusion
    from ferops.plots import confusion_matrix_plot

    (Xtr, ytr), (Xva, yva), out = train, val, Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tracking.init_tracking()
    (out / tracking.RUN_ID_FILE).unlink(missing_ok=True)  # a retrain is a new run, never a resumed one
    with tracking.model_run(stage="train_baselines", model=name, params={**cfg, "seed": seed},
                            tags=tracking.dataset_tags(ingest_report) | {"kind": kind}, run_dir=out) as run:
        t0 = time.perf_counter()
        model, grid, best = fit_with_grid(kind, cfg, Xtr, ytr, Xva, yva, seed)
        wall = time.perf_counter() - t0
        pred = model.predict(Xva)
        metrics = {"model": name, "kind": "baseline", "estimator": kind, "best_params": best,
                   **classification_metrics(yva, pred, prefix="val_"), "train_wall_s": round(wall, 2),
                   "train_rows": len(Xtr), "val_rows": len(Xva), "mlflow_run_id": run.info.run_id}
        metrics["mlflow_model_uri"] = log_sklearn_model(model, Xva).model_uri
        joblib.dump(model, out / "model.joblib", compress=3)  # forests: ~100 MB raw, a fraction zipped
        pd.DataFrame(grid).to_csv(out / "grid.csv", index=False)
        confusion_matrix_plot(confusion(yva, pred), out / "confusion_val.png", title=f"{name} — validation")
        write_json(metrics, out / "metrics.json")

        for r in grid:  # one step per grid point, so the MLflow UI charts the search
            mlflow.log_metrics({f"grid_{k}": r[k] for k in ("val_accuracy", "val_macro_f1", "train_accuracy", "fit_s")},
                               step=r["point"])
        mlflow.log_params({f"best.{k}": v for k, v in best.items()})
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        for f in ("grid.csv", "confusion_val.png", "metrics.json"):  # model.joblib is already the logged model
            mlflow.log_artifact(str(out / f))
    return metrics
