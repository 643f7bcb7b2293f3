"""Pure classification metrics shared by training (validation) and evaluate (test)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ferops.constants import EMOTIONS, NUM_CLASSES


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """7x7 confusion matrix, rows = true class, columns = predicted class."""
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return cm


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, prefix: str = "") -> dict[str, Any]:
    """Accuracy, macro/weighted F1 and per-class precision/recall/F1, keys prefixed (e.g. `val_`)."""
    cm = confusion(y_true, y_pred)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    present = support > 0
    out: dict[str, Any] = {
        f"{prefix}accuracy": float(tp.sum() / max(1, cm.sum())),
        f"{prefix}macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        f"{prefix}weighted_f1": float((f1 * support).sum() / max(1.0, support.sum())),
    }
    for i, name in enumerate(EMOTIONS):
        key = name.lower()
        out[f"{prefix}precision_{key}"] = float(precision[i])
        out[f"{prefix}recall_{key}"] = float(recall[i])
        out[f"{prefix}f1_{key}"] = float(f1[i])
    return out


def calibration_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-class confidence in equal-width bins: per bin the mean confidence, the accuracy and the count.

    Empty bins hold NaN confidence/accuracy and count 0.
    """
    probs = np.asarray(probs, dtype=np.float64)
    conf, hit = probs.max(1), (probs.argmax(1) == np.asarray(y_true, dtype=int)).astype(np.float64)
    # a confidence of exactly 1.0 belongs to the last bin, not to an 11th
    b = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(b, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(b, weights=conf, minlength=n_bins) / counts
        acc = np.bincount(b, weights=hit, minlength=n_bins) / counts
    return mean_conf, acc, counts


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over the bins (0 = calibrated)."""
    mean_conf, acc, counts = calibration_bins(y_true, probs, n_bins)
    full = counts > 0
    return float((np.abs(mean_conf[full] - acc[full]) * counts[full]).sum() / max(1, counts.sum()))


def confident_mistakes(y_true: np.ndarray, probs: np.ndarray, per_class: int) -> list[np.ndarray]:
    """Per true class (EMOTIONS order), the indices of its wrongly predicted rows, most confident first, at most
    `per_class` of them."""
    y_true, probs = np.asarray(y_true, dtype=int), np.asarray(probs)
    pred, conf = probs.argmax(1), probs.max(1)
    out = []
    for c in range(NUM_CLASSES):
        wrong = np.flatnonzero((y_true == c) & (pred != c))
        out.append(wrong[np.argsort(-conf[wrong], kind="stable")][:per_class])
    return out
