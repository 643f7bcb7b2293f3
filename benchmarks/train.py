"""Train one model of params.yaml on the real FER2013 exactly as the pipeline does; report val and test.

    python benchmarks/train.py --model resnet            # deep model from train_deep.models
    python benchmarks/train.py --model logreg            # baseline from train_baselines.models
    KERAS_BACKEND=jax python benchmarks/train.py --model resnet --profile profiles/gpu.yaml \
        --data .gpu/fer2013.npz.xz --no-mlflow          # GPU recipe on a machine without TensorFlow/MLflow
    python benchmarks/train.py --model resnet --rescore  # score benchmarks/out/resnet again (new TTA modes)

Validation (PublicTest) drives early stopping/selection; the test split (PrivateTest) is scored once,
after training. Writes benchmarks/out/<model>/ (model dir + result.json + probas.npz, the val/test
probabilities of every test-time view of every TTA mode, for ensembles) and its own MLflow store.
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
    import subprocess

    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30, check=False).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        gpus = []
    gpus = [g.strip() for g in gpus if g.strip()]
    return f"{os.cpu_count()} cores {cpu}" + (f", {len(gpus)}x {gpus[0]}" if gpus else ", no GPU")


def read_splits(path: str) -> dict:
    """{train, val, test} from a FER2013 CSV (any format `ingest` reads) or a file of benchmarks/pack_data.py."""
    if str(path).endswith(".npz.xz"):
        sys.path.insert(0, str(Path(__file__).parent))
        from pack_data import unpack

        return unpack(path)
    from ferops.data.formats import read_any
    from ferops.data.split import split_dataset

    data, _ = read_any(path)
    return split_dataset(data, "usage")[0]


def train_deep(args, params: dict, cfg: dict, train, val, test, ingest: dict, out: Path) -> dict:
    """Train a deep model (its resolved config) as train_deep does, pick its TTA mode on val, then score test once."""
    import keras

    from ferops.training import AVERAGE_METRICS, average_metrics, fit_deep, train_deep_model

    if args.epochs:
        cfg["epochs"] = args.epochs
    result: dict = {"keras_backend": keras.backend.backend()}
    if args.no_mlflow:
        from ferops.metrics import classification_metrics

        fit = fit_deep(cfg, train, val, params["seed"], verbose=2, name=args.model)
        model, res = fit.model, fit.members[0]
        val_m = classification_metrics(val.emotion.astype(int), fit.val_proba.argmax(1), prefix="val_")
        result.update({"val_accuracy": val_m["val_accuracy"], "val_macro_f1": val_m["val_macro_f1"],
                       "epochs_run": fit.epochs_run, "train_wall_s": round(fit.wall_s, 1),
                       "images_per_s": round(fit.images_per_s, 1), "n_params": int(model.count_params()),
                       "precision": res.precision, "history": fit.history})
        if len(fit.members) == 1:
            result["best_epoch"] = res.best_epoch
            result.update(average_metrics(res))
        else:
            result["members"] = [{"seed": s, "val_accuracy": r.val_accuracy, "epochs_run": r.epochs_run,
                                  "best_epoch": r.best_epoch} for s, r in zip(fit.seeds, fit.members)]
    else:
        from ferops.inference import load_keras

        m = train_deep_model(args.model, cfg, train, val, seed=params["seed"], ingest_report=ingest,
                             out_dir=out / "model", checkpoint_dir=out / "checkpoint", verbose=2)
        model = load_keras(out / "model" / "model.keras")
        result.update({k: m[k] for k in ("val_accuracy", "val_macro_f1", "epochs_run", "best_epoch", "train_wall_s",
                                         "images_per_s", "n_params", "n_members", *AVERAGE_METRICS) if k in m})
    result.update(score_deep(args, params, model, val, test, out, train))
    result["config"] = cfg
    return result


def score_deep(args, params: dict, model, val, test, out: Path, train) -> dict:
    """Every TTA mode on val, the mode chosen there, then test scored plain and with that mode, on all test images
    and on those that are no copy of a train image (`*_unseen`, as evaluate); saves probas.npz."""
    import numpy as np

    from ferops.evaluation import accuracy_by_tta, best_tta, score, seen_in, tta_probas
    from ferops.metrics import classification_metrics
    from ferops.tta import view_probas

    result: dict = {}
    # Every TTA mode on val; `auto` (evaluate's default) takes the best there — never chosen on test.
    y_val, y_test = val.emotion.astype(int), test.emotion.astype(int)
    val_views = view_probas(model, val.pixels, tta="all")
    result["val_accuracy_by_tta"] = accuracy_by_tta(val_views, y_val)
    tta = args.tta or params["evaluate"]["tta"]
    tta = best_tta(result["val_accuracy_by_tta"]) if tta == "auto" else tta
    result["val_accuracy_tta"] = result["val_accuracy_by_tta"][tta]
    # The test split is scored once, after training and selection are finished.
    test_views = view_probas(model, test.pixels, tta="all")
    plain = classification_metrics(y_test, test_views[0].argmax(1), prefix="test_")
    with_tta = classification_metrics(y_test, tta_probas(test_views, tta).argmax(1))
    np.savez_compressed(out / "probas.npz", val=np.stack(val_views).astype(np.float32),
                        test=np.stack(test_views).astype(np.float32), y_val=y_val, y_test=y_test)
    result.update({"test_accuracy": plain["test_accuracy"], "test_macro_f1": plain["test_macro_f1"],
                   "test_accuracy_tta": with_tta["accuracy"], "test_macro_f1_tta": with_tta["macro_f1"], "tta": tta})
    unseen = score(y_test, test_views[0], tta_probas(test_views, tta), seen_in(test.pixels, train.pixels))
    result.update({k: v for k, v in unseen.items() if k.endswith("_unseen") or k == "test_n_seen"})
    return result


def rescore(args, params: dict, train, val, test, out: Path) -> dict:
    """Score an already trained run again (e.g. after a TTA mode was added): model and training figures are kept,
    the TTA mode is re-chosen on val, test is scored plain and with it; the previous figures stay under `previous`."""
    from ferops.inference import load_keras

    path = out / "result.json"
    if not (out / "model" / "model.keras").exists() or not path.exists():
        sys.exit(f"error: {out} holds no trained run (model/model.keras + result.json); train it first.")
    result = json.loads(path.read_text())
    scored = score_deep(args, params, load_keras(out / "model" / "model.keras"), val, test, out, train)
    result["previous"] = {k: result.get(k) for k in scored}
    result.update(scored, rescore_command="python " + " ".join(sys.argv))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    ap.add_argument("--epochs", type=int, default=None, help="override epochs (default: params)")
    ap.add_argument("--tta", default=None, help="test-time augmentation for deep models (default: evaluate.tta)")
    ap.add_argument("--profile", default=None, help="params overrides merged over --params (e.g. profiles/gpu.yaml)")
    ap.add_argument("--seed", type=int, default=None, help="override params' seed")
    ap.add_argument("--rescore", action="store_true",
                    help="deep models: score the run already in --out again (TTA chosen on val) without training")
    ap.add_argument("--no-mlflow", action="store_true",
                    help="deep models: train without MLflow and without writing the model directory")
    args = ap.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"skip: real data not found at {args.data} (put fer2013.csv.gz there, or pass --data)")

    from ferops.runner import cap_onednn_isa, start_tensorflow, tf_environment

    tf_environment()  # as the stages run it (oneDNN on), before TensorFlow is imported
    from ferops.config import deep_merge, load_params, section
    from ferops.metrics import classification_metrics

    params = load_params(args.params)
    if args.profile:
        params = deep_merge(params, load_params(args.profile))
    if args.seed is not None:
        params["seed"] = args.seed
    deep = section(params, "train_deep")["models"]
    baselines = section(params, "train_baselines")["models"]
    if args.model not in deep and args.model not in baselines and not args.rescore:
        sys.exit(f"error: --model {args.model}: not a model of the params ({', '.join([*deep, *baselines])})")
    out = Path(args.out) / args.model
    if not args.rescore:  # --rescore reads a run already there (and says so when there is none)
        out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path(args.out).resolve() / 'mlflow.db'}")
    t0 = time.perf_counter()
    parts = read_splits(args.data)
    print(f"data: {', '.join(f'{k}={len(v)}' for k, v in parts.items())} ({time.perf_counter() - t0:.1f}s)", flush=True)
    ingest = {"synthetic": False, "format": "fer2013_csv", "sha256": "benchmark", "source": args.data}
    train, val, test = parts["train"], parts["val"], parts["test"]
    if args.model in deep:
        from ferops.training import resolve_config

        deep_cfg = resolve_config(section(params, "train_deep").get("common") or {}, deep[args.model])
        cap_onednn_isa(deep_cfg)  # as the stage: before TF runs a kernel
        start_tensorflow()  # after the cap, as the stage; filters TF's C++ start-up chatter
    result: dict = {"model": args.model, "hardware": hardware(), "data": Path(args.data).name,
                    "command": "python " + " ".join(sys.argv), "seed": params["seed"]}
    if args.rescore:  # any earlier deep run in --out/<model>, also one trained with its own --params
        result = rescore(args, params, train, val, test, out)
    elif args.model in deep:
        result.update(train_deep(args, params, deep_cfg, train, val, test, ingest, out))
    else:
        from ferops.models.baselines import fit_with_grid, to_xy

        cfg = baselines[args.model]
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
    print(json.dumps({k: v for k, v in result.items() if k not in ("config", "grid", "history", "members")}, indent=2, default=str))


if __name__ == "__main__":
    from ferops.runner import run

    run(main)  # a ferops error (missing model, data or store) is one `error:` line
