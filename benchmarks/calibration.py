"""Temperature scaling, measured on saved predictions: what evaluate's calibration does to each TTA mode's ECE.

    python benchmarks/calibration.py benchmarks/out/resnet [more run folders ...]

Reads the val and test views that `benchmarks/train.py` saves (probas.npz: 26 views per face, as evaluate predicts
them), fits one temperature per TTA mode on val with `ferops.diagnostics.fit_temperature` (what the evaluate stage
does) and prints, per run and mode, val accuracy, the temperature, and the ECE and negative log-likelihood on val and
on test before and after scaling. Calibration never changes a label, so no accuracy moves; test only measures it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def nll(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="benchmarks/train.py run folders (<out>/<model>) holding probas.npz")
    args = ap.parse_args()
    for run in args.runs:  # every one before the first is read
        if not (run / "probas.npz").is_file():
            sys.exit(f"error: {run} holds no probas.npz — pass benchmarks/train.py run folders (<out>/<model>).")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from ferops.diagnostics import expected_calibration_error as ece
    from ferops.diagnostics import fit_temperature
    from ferops.evaluation import TTA_MODES, tta_probas
    from ferops.inference import apply_temperature

    print(f"{'run':<40} {'mode':<8} {'val acc':>7} {'T':>6}  {'val ECE raw→scaled':>18}  "
          f"{'test ECE raw→scaled':>19}  {'test NLL raw→scaled':>19}")
    for run in args.runs:
        z = np.load(run / "probas.npz")
        val_views, test_views, y_val, y_test = list(z["val"]), list(z["test"]), z["y_val"], z["y_test"]
        for mode in TTA_MODES:
            pv, pt = tta_probas(val_views, mode), tta_probas(test_views, mode)
            t = fit_temperature(y_val, pv)
            sv, st = apply_temperature(pv, t), apply_temperature(pt, t)
            print(f"{str(run)[-40:]:<40} {mode:<8} {100 * (pv.argmax(1) == y_val).mean():>7.2f} {t:>6.3f}  "
                  f"{100 * ece(y_val, pv):>8.1f} → {100 * ece(y_val, sv):>5.1f}    "
                  f"{100 * ece(y_test, pt):>8.1f} → {100 * ece(y_test, st):>5.1f}    "
                  f"{nll(y_test, pt):>8.3f} → {nll(y_test, st):.3f}")


if __name__ == "__main__":
    main()
