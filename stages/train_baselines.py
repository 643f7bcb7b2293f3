"""train_baselines stage: fit one classic model (grid selected on val), log it to MLflow, write its model dir."""

from __future__ import annotations

import argparse
from pathlib import Path

from ferops.config import load_params, locate_param, not_a_section, number, section
from ferops.data.io import load_npz, read_json
from ferops.errors import ConfigError
from ferops.models import baselines
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
    cfg = models[a.model] or {}  # `knn:` with nothing under it: that kind with its defaults, as `knn: {}` is
    if not isinstance(cfg, dict):
        raise not_a_section(f"train_baselines.models.{a.model}", cfg, "kind, grid, fixed settings")
    cfg = dict(cfg)
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

    metrics = baselines.train_baseline_model(a.model, kind, cfg, (Xtr, ytr), (Xva, yva), seed=seed,
                                             ingest_report=report, out_dir=a.out)
    log.info("%s: val_accuracy %.4f (best %s) in %.0fs → %s", a.model, metrics["val_accuracy"], metrics["best_params"],
             metrics["train_wall_s"], a.out)


if __name__ == "__main__":
    run(main)
