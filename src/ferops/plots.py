"""Pictures people look at: sample grid, class histogram, augmentation preview, curves, confusion matrix.

Every function writes a PNG (DVC and MLflow both show it) and returns its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ferops.constants import EMOTIONS


def pyplot() -> Any:
    """matplotlib.pyplot, headless (Agg) unless a backend was already chosen: a notebook keeps its own."""
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # no display on servers/CI; choosing it later would be too late
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """`fig` as a PNG at `path` (folders made), then closed; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return p


def sample_grid(pixels: np.ndarray, labels: np.ndarray, path: str | Path, per_class: int = 10, seed: int = 0,
                title: str = "") -> Path:
    """A row of random examples per class (blank where a class has none)."""
    plt = pyplot()
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(EMOTIONS), per_class, figsize=(per_class * 0.9, len(EMOTIONS) * 1.0))
    for c, name in enumerate(EMOTIONS):
        idx = np.flatnonzero(labels == c)
        pick: np.ndarray | list[int] = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
        for j in range(per_class):
            ax = axes[c, j]
            ax.axis("off")
            if j < len(pick):
                ax.imshow(pixels[pick[j]], cmap="gray", vmin=0, vmax=255)
        axes[c, 0].set_title(f"{name} ({len(idx)})", fontsize=7, loc="left")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def class_histogram(counts: dict[str, dict[str, int]], path: str | Path, title: str = "Images per class") -> Path:
    """Grouped bars: one group per class, one bar per group key (usage or split)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    groups = list(counts)
    width = 0.8 / max(1, len(groups))
    x = np.arange(len(EMOTIONS))
    for i, g in enumerate(groups):
        vals = [counts[g].get(name, 0) for name in EMOTIONS]
        bars = ax.bar(x + i * width, vals, width, label=g)
        ax.bar_label(bars, fontsize=6)
    ax.set_xticks(x + width * (len(groups) - 1) / 2, EMOTIONS)
    ax.set_ylabel("images")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def augmentation_preview(originals: np.ndarray, augmented: Sequence[np.ndarray], path: str | Path) -> Path:
    """Each row: an original image, then its augmented versions."""
    plt = pyplot()
    n, k = len(originals), len(augmented)
    fig, axes = plt.subplots(n, k + 1, figsize=((k + 1) * 1.1, n * 1.1), squeeze=False)
    for i in range(n):
        row = [originals[i]] + [a[i] for a in augmented]
        for j, img in enumerate(row):
            axes[i, j].imshow(img, cmap="gray", vmin=0, vmax=255)
            axes[i, j].axis("off")
    axes[0, 0].set_title("original", fontsize=7)
    for j in range(1, k + 1):
        axes[0, j].set_title(f"aug {j}", fontsize=7)
    return save_figure(fig, path)


def training_curves(history: Mapping[str, Sequence[float]], path: str | Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, train vs validation (and LR when present)."""
    plt = pyplot()
    has_lr = "lr" in history or "learning_rate" in history
    from matplotlib.ticker import MaxNLocator

    # constrained layout: the suptitle and the LR panel's tick labels otherwise overlap the panels beside them
    fig, axes = plt.subplots(1, 3 if has_lr else 2, figsize=(12 if has_lr else 9, 3.6), layout="constrained")
    for ax in axes:
        # epochs are whole: no tick at 1.5 on a short run, and one tick (1) on a one-epoch run, not 0.945 … 1.05
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in history:
                ax.plot(np.arange(1, len(history[prefix + key]) + 1), history[prefix + key], style,
                        marker=_lone(history[prefix + key]), label=(prefix or "train_") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    if has_lr:
        lr = history["lr"] if "lr" in history else history["learning_rate"]  # has_lr: one of them is there
        axes[2].plot(np.arange(1, len(lr) + 1), lr, marker=_lone(lr))
        axes[2].set_title("learning rate")
        axes[2].set_xlabel("epoch")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def _lone(values: Sequence[float]) -> str | None:
    """A marker for a one-point series (a one-epoch run), which a line alone draws as nothing; else none."""
    return "o" if len(values) == 1 else None


def confusion_matrix_plot(cm: np.ndarray, path: str | Path, title: str = "", normalize: bool = True) -> Path:
    """Confusion matrix heat map, rows = true class; normalised rows show recall on the diagonal."""
    plt = pyplot()
    m = cm.astype(float)
    if normalize:
        m = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5.2))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:.2f}" if normalize else str(int(cm[i, j])), ha="center", va="center",
                    fontsize=7, color="white" if m[i, j] > (0.5 if normalize else m.max() / 2) else "black")
    ax.set_xticks(range(len(EMOTIONS)), EMOTIONS, rotation=45, ha="right")
    ax.set_yticks(range(len(EMOTIONS)), EMOTIONS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "Confusion matrix")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)
