"""tune stage: Optuna search for one deep family (objective: val accuracy) → reports/tuning/<family>.json + plots."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ferops.runner import cap_onednn_isa, run, start_tensorflow


def _workers(text: str) -> int:
    """--workers as argparse reads it: a whole number ≥ 1 (0 fell back to tune.workers; -1 was blamed on it)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ≥ 1")
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--family", required=True, help="a key of tune.families (and of train_deep.models)")
    ap.add_argument("--split", required=True, type=Path, help="folder with train.npz and val.npz")
    ap.add_argument("--train", type=Path, default=None,
                    help="train set the trials use (default: params.yaml train_deep.train_data, like the model's stage)")
    ap.add_argument("--ingest-report", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path, help="tuning report (JSON)")
    ap.add_argument("--figures", required=True, type=Path, help="folder for the Optuna plots")
    ap.add_argument("--workers", type=_workers, default=None, help="parallel worker processes (default: tune.workers)")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()

    from ferops import tuning
    from ferops.config import load_params, locate_param, mapping, number, repo_root, section, train_data
    from ferops.data.io import data_digest, load_npz, read_json, write_json
    from ferops.data.split import stratified_subsample
    from ferops.errors import ConfigError
    from ferops.tracking import dataset_tags, init_tracking
    from ferops.training import check_config, resolve_config

    params = load_params(args.params)
    tune, deep = section(params, "tune"), section(params, "train_deep")
    families = tune.get("families") or {}
    fam = families.get(args.family) if isinstance(families, dict) else None
    for where, value, keys in (("tune.families", families, "a `<family>:` section each"),  # not tracebacks
                               (f"tune.families.{args.family}", fam, "n_trials, epochs, timeout_min, train_max_rows, space")):
        problem = tuning.section_problem(value, where, keys)
        if problem:
            raise problem
    model = (deep.get("models") or {}).get(args.family)
    if not fam or not model or not fam.get("space"):
        raise ConfigError(f"--family {args.family}: params.yaml needs tune.families.{args.family} (with a `space:`) "
                          f"and train_deep.models.{args.family} (the base config).")
    # a mistyped value (`lr: {low: fast}`) fails here, naming its params.yaml key, before TensorFlow and the data load
    tuning.check_space(fam["space"], f"params.yaml tune.families.{args.family}.space")
    tuning.make_pruner(tune.get("pruner"), 1)  # so is a bad tune.pruner (`pruner: median`, `n_warmup_steps: one`)
    for message in tuning.unknown_tune_keys(fam, f"tune.families.{args.family}", tune.get("pruner")):  # typos
        logging.getLogger("ferops.tune").warning("%s", message)
    seed = number(params, "", "seed", 42, whole=True)
    workers = args.workers or (number(tune, "tune", "workers", 1, whole=True, low=1) if tune.get("workers") else 1)
    ingest = read_json(args.ingest_report)
    b = tuning.budget(fam, mapping(params, "demo"), synthetic=bool(ingest.get("synthetic")),
                      where=f"tune.families.{args.family}")
    cfg = resolve_config(deep.get("common") or {}, model)
    param_keys = [(f"train_deep.models.{args.family}", model), ("train_deep.common", deep.get("common")),
                  (f"tune.families.{args.family}", fam)]
    try:  # the base config first, so that its own bad value is not blamed on a search-space entry
        check_config(cfg)
    except ConfigError as exc:
        raise locate_param(exc, param_keys) from None
    tuning.check_space_applies(fam["space"], cfg, f"params.yaml tune.families.{args.family}.space")
    cap_onednn_isa(cfg)  # the trials train this model's config: same kernels cap as its train_deep stage
    start_tensorflow()  # after the cap; filters TF's C++ start-up chatter
    train = stratified_subsample(load_npz(args.train or train_data(params)), b["train_rows"], seed)
    val = stratified_subsample(load_npz(args.split / "val.npz"), None, seed)  # labeled rows, all of them
    # Same space/trial config/data/epochs → same study (a rerun resumes or reuses it); any change → a fresh study.
    name = tuning.family_study_name(args.family, cfg, fam["space"], b["epochs"], seed, tune.get("pruner"),
                                    data_digest(train, val))
    root = repo_root()
    init_tracking()

    t0 = time.monotonic()
    try:
        study = tuning.run_study(args.family, cfg, fam["space"], train, val, storage=tune.get("storage"),
                                 study_name=name, n_trials=b["n_trials"], timeout_s=b["timeout_s"], seed=seed,
                                 epochs=b["epochs"], workers=workers,
                                 pruner=tuning.make_pruner(tune.get("pruner"), b["epochs"]),
                                 mlflow_tags=dataset_tags(ingest), figures_dir=args.figures, root=root)
    except ConfigError as exc:  # name the params.yaml key behind a bad value
        raise locate_param(exc, param_keys) from None
    spec = tuning.storage_spec(tune.get("storage"), root, workers)
    report = tuning.study_summary(study, args.family, b["n_trials"], spec)
    report.update(epochs=b["epochs"], train_rows=len(train), val_rows=len(val), workers=workers,
                  dataset=dataset_tags(ingest)["dataset"])
    write_json(report, args.out)
    print(f"tune {args.family}: best val_accuracy {report['best_value']} with {report['best_params']} "
          f"({report['n_complete']} complete, {report['n_pruned']} pruned; {time.monotonic() - t0:.0f} s) → {args.out}")


if __name__ == "__main__":
    run(main)
