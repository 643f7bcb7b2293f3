"""Ensemble deep-model runs of benchmarks/train.py from their saved per-view probabilities.

    python benchmarks/ensemble.py benchmarks/out/gpu/resnet benchmarks/out/gpu/s7/resnet
    python benchmarks/ensemble.py A B --as-model benchmarks/out/flat   # + the one-model form, scored again

Each directory holds `probas.npz` (val/test probabilities of every test-time view). Members are averaged per
TTA mode; the mode is chosen on val (PublicTest), and test (PrivateTest) is reported for that mode.
`--as-model DIR` also joins the members' `model/model.keras` into one flat model (`ferops.models.zoo.ensemble_model`,
what a train_deep model with `ensemble_seeds` saves), writes DIR/model/model.keras and scores it from the data
(`--data`) as benchmarks/train.py does; it reports how far its view probabilities are from the averaged ones.
Members must share their crop size (the flat model's ten-crop uses the first member's).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def as_model(dirs: list[str], out: Path, data: str) -> dict:
    """The members joined into one model, saved under `out` and scored on val/test (views, TTA on val)."""
    import argparse

    sys.path.insert(0, str(Path(__file__).parent))
    from train import ROOT, read_splits, score_deep

    from ferops.config import load_params
    from ferops.inference import load_keras
    from ferops.models.zoo import ensemble_model

    model = ensemble_model([load_keras(Path(d) / "model" / "model.keras", fold=False) for d in dirs])
    (out / "model").mkdir(parents=True, exist_ok=True)
    model.save(out / "model" / "model.keras")
    parts = read_splits(data)
    scored = score_deep(argparse.Namespace(tta=None), load_params(ROOT / "params.yaml"), load_keras(out / "model" / "model.keras"),
                        parts["val"], parts["test"], out, parts["train"])
    (out / "result.json").write_text(json.dumps({"members": dirs, **scored}, indent=2) + "\n")
    return scored


def main(argv: list[str]) -> dict:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", help="run folders of benchmarks/train.py (probas.npz, model/model.keras)")
    ap.add_argument("--as-model", type=Path, default=None, help="also build, save and score the one-model ensemble here")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013.csv.gz"))
    args = ap.parse_args(argv)
    dirs = args.dirs
    for d in dirs:
        if not (Path(d) / "probas.npz").is_file():
            sys.exit(f"error: {d} holds no probas.npz — pass benchmarks/train.py run folders (<out>/<model>).")
    from ferops.evaluation import accuracy_by_tta, best_tta, tta_probas
    from ferops.metrics import classification_metrics

    runs = [np.load(Path(d) / "probas.npz") for d in dirs]
    y_val, y_test = runs[0]["y_val"], runs[0]["y_test"]
    if any(not (np.array_equal(r["y_val"], y_val) and np.array_equal(r["y_test"], y_test)) for r in runs):
        sys.exit("error: the runs were scored on different val/test rows; ensemble runs of the same data only.")
    views = {split: list(np.mean([r[split] for r in runs], axis=0)) for split in ("val", "test")}
    val_by_tta = accuracy_by_tta(views["val"], y_val)
    tta = best_tta(val_by_tta)
    plain = classification_metrics(y_test, tta_probas(views["test"], "none").argmax(1))
    chosen = classification_metrics(y_test, tta_probas(views["test"], tta).argmax(1))
    out = {"members": dirs, "val_accuracy_by_tta": val_by_tta, "tta": tta, "test_accuracy": plain["accuracy"],
           "test_macro_f1": plain["macro_f1"], "test_accuracy_tta": chosen["accuracy"], "test_macro_f1_tta": chosen["macro_f1"]}
    if args.as_model is not None:
        flat = as_model(dirs, args.as_model, args.data)
        saved = np.load(args.as_model / "probas.npz")
        out["as_model"] = {**{k: flat[k] for k in ("val_accuracy_tta", "tta", "test_accuracy", "test_accuracy_tta")},
                           "max_abs_diff_of_view_probas": float(max(np.abs(saved[s] - np.stack(views[s])).max()
                                                                    for s in ("val", "test")))}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    from ferops.runner import run

    run(lambda: main(sys.argv[1:]))  # a ferops error (missing data) is one `error:` line
