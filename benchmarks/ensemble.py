"""Ensemble deep-model runs of benchmarks/train.py from their saved per-view probabilities.

    python benchmarks/ensemble.py benchmarks/out/gpu/resnet benchmarks/out/gpu/s7/resnet

Each directory holds `probas.npz` (val/test probabilities of every test-time view). Members are averaged per
TTA mode; the mode is chosen on val (PublicTest), and test (PrivateTest) is reported for that mode.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(dirs: list[str]) -> dict:
    if len(dirs) < 1:
        sys.exit(__doc__)
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
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
