"""Evaluate's error analysis: calibration (reliability bins, ECE), the most confident mistakes, and their pictures.

Only the evaluate stage imports this module: DVC re-runs every stage whose dependencies change, so code shared with
training (metrics.py, plots.py) stays untouched by evaluate-only work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ferops.constants import EMOTIONS, NUM_CLASSES
from ferops.plots import pyplot, save_figure


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


def ece_of_bins(mean_conf: np.ndarray, accuracy: np.ndarray, counts: np.ndarray) -> float:
    """ECE from `calibration_bins`: the count-weighted mean gap between confidence and accuracy (0 = calibrated)."""
    full = counts > 0
    return float((np.abs(mean_conf[full] - accuracy[full]) * counts[full]).sum() / max(1, counts.sum()))


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """ECE of top-class probabilities over `n_bins` equal-width bins."""
    return ece_of_bins(*calibration_bins(y_true, probs, n_bins))


def fit_temperature(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): the T for which softmax(log p / T) has the lowest negative
    log-likelihood on (y_true, probs) — fitted on val. T > 1 softens overconfident probabilities, T < 1 sharpens
    underconfident ones; the predicted class never changes. 1.0 without rows."""
    from scipy.optimize import minimize_scalar

    from ferops.inference import apply_temperature

    y = np.asarray(y_true, dtype=int)
    if len(y) == 0:
        return 1.0
    probs = np.asarray(probs, dtype=np.float64)

    def nll(log_t: float) -> float:
        p = apply_temperature(probs, float(np.exp(log_t)))
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())

    # log T in [log 0.05, log 20]: far outside the ~0.7-1.3 FER2013 models need, and one-dimensional, so bounded
    # Brent finds it in a few dozen evaluations
    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return round(float(np.exp(res.x)), 4)


def mistakes_by_confidence(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Indices of the wrongly predicted rows, most confident first (ties in row order)."""
    probs = np.asarray(probs)
    wrong = np.flatnonzero(probs.argmax(1) != np.asarray(y_true, dtype=int))
    return wrong[np.argsort(-probs.max(1)[wrong], kind="stable")]


def confident_mistakes(y_true: np.ndarray, probs: np.ndarray, per_class: int) -> list[np.ndarray]:
    """Per true class (EMOTIONS order), the indices of its wrongly predicted rows, most confident first, at most
    `per_class` of them."""
    order = mistakes_by_confidence(y_true, probs)
    y = np.asarray(y_true, dtype=int)[order]
    return [order[y == c][:per_class] for c in range(NUM_CLASSES)]


def mistakes_rows(source_id: np.ndarray, y_true: np.ndarray, probs: np.ndarray) -> list[tuple[str, str, str, float, float]]:
    """Every wrongly predicted row, most confident first: (actual, predicted, source id, the predicted class's
    probability, the actual class's probability) — a review list for suspected label noise."""
    y_true, probs = np.asarray(y_true, dtype=int), np.asarray(probs)
    return [(EMOTIONS[y_true[i]], EMOTIONS[int(probs[i].argmax())], str(source_id[i]), round(float(probs[i].max()), 4),
             round(float(probs[i, y_true[i]]), 4)) for i in mistakes_by_confidence(y_true, probs)]


def mistakes_grid(pixels: np.ndarray, y_true: np.ndarray, probs: np.ndarray, path: str | Path, per_class: int = 8,
                  title: str = "") -> Path:
    """One row per true class: its wrongly predicted images, most confident first, each captioned with the
    predicted class and its probability (label noise and look-alike classes show up here first)."""
    plt = pyplot()
    y_true, pred, conf = np.asarray(y_true, dtype=int), np.asarray(probs).argmax(1), np.asarray(probs).max(1)
    fig, axes = plt.subplots(len(EMOTIONS), per_class, figsize=(per_class * 1.0, len(EMOTIONS) * 1.25),
                             squeeze=False)
    for c, (name, wrong) in enumerate(zip(EMOTIONS, confident_mistakes(y_true, probs, per_class))):
        for j in range(per_class):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if j < len(wrong):
                i = wrong[j]
                ax.imshow(pixels[i], cmap="gray", vmin=0, vmax=255)
                ax.set_title(f"{EMOTIONS[pred[i]]} {100 * conf[i]:.0f}%", fontsize=6, pad=2)
        n_class = int((y_true == c).sum())
        axes[c, 0].set_ylabel(f"{name}\n{int(((y_true == c) & (pred != c)).sum())}/{n_class} wrong", fontsize=7)
    fig.subplots_adjust(top=0.93)
    fig.suptitle(title or "Most confident mistakes (row: true class; caption: predicted, probability)", fontsize=9)
    return save_figure(fig, path)


def reliability_diagram(mean_conf: np.ndarray, accuracy: np.ndarray, counts: np.ndarray, path: str | Path,
                        title: str = "") -> Path:
    """Accuracy against mean confidence per bin: on the diagonal is calibrated, above it under-confident, below it
    over-confident; bin counts underneath."""
    plt = pyplot()
    n = len(counts)
    edges = np.linspace(0, 1, n + 1)
    centers, width = (edges[:-1] + edges[1:]) / 2, 1 / n
    full = counts > 0
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(4.6, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    ax.plot(mean_conf[full], accuracy[full], "o-", color="tab:blue", label="model (one point per bin)")
    ax.text(0.05, 0.93, "under-confident", fontsize=7, color="grey", va="top")
    ax.text(0.95, 0.02, "over-confident", fontsize=7, color="grey", ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1, 0.08))
    ax.set_title(title or "Reliability diagram", fontsize=9)
    ax_n.bar(centers, counts, width=width * 0.95, color="grey")
    ax_n.set_xlim(0, 1)
    ax_n.set_xlabel("confidence (top-class probability)")
    ax_n.set_ylabel("images")
    return save_figure(fig, path)


def model_comparison_chart(names: Sequence[str], series: dict[str, Sequence[float | None]], path: str | Path,
                           title: str = "") -> Path:
    """Horizontal grouped bars, one group per model (listed top to bottom), one bar per series, values in %."""
    plt = pyplot()
    k = max(1, len(series))
    y = np.arange(len(names))
    height = 0.8 / k
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(names) * max(1.0, k / 2) + 1.2))
    for i, (label, vals) in enumerate(series.items()):
        pos = y + (i - (k - 1) / 2) * height
        v = np.array([np.nan if x is None else 100 * float(x) for x in vals])
        bars = ax.barh(pos[~np.isnan(v)], v[~np.isnan(v)], height, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=2)
    ax.set_yticks(y, names)
    ax.invert_yaxis()  # the first model on top
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title or "Model comparison", fontsize=9)
    return save_figure(fig, path)
