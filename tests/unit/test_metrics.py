"""classification_metrics against scikit-learn, the reference users compare with."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from ferops.constants import EMOTIONS
from ferops.metrics import classification_metrics, confusion


@pytest.mark.parametrize("case", ["all classes", "a class never true", "a class never predicted", "one class"])
def test_metrics_match_sklearn(case):
    rng = np.random.default_rng(7)
    y_true, y_pred = rng.integers(0, 7, 300), rng.integers(0, 7, 300)
    if case == "a class never true":  # e.g. no Disgust in a small val split, yet the model predicts some
        y_true[y_true == 1] = 3
    elif case == "a class never predicted":
        y_pred[y_pred == 1] = 3
    elif case == "one class":
        y_true[:] = 4
    m = classification_metrics(y_true, y_pred, prefix="val_")
    assert m["val_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["val_macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert m["val_weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted", zero_division=0))
    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=range(7), zero_division=0)
    for i, name in enumerate(EMOTIONS):
        key = name.lower()
        assert (m[f"val_precision_{key}"], m[f"val_recall_{key}"], m[f"val_f1_{key}"]) == pytest.approx((p[i], r[i], f[i]))


def test_confusion_rows_are_true_columns_predicted():
    cm = confusion(np.array([0, 0, 6]), np.array([0, 6, 6]))
    assert cm.shape == (7, 7) and cm[0, 0] == 1 and cm[0, 6] == 1 and cm[6, 6] == 1 and cm.sum() == 3
