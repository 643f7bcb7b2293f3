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
    """Accuracy, macro/weighted F1 and per-class precision/recall/F1, keys prefixed (e.g. `val_`); each figure as
    sklearn's `f1_score` / `precision_recall_fscore_support` (zero_division=0) computes it."""
    cm = confusion(y_true, y_pred)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    # sklearn's macro average: every class in y_true or y_pred. A class predicted but never true scores F1 0 and
    # counts (before, only classes in y_true counted, a kinder figure than sklearn's report on small splits).
    present = (support > 0) | (predicted > 0)
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
