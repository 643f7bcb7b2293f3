"""Test-time augmentation: the views of a batch (flip, ten-crop, one-pixel shifts) and their averaged probabilities.

What evaluate scores and what a served model answers with; not imported by training, so a change here re-runs
evaluate and register but no training stage.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ferops.constants import IMG_SIZE, NUM_CLASSES, TTA_VIEW_MODES
from ferops.errors import ConfigError, DataError


def _as_input(pixels: np.ndarray) -> np.ndarray:
    x = np.asarray(pixels, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[1:] != (IMG_SIZE, IMG_SIZE, 1):
        raise DataError(f"pixels have shape {x.shape}; expected (N,{IMG_SIZE},{IMG_SIZE}) or (N,{IMG_SIZE},{IMG_SIZE},1).")
    return x


def _view_offsets(tta: str, crop: int) -> list[tuple[int, int]]:
    """(dy, dx) image shifts of a mode's views besides the unshifted one (none without a crop smaller than 48).

    Shifting the 48x48 image moves the model's own centre crop: by ±(48-crop)/2 px it lands on a corner crop
    (ten-crop), by ±1 px on a neighbouring crop (shift); np.roll's wrapped rows fall outside the crop.
    """
    d = (IMG_SIZE - crop) // 2 if crop and crop < IMG_SIZE else 0
    if not d:
        return []
    corners = [(dy, dx) for dy in (-d, d) for dx in (-d, d)]
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    return {"tencrop": corners, "shift": shifts, "all": corners + shifts}.get(tta, [])


def _iter_views(pixels: np.ndarray, tta: str, crop: int):
    if tta not in (*TTA_VIEW_MODES, "all"):
        raise ConfigError(f"tta={tta!r}: use {' | '.join(TTA_VIEW_MODES)}.")
    x = _as_input(pixels)
    if tta == "none":
        yield x
        return
    for shift in [(0, 0)] + _view_offsets(tta, crop):
        b = np.roll(x, shift, axis=(1, 2)) if shift != (0, 0) else x
        yield b
        yield b[:, :, ::-1, :]


def tta_views(pixels: np.ndarray, tta: str = "none", crop: int = 0) -> list[np.ndarray]:
    """The test-time views of a batch: none → [x]; flip → x and its mirror; tencrop → 5 crops x 2 flips;
    shift → the centre crop and its 8 one-pixel neighbours x 2 flips (18 views); `all` → every view of every
    mode once (26), ordered plain, mirror, corners, shifts — `view_indices` picks a mode's views out of it.
    """
    return list(_iter_views(pixels, tta, crop))


def view_indices(tta: str, n_views: int) -> list[int]:
    """Positions of mode `tta`'s views in an `all` view list of `n_views` (2 for a model without a crop layer)."""
    if tta not in TTA_VIEW_MODES:
        raise ConfigError(f"tta={tta!r}: use {' | '.join(TTA_VIEW_MODES)}.")
    if tta == "none":
        return [0]
    if tta == "flip" or n_views == 2:
        return [0, 1]
    idx = {"tencrop": list(range(10)), "shift": [0, 1, *range(10, 26)]}[tta]
    if idx[-1] >= n_views:
        raise DataError(f"tta={tta!r} needs the views of an `all` pass (26); got {n_views} — re-score the model.")
    return idx


def view_probas(model: Any, pixels: np.ndarray, batch_size: int = 512, tta: str = "none") -> list[np.ndarray]:
    """Class probabilities (float64) of each test-time view, in `tta_views` order (`all`: every mode's views,
    predicted once). Views are made one at a time, so only one extra copy of `pixels` is held."""
    from ferops.models.zoo import crop_size

    views = _iter_views(pixels, tta, crop_size(model) if tta in ("tencrop", "shift", "all") else 0)
    return [np.asarray(model.predict(v, batch_size=batch_size, verbose=0), dtype=np.float64) for v in views]


def average_views(probas: list[np.ndarray]) -> np.ndarray:
    """The mean of per-view probabilities, as float32."""
    out = np.zeros_like(probas[0])
    for p in probas:
        out += p
    return (out / len(probas)).astype(np.float32)


def predict_proba(model: Any, pixels: np.ndarray, batch_size: int = 512, tta: str = "none") -> np.ndarray:
    """Class probabilities [N,7] for raw 0..255 pixels, averaged over test-time-augmented views."""
    if len(pixels) == 0:
        return np.zeros((0, NUM_CLASSES), dtype=np.float32)
    return average_views(view_probas(model, pixels, batch_size, tta))
