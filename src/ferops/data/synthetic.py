"""Deterministic synthetic demo faces: drawn 48x48 grey faces whose expression depends on the class.

Used when no real dataset is found (the demo pipeline) and by tests. Each class changes the mouth
(curve up/down, open round/wide, lopsided), the brows (angle, height) and the eyes (size); pose,
scale, lighting, contrast and noise vary at random so the task is learnable but not trivial.
"""

from __future__ import annotations

import math
from typing import cast

import cv2
import numpy as np

from ferops.constants import IMG_SIZE, NUM_CLASSES
from ferops.data.io import FerData

# FER2013 class shares (all 35,887 rows): Disgust is rare, Happy the largest class.
CLASS_SHARES: tuple[float, ...] = (0.138, 0.015, 0.143, 0.250, 0.169, 0.112, 0.173)
# Usage shares like the competition file: ~80 % Training, 10 % PublicTest, 10 % PrivateTest.
USAGE_SHARES: dict[str, float] = {"Training": 0.8, "PublicTest": 0.1, "PrivateTest": 0.1}

_S = 2 * IMG_SIZE  # draw at 2x and downsample, so thin strokes are anti-aliased
_SHIFT = 4  # cv2 sub-pixel bits for drawing coordinates
_F = 1 << _SHIFT


def _allocate(n: int, shares: np.ndarray) -> np.ndarray:
    """Split n into integer counts proportional to shares (largest remainder, every share ≥1 if n allows)."""
    raw = shares / shares.sum() * n
    counts = np.floor(raw).astype(int)
    if n >= len(shares):
        counts = np.maximum(counts, 1)
    while counts.sum() > n:
        counts[np.argmax(counts)] -= 1
    order = np.argsort(-(raw - np.floor(raw)), kind="stable")
    i = 0
    while counts.sum() < n:
        counts[order[i % len(order)]] += 1
        i += 1
    return counts


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _F)), int(round(y * _F))


def _ellipse(img: np.ndarray, cx: float, cy: float, ax: float, ay: float, color: float, thickness: int = -1,
             angle: float = 0.0) -> None:
    cv2.ellipse(img, _pt(cx, cy), _pt(max(ax, 0.5), max(ay, 0.5)), angle, 0, 360, int(color), thickness,
                cv2.LINE_AA, _SHIFT)


def _polyline(img: np.ndarray, pts: np.ndarray, color: float, thickness: int) -> None:
    cv2.polylines(img, [np.round(pts * _F).astype(np.int32)], False, int(color), int(thickness), cv2.LINE_AA, _SHIFT)


def _draw_face(c: int, rng: np.random.Generator) -> np.ndarray:
    """One face of class c on a 96x96 canvas (before pose, lighting and noise)."""
    draws = iter(rng.random(48).tolist())  # one batch of uniforms per face: scalar rng calls are slow

    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * next(draws)

    bg = u(20, 130)
    img = np.full((_S, _S), bg, np.uint8)
    skin = u(140, 225)
    ink = skin - u(90, 135)  # features darker than skin, by a varying contrast
    cx, cy = _S / 2 + u(-2, 2), _S / 2 + u(0, 4)
    hw, hh = u(31, 37), u(38, 44)
    if u(0, 1) < 0.5:  # hair: a dark cap behind the head
        _ellipse(img, cx, cy - u(6, 12), hw + u(1, 4), hh, u(10, 70))
    _ellipse(img, cx, cy, hw, hh, skin)
    t = u(0.55, 1.0)  # expression intensity: weak expressions make the task non-trivial

    # Eyes: wide for Fear/Surprise, narrowed for Angry/Disgust.
    eye_h = {0: 2.2, 1: 2.0, 2: 6.0, 5: 6.5}.get(c, 3.8)
    eye_h = eye_h + (3.8 - eye_h) * (1 - t) + u(-0.4, 0.4)
    eye_y, eye_dx, eye_w = cy - u(8, 12), u(12, 15), u(5.5, 7)
    for s in (-1, 1):
        ex = cx + s * eye_dx
        _ellipse(img, ex, eye_y, eye_w, eye_h, skin + 25 if eye_h > 4.5 else ink + 20)
        _ellipse(img, ex, eye_y, eye_w, eye_h, ink, 2)
        _ellipse(img, ex + u(-1, 1), eye_y, 2.2, min(2.2, eye_h), ink)

    # Brows: (inner, outer) height offsets; +y is down.  Angry/Disgust frown, Sad/Fear raise the inner end.
    inner, outer, lift = {0: (6, -3, 0), 1: (3.5, -1, 1), 2: (-4, 2, -3), 4: (-5, 3, -1),
                          5: (-1, -1, -6)}.get(c, (0.0, 0.0, 0.0))
    brow_y = eye_y - u(7, 9) + lift * t
    for s in (-1, 1):
        xi, xo = cx + s * u(4, 6), cx + s * (eye_dx + u(6, 8))
        _polyline(img, np.array([[xi, brow_y + inner * t + u(-0.7, 0.7)], [xo, brow_y + outer * t + u(-0.7, 0.7)]]),
                  ink, (2 if u(0, 1) < 0.5 else 3))

    # Nose: a short stroke; wrinkled (two extra strokes) for Disgust.
    ny = cy + u(6, 10)
    _polyline(img, np.array([[cx - 3, ny], [cx, ny + 2], [cx + 3, ny]]), ink + 30, 2)
    if c == 1:
        for s in (-1, 1):
            _polyline(img, np.array([[cx + s * 3, ny - 8], [cx + s * 6, ny - 4]]), ink + 15, 2)

    # Mouth: a parabola whose corners go up (Happy) or down (Sad, Angry), open for Surprise/Fear, lopsided for Disgust.
    my, mw = cy + u(20, 25), u(20, 28)
    if c in (5, 2):
        ax_, ay_ = (u(7, 10), u(7, 11) * t + 2) if c == 5 else (u(11, 15), u(3, 5) * t + 1.5)
        _ellipse(img, cx + u(-1, 1), my, ax_, ay_, max(ink - 20, 0))
        if c == 2:  # fear: corners pulled down and out
            for s in (-1, 1):
                _polyline(img, np.array([[cx + s * (ax_ - 1), my], [cx + s * (ax_ + 3), my + 3 * t]]), ink, 2)
        return img
    curve = {3: 8.0, 4: -6.5, 0: -2.5, 1: 0.0}.get(c, 0.0) * t + (u(-1.2, 1.2) if c == 6 else u(-0.6, 0.6))
    x = np.linspace(-1, 1, 13)
    y = my - curve * x**2
    if c == 1:  # one corner raised, the other lowered: a sneer
        y = y + (5.5 * t) * x * (1 if u(0, 1) < 0.5 else -1)
    pts = np.stack([cx + x * mw / 2, y], axis=1)
    _polyline(img, pts, ink, (2 if u(0, 1) < 0.5 else 3) + (1 if c == 0 else 0))
    if c == 3 and u(0, 1) < 0.4:  # an open smile: lower lip of a grin
        _polyline(img, np.stack([cx + x * mw / 2.6, my + 2 + curve * 0.4 * (1 - x**2)], axis=1), ink, 2)
    return img


def make_synthetic(n: int, seed: int) -> FerData:
    """n deterministic demo faces (FER2013-like class imbalance and Usage shares); same seed → same bytes."""
    rng = np.random.default_rng(seed)
    counts = _allocate(n, np.asarray(CLASS_SHARES))
    emotion = np.repeat(np.arange(NUM_CLASSES), counts)
    # Usage stratified per class so every split holds every class (Disgust included).
    usage = np.empty(n, dtype=object)
    start = 0
    names = np.array(list(USAGE_SHARES))
    for k in counts:
        parts = _allocate(int(k), np.asarray(list(USAGE_SHARES.values()))) if k >= 3 else np.array([k, 0, 0])
        usage[start:start + k] = rng.permutation(np.repeat(names, parts))
        start += k
    order = rng.permutation(n)
    emotion, usage = emotion[order].astype(np.int8), usage[order].astype(str)

    faces = np.empty((n, IMG_SIZE, IMG_SIZE), np.float32)
    pose = rng.uniform((-12, 0.88, -5, -5), (12, 1.1, 5, 5), size=(n, 4))
    for i in range(n):
        canvas = _draw_face(int(emotion[i]), rng)
        # Pose: small rotation, scale and shift (a face detector's crop is never exact).
        # a float64 2x3 matrix; cv2's stub (MatLike) also allows an integer array, which `+=` a float would not fit
        m = cast(np.ndarray, cv2.getRotationMatrix2D((_S / 2, _S / 2), float(pose[i, 0]), float(pose[i, 1])))
        m[:, 2] += pose[i, 2:]
        canvas = cv2.warpAffine(canvas, m, (_S, _S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        faces[i] = cv2.resize(canvas, (IMG_SIZE, IMG_SIZE), interpolation=cv2.INTER_AREA)
    # Lighting: a linear gradient in a random direction, then contrast and brightness, then sensor noise.
    yy, xx = np.mgrid[0:IMG_SIZE, 0:IMG_SIZE].astype(np.float32) / IMG_SIZE - 0.5
    theta = rng.uniform(0, 2 * math.pi, n).astype(np.float32)[:, None, None]
    gain = rng.uniform(0.0, 0.6, n).astype(np.float32)[:, None, None]
    faces *= 1.0 + gain * (np.cos(theta) * xx + np.sin(theta) * yy)
    contrast = rng.uniform(0.7, 1.15, n).astype(np.float32)[:, None, None]
    shift = rng.uniform(-20, 20, n).astype(np.float32)[:, None, None]
    faces = (faces - 128.0) * contrast + (128.0 + shift)
    faces += rng.standard_normal(faces.shape, dtype=np.float32) * rng.uniform(2.0, 9.0, n).astype(np.float32)[:, None, None]
    pixels = np.clip(np.rint(faces), 0, 255).astype(np.uint8)
    source_id = np.array([f"synthetic_{i}" for i in range(n)])
    return FerData(pixels, emotion, usage, source_id)
