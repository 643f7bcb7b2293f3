"""Train one model of params.yaml on the real FER2013 exactly as the pipeline does; report val and test.

    python benchmarks/train.py --model resnet            # deep model from train_deep.models
    python benchmarks/train.py --model logreg            # baseline from train_baselines.models

Validation (PublicTest) drives early stopping/selection; the test split (PrivateTest) is scored once,
after training. Writes benchmarks/out/<model>/ (model dir + result.json) and its own MLflow store.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fer2013.csv.gz"


def hardware() -> str:
    """A one-line description of the machine (cores, CPU model, GPU if any)."""
    cpu = platform.processor() or "cpu"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"{os.cpu_count()} cores {cpu}" + (f", {len(gpus)} GPU" if gpus else ", no GPU")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    ap.add_argument("--epochs", type=int, default=None, help="override epochs (default: params)")
    ap.add_argument("--tta", default=None, help="test-time augmentation for deep models (default: evaluate.tta)")
    args = ap.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"skip: real data not found at {args.data} (see ../shared/data/README.md)")

    from ferops.runner import tf_environment

    tf_environment()  # as the stages run it (oneDNN on), before TensorFlow is imported
    from ferops.config import load_params, section
    from ferops.data.formats import read_any
    from ferops.data.split import split_dataset
    from ferops.metrics import classification_metrics

    out = Path(args.out) / args.model
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path(args.out).resolve() / 'mlflow.db'}")
    params = load_params(args.params)
    t0 = time.perf_counter()
    data, _ = read_any(args.data)
    parts, _ = split_dataset(data, "usage")
    print(f"data: {', '.join(f'{k}={len(v)}' for k, v in parts.items())} ({time.perf_counter() - t0:.1f}s)", flush=True)
    ingest = {"synthetic": False, "format": "fer2013_csv", "sha256": "benchmark", "source": args.data}
    train, val, test = parts["train"], parts["val"], parts["test"]
    deep = section(params, "train_deep")["models"]
    result: dict = {"model": args.model, "hardware": hardware(), "data": Path(args.data).name,
                    "command": "python " + " ".join(sys.argv)}
    if args.model in deep:
        from ferops.evaluation import best_tta, val_accuracy_by_tta
        from ferops.inference import load_keras
        from ferops.training import predict_proba, resolve_config, train_deep_model

        cfg = resolve_config(params["train_deep"]["common"], deep[args.model])
        if args.epochs:
            cfg["epochs"] = args.epochs
        tta = args.tta or params["evaluate"]["tta"]
        m = train_deep_model(args.model, cfg, train, val, seed=params["seed"], ingest_report=ingest, out_dir=out / "model",
                             checkpoint_dir=out / "checkpoint", verbose=2)
        model = load_keras(out / "model" / "model.keras")
        y_test = test.emotion.astype(int)
        result.update({k: m[k] for k in ("val_accuracy", "val_macro_f1", "epochs_run", "best_epoch", "train_wall_s",
                                         "images_per_s", "n_params")})
        # Every TTA mode on val; `auto` (evaluate's default) takes the best there — never chosen on test.
        result["val_accuracy_by_tta"] = val_accuracy_by_tta(model, val)
        tta = best_tta(result["val_accuracy_by_tta"]) if tta == "auto" else tta
        result["val_accuracy_tta"] = result["val_accuracy_by_tta"][tta]
        # The test split is scored once, after training and selection are finished.
        plain = classification_metrics(y_test, predict_proba(model, test.pixels).argmax(1), prefix="test_")
        with_tta = classification_metrics(y_test, predict_proba(model, test.pixels, tta=tta).argmax(1))
        result.update({"test_accuracy": plain["test_accuracy"], "test_macro_f1": plain["test_macro_f1"],
                       "test_accuracy_tta": with_tta["accuracy"], "test_macro_f1_tta": with_tta["macro_f1"], "tta": tta,
                       "config": cfg})
    else:
        from ferops.models.baselines import fit_with_grid, to_xy

        cfg = section(params, "train_baselines")["models"][args.model]
        (Xtr, ytr), (Xva, yva), (Xte, yte) = to_xy(train), to_xy(val), to_xy(test)
        t1 = time.perf_counter()
        est, grid, best = fit_with_grid(cfg["kind"], cfg, Xtr, ytr, Xva, yva, params["seed"])
        result["train_wall_s"] = round(time.perf_counter() - t1, 1)
        val_m = classification_metrics(yva, est.predict(Xva), prefix="val_")
        test_m = classification_metrics(yte, est.predict(Xte), prefix="test_")
        result.update({"val_accuracy": val_m["val_accuracy"], "val_macro_f1": val_m["val_macro_f1"],
                       "test_accuracy": test_m["test_accuracy"], "test_macro_f1": test_m["test_macro_f1"],
                       "best_params": best, "grid": grid})
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("config", "grid")}, indent=2, default=str))


if __name__ == "__main__":
    main()
