"""train_deep stage: train one Keras model (params `train_deep.models.<model>`), log it to MLflow, write models/deep/<model>/."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ferops.config import load_params, locate_param, number, section, train_data, unknown_model_keys
from ferops.data.io import load_npz, read_json
from ferops.errors import ConfigError
from ferops.runner import cap_onednn_isa, run, start_tensorflow

log = logging.getLogger("ferops.train_deep")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="key under train_deep.models in params.yaml")
    ap.add_argument("--split", type=Path, required=True, help="folder with train.npz / val.npz")
    ap.add_argument("--train", type=Path, default=None,
                    help="train set (default: params.yaml train_deep.train_data, the split's or the augment stage's)")
    ap.add_argument("--tuned", type=Path, required=True, help="tune_select's reports/tuned/<model>.json")
    ap.add_argument("--ingest-report", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="model directory to write")
    ap.add_argument("--checkpoints", type=Path, required=True, help="per-epoch checkpoint folder (resume after a kill)")
    ap.add_argument("--curves", type=Path, required=True, help="per-epoch CSV for DVC plots")
    args = ap.parse_args()

    from ferops.data.split import stratified_subsample
    from ferops.training import apply_tuned, check_config, resolve_config, train_deep_model

    params = load_params()
    td, demo = section(params, "train_deep"), section(params, "demo") if "demo" in params else {}
    models = td.get("models") or {}
    if args.model not in models:
        raise ConfigError(f"--model {args.model}: not in params.yaml train_deep.models ({', '.join(models)}).")
    cfg = resolve_config(td.get("common") or {}, models[args.model])
    sections = [(f"train_deep.models.{args.model}", models[args.model]), ("train_deep.common", td.get("common"))]
    for where, sect in sections:  # a typo'd key would train the default silently
        for message in unknown_model_keys(where, sect or {}):
            log.warning("%s", message)
    try:  # a mistyped value (`epochs: ten`) fails here, before any file or TensorFlow, naming the params.yaml key
        check_config(cfg)
    except ConfigError as exc:
        raise locate_param(exc, sections) from None
    tuned = read_json(args.tuned)  # tune_select applied train_deep.use_tuned and found the study, if any
    if tuned.get("best_params"):
        log.info("using tuned params from %s: %s", tuned.get("source"), tuned["best_params"])
        cfg = check_config(apply_tuned(cfg, tuned["best_params"]))
    seed = number(params, "", "seed", 42, whole=True)
    report = read_json(args.ingest_report)
    max_epochs = max_rows = None
    if report.get("synthetic"):  # the demo caps, checked like every number (null / 0 = no cap, as in tune)
        caps = {k: demo.get(k) or 0 for k in ("max_epochs", "max_train_rows")}
        max_epochs = number(caps, "demo", "max_epochs", 0, whole=True, low=0) or None
        max_rows = number(caps, "demo", "max_train_rows", 0, whole=True, low=0) or None
    cap_onednn_isa(cfg)  # before TensorFlow runs a kernel
    start_tensorflow()  # after the cap; filters TF's C++ start-up chatter
    train = load_npz(args.train or train_data(params))
    val = load_npz(args.split / "val.npz")  # model selection on validation only; the test split is for evaluate
    if report.get("synthetic"):
        train = stratified_subsample(train, max_rows, seed)
        log.info("synthetic demo data: at most %s epochs, %d train rows", max_epochs, len(train))

    try:
        m = train_deep_model(args.model, cfg, train, val, seed=seed, ingest_report=report, out_dir=args.out,
                             checkpoint_dir=args.checkpoints,
                             curves_csv=args.curves, max_epochs=max_epochs,
                             tags={"tuned_from": str(tuned.get("source") or "params.yaml"),
                                   # the `dvc exp show` row this run belongs to (DVC sets it under `dvc exp run`)
                                   **({"dvc_exp": os.environ["DVC_EXP_NAME"]} if os.environ.get("DVC_EXP_NAME") else {})})
    except ConfigError as exc:  # name the params.yaml key behind a bad value
        raise locate_param(exc, sections) from None
    epochs = f"{m['epochs_run']} epochs" + (f" (best {m['best_epoch']})" if "best_epoch" in m
                                             else f" over {m['n_members']} members")
    if m.get("swa_used"):
        epochs += f", weight average of the last {m['swa_epochs']} kept"
    if m.get("ema_bn_used"):
        epochs += ", the weight average's own BN statistics kept"
    log.info("%s: val_accuracy %.4f, val_macro_f1 %.4f, %s, %.0f s, %.0f images/s",
             args.model, m["val_accuracy"], m["val_macro_f1"], epochs, m["train_wall_s"], m["images_per_s"])


if __name__ == "__main__":
    run(main)
