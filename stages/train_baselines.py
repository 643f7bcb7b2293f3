"""train_baselines stage: fit one classic model (grid selected on val), log it to MLflow, write its model dir."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ferops import tracking
from ferops.config import load_params, locate_param, number, section
from ferops.data.io import load_npz, read_json, write_json
from ferops.errors import ConfigError
from ferops.metrics import classification_metrics, confusion
from ferops.models import baselines
from ferops.plots import confusion_matrix_plot
from ferops.runner import log, run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="a key of train_baselines.models in params.yaml")
    ap.add_argument("--split", required=True, type=Path, help="folder with train.npz and val.npz")
    ap.add_argument("--ingest-report", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path, help="models/baselines/<model>")
    a = ap.parse_args()

    params = load_params()
    seed, sec = number(params, "", "seed", 42, whole=True), section(params, "train_baselines")
    # a mistyped row cap (`val_max_rows: all`) fails here, naming its key, before the data load; null = the whole split
    caps = {k: number(sec, "train_baselines", k, 0, whole=True, low=1) if sec.get(k) else None
            for k in ("train_max_rows", "val_max_rows")}
    models = sec.get("models") or {}
    if a.model not in models:
        raise ConfigError(f"params.yaml: train_baselines.models has no `{a.model}`; known: {', '.join(models)}.")
    cfg = dict(models[a.model])
    kind = cfg.get("kind", a.model)
    try:  # `max_iter: lots` or `C: [fast]` fails here, naming its params.yaml key, before the data load
        baselines.check_settings(kind, cfg)
    except ConfigError as exc:
        raise locate_param(exc, [(f"train_baselines.models.{a.model}", cfg)]) from None
    report = read_json(a.ingest_report)
    Xtr, ytr = baselines.to_xy(load_npz(a.split / "train.npz"), caps["train_max_rows"], seed)
    Xva, yva = baselines.to_xy(load_npz(a.split / "val.npz"), caps["val_max_rows"], seed)
    log.info("%s (%s): train %d rows, val %d rows, %s data", a.model, kind, len(Xtr), len(Xva),
             "synthetic" if report.get("synthetic") else "real")

    import mlflow
    import pandas as pd

    tracking.init_tracking()
    (a.out / tracking.RUN_ID_FILE).unlink(missing_ok=True)  # a retrain is a new run, never a resumed one
    with tracking.model_run(stage="train_baselines", model=a.model, params=cfg,
                            tags=tracking.dataset_tags(report) | {"kind": kind}, run_dir=a.out) as run_:
        t0 = time.perf_counter()
        model, grid, best = baselines.fit_with_grid(kind, cfg, Xtr, ytr, Xva, yva, seed)
        wall = time.perf_counter() - t0
        pred = model.predict(Xva)
        metrics = {"model": a.model, "kind": "baseline", "estimator": kind, "best_params": best,
                   **classification_metrics(yva, pred, prefix="val_"), "train_wall_s": round(wall, 2),
                   "train_rows": len(Xtr), "val_rows": len(Xva), "mlflow_run_id": run_.info.run_id}
        info = baselines.log_sklearn_model(model, Xva)
        metrics["mlflow_model_uri"] = info.model_uri
        import joblib

        joblib.dump(model, a.out / "model.joblib", compress=3)  # forests: ~100 MB raw, a fraction zipped
        pd.DataFrame(grid).to_csv(a.out / "grid.csv", index=False)
        confusion_matrix_plot(confusion(yva, pred), a.out / "confusion_val.png", title=f"{a.model} — validation")
        write_json(metrics, a.out / "metrics.json")

        for r in grid:  # one step per grid point, so the MLflow UI charts the search
            mlflow.log_metrics({f"grid_{k}": r[k] for k in ("val_accuracy", "val_macro_f1", "train_accuracy", "fit_s")},
                               step=r["point"])
        mlflow.log_params({f"best.{k}": v for k, v in best.items()})
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        for f in ("grid.csv", "confusion_val.png", "metrics.json"):  # model.joblib is already the logged model
            mlflow.log_artifact(str(a.out / f))
    log.info("%s: val_accuracy %.4f (best %s) in %.0fs → %s", a.model, metrics["val_accuracy"], best, wall, a.out)


if __name__ == "__main__":
    run(main)
