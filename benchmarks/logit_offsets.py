"""Does a per-class offset on the log-probabilities, fitted for val accuracy, carry over? (post-hoc, no training)

    python benchmarks/logit_offsets.py benchmarks/out/<run>/resnet [more runs] [--splits 10]

Reads each run's `probas.npz` (benchmarks/train.py: every TTA view's val/test probabilities). Per TTA mode it fits
seven additive offsets by coordinate search on half of val and scores the other half (the honest estimate, over
`--splits` random halves), then fits on all of val and reports the change on test (read once, not used to choose).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ferops.evaluation import tta_probas

GRID = np.linspace(-1.0, 1.0, 41)


def fit_offsets(logp: np.ndarray, y: np.ndarray, sweeps: int = 3) -> np.ndarray:
    """Offsets maximising accuracy of argmax(logp + b), one class at a time, `sweeps` passes."""
    b = np.zeros(logp.shape[1])
    for _ in range(sweeps):
        for c in range(len(b)):
            scores = []
            for g in GRID:
                b[c] = g
                scores.append(((logp + b).argmax(1) == y).mean())
            b[c] = GRID[int(np.argmax(scores))]  # first best: the smallest offset among ties
    return b


def gain(logp: np.ndarray, y: np.ndarray, b: np.ndarray) -> float:
    """Accuracy change in points from adding offsets `b`."""
    return 100.0 * float(((logp + b).argmax(1) == y).mean() - (logp.argmax(1) == y).mean())


def study(run: Path, mode: str, splits: int) -> dict:
    d = np.load(run / "probas.npz")
    val, test = (np.log(tta_probas(list(d[s]), mode) + 1e-9) for s in ("val", "test"))
    yv, yt = d["y_val"], d["y_test"]
    rng, held_out = np.random.default_rng(0), []
    for _ in range(splits):
        idx = rng.permutation(len(yv))
        fit, score = idx[: len(yv) // 2], idx[len(yv) // 2:]
        held_out.append(gain(val[score], yv[score], fit_offsets(val[fit], yv[fit])))
    b = fit_offsets(val, yv)
    return {"run": str(run), "tta": mode, "val_half_gain_mean": round(float(np.mean(held_out)), 2),
            "val_half_gain_sd": round(float(np.std(held_out)), 2), "val_fit_gain": round(gain(val, yv, b), 2),
            "test_gain": round(gain(test, yt, b), 2), "offsets": [round(float(x), 2) for x in b]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="folders holding probas.npz")
    ap.add_argument("--modes", nargs="+", default=["none", "tencrop"])
    ap.add_argument("--splits", type=int, default=10, help="random val halves for the held-out estimate")
    args = ap.parse_args()
    for run in args.runs:
        if not (run / "probas.npz").is_file():
            sys.exit(f"error: {run} holds no probas.npz — pass benchmarks/train.py run folders (<out>/<model>).")
    for run in args.runs:
        for mode in args.modes:
            print(json.dumps(study(run, mode, args.splits)))


if __name__ == "__main__":
    main()
