"""Offline augmentation and class balancing of the train split (NumPy/OpenCV, vectorised where it matters).

Each op is drawn independently per image with its probability `p`; ops apply in the fixed order of OPS.
The geometric ops (rotate, rescale, center_crop, shift) are composed into ONE affine warp per image, so
an image is interpolated once, however many of them fire.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ferops.constants import EMOTIONS, IMG_SIZE, NUM_CLASSES
from ferops.data.io import FerData
from ferops.errors import ConfigError

# Every op with its strength keys and their defaults (params.yaml `augment.ops` overrides them).
OPS: dict[str, dict[str, float]] = {
    "hflip": {},
    "rotate": {"max_deg": 12.0},
    "shift": {"max_px": 4.0},
    "rescale": {"min": 0.9, "max": 1.1},
    "center_crop": {"size": 42},
    "brightness_contrast": {"brightness": 0.15, "contrast": 0.2},
    "gaussian_blur": {"sigma": 0.8},
    "gaussian_noise": {"std": 6.0},
}
BALANCE_MODES = ("none", "oversample", "augment_minority", "smote")
_GEOMETRIC = ("rotate", "rescale", "center_crop", "shift")
_CHUNK = 4096  # images per augment_batch call in augment_dataset (bounds float32 temporaries)


# The range each strength must lie in: out of range is a typo or a setting that ruins the data (rescale 0 makes
# blank images), so it stops the stage with the key named.
LIMITS: dict[str, tuple[float, float]] = {
    "p": (0.0, 1.0), "max_deg": (0.0, 180.0), "max_px": (0.0, IMG_SIZE / 2), "min": (0.1, 4.0), "max": (0.1, 4.0),
    "size": (1, IMG_SIZE), "brightness": (0.0, 1.0), "contrast": (0.0, 1.0), "sigma": (0.0, 10.0),
    "std": (0.0, 128.0)}


def check_ops(ops: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    """Op specs merged with defaults (an op without `p` is off); unknown ops/keys, or a value that is not a number
    in its LIMITS range, raise a ConfigError naming its params.yaml key."""
    from ferops.config import number_problem

    if ops is not None and not isinstance(ops, dict):
        raise ConfigError(f"augment.ops = {ops!r}: give a mapping of op → settings, e.g. `hflip: {{p: 0.5}}`.")
    out: dict[str, dict[str, float]] = {}
    for name, spec in (ops or {}).items():
        if name not in OPS:
            raise ConfigError(f"augment.ops.{name}: unknown op; choose from {', '.join(OPS)}.")
        if spec is not None and not isinstance(spec, dict):
            raise ConfigError(f"augment.ops.{name} = {spec!r}: give its settings as a mapping, e.g. `{{p: 0.5}}`.")
        spec = dict(spec or {})
        extra = set(spec) - set(OPS[name]) - {"p"}
        if extra:
            raise ConfigError(f"augment.ops.{name}: unknown key(s) {sorted(extra)}; allowed: p, {', '.join(OPS[name]) or '-'}.")
        merged = {"p": spec.get("p", 0.0), **{k: spec.get(k, v) for k, v in OPS[name].items()}}
        for key, value in merged.items():
            low, high = LIMITS[key]
            problem = number_problem(value, low=low, high=high)
            if problem:
                raise ConfigError(f"params.yaml augment.ops.{name}.{key}: {value!r} is not {problem}.")
        out[name] = {k: float(v) for k, v in merged.items()}
    if "rescale" in out and out["rescale"]["min"] > out["rescale"]["max"]:
        raise ConfigError(f"params.yaml augment.ops.rescale: min {out['rescale']['min']} is above max "
                          f"{out['rescale']['max']}.")
    return out


def augment_batch(pixels: np.ndarray, ops: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Randomly augmented copy of uint8[N,48,48] images (same shape/dtype); p=0 everywhere → identical."""
    import cv2

    spec = check_ops(ops)
    x = np.array(pixels, dtype=np.uint8, copy=True)
    n: int  # x.shape's items are Any to mypy: an int n picks rng.random's array overload, not its float one
    n, h, w = x.shape
    if n == 0:
        return x
    # Draw every op's mask and parameters for all images, fixed order: the stream does not depend on which fire.
    fire = {k: rng.random(n) < spec[k]["p"] if k in spec else np.zeros(n, bool) for k in OPS}
    u = {k: rng.uniform(-1.0, 1.0, size=(n, 2)) for k in OPS}

    if fire["hflip"].any():
        x[fire["hflip"]] = x[fire["hflip"]][:, :, ::-1]

    geo = np.zeros(n, bool)
    for k in _GEOMETRIC:
        geo |= fire[k]
    if geo.any():
        angle = np.where(fire["rotate"], u["rotate"][:, 0] * spec.get("rotate", OPS["rotate"]).get("max_deg", 0.0), 0.0)
        rs = spec.get("rescale", {"min": 1.0, "max": 1.0})
        scale = np.where(fire["rescale"], rs["min"] + (u["rescale"][:, 0] + 1) / 2 * (rs["max"] - rs["min"]), 1.0)
        crop = spec.get("center_crop", {"size": float(IMG_SIZE)})["size"]
        if not 0 < crop <= IMG_SIZE:
            raise ConfigError(f"augment.ops.center_crop.size = {crop}: must be in 1..{IMG_SIZE}.")
        scale = scale * np.where(fire["center_crop"], IMG_SIZE / crop, 1.0)  # crop then resize back = zoom in
        max_px = spec.get("shift", {"max_px": 0.0})["max_px"]
        shift = np.where(fire["shift"][:, None], np.round(u["shift"] * max_px), 0.0)
        centre = ((w - 1) / 2.0, (h - 1) / 2.0)
        for i in np.flatnonzero(geo):
            m = cv2.getRotationMatrix2D(centre, float(angle[i]), float(scale[i]))
            m[:, 2] += shift[i]
            x[i] = cv2.warpAffine(x[i], m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)

    photo = fire["brightness_contrast"] | fire["gaussian_blur"] | fire["gaussian_noise"]
    if photo.any():
        idx = np.flatnonzero(photo)
        y = x[idx].astype(np.float32)
        if "brightness_contrast" in spec:
            bc, f = spec["brightness_contrast"], fire["brightness_contrast"][idx]
            c = np.where(f, 1.0 + u["brightness_contrast"][idx, 0] * bc["contrast"], 1.0).astype(np.float32)[:, None, None]
            b = np.where(f, u["brightness_contrast"][idx, 1] * bc["brightness"] * 255.0, 0.0).astype(np.float32)[:, None, None]
            mean = y.mean(axis=(1, 2), keepdims=True)
            y = (y - mean) * c + mean + b  # contrast about each image's mean, then a brightness offset
        if "gaussian_blur" in spec and fire["gaussian_blur"][idx].any():
            from scipy.ndimage import gaussian_filter

            f = fire["gaussian_blur"][idx]
            y[f] = gaussian_filter(y[f], sigma=(0, spec["gaussian_blur"]["sigma"], spec["gaussian_blur"]["sigma"]),
                                   mode="reflect", truncate=3.0)
        if "gaussian_noise" in spec and fire["gaussian_noise"][idx].any():
            f = fire["gaussian_noise"][idx]
            y[f] += rng.standard_normal(y[f].shape, dtype=np.float32) * np.float32(spec["gaussian_noise"]["std"])
        x[idx] = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return x


def augment_many(pixels: np.ndarray, ops: dict[str, Any], rng: np.random.Generator, desc: str = "augment") -> np.ndarray:
    """augment_batch() in chunks with a progress bar (bounded memory for the full train set)."""
    from tqdm.auto import tqdm

    out = np.empty_like(pixels)
    for lo in tqdm(range(0, len(pixels), _CHUNK), desc=desc, unit="chunk", leave=False, disable=len(pixels) <= _CHUNK):
        out[lo:lo + _CHUNK] = augment_batch(pixels[lo:lo + _CHUNK], ops, rng)
    return out


def balance_plan(emotion: np.ndarray, target: float) -> dict[int, int]:
    """Rows to add per class so each present class reaches ceil(target × largest class)."""
    if not 0.0 <= target <= 1.0:
        raise ConfigError(f"augment.balance_target = {target}: must be in [0, 1] (a fraction of the largest class).")
    counts = np.bincount(emotion[emotion >= 0].astype(int), minlength=NUM_CLASSES)
    goal = int(np.ceil(target * counts.max())) if counts.max() else 0
    return {c: goal - int(k) for c, k in enumerate(counts) if 0 < k < goal}


def _pick(idx: np.ndarray, need: int, rng: np.random.Generator) -> np.ndarray:
    """`need` rows from idx: whole passes over a shuffle, then a random remainder (even use of every row)."""
    reps, rest = divmod(need, len(idx))
    return np.concatenate([*(rng.permutation(idx) for _ in range(reps)), rng.choice(idx, size=rest, replace=False)])


def smote_rows(pixels: np.ndarray, need: int, rng: np.random.Generator,
               k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """SMOTE in pixel space: new = x_i + λ (x_nn − x_i), nn among x_i's k nearest same-class images.

    Returns the new images and, per image, the (i, nn) rows it blends (so each can name its two sources)."""
    from sklearn.neighbors import NearestNeighbors

    flat = pixels.reshape(len(pixels), -1).astype(np.float32)
    if len(flat) < 2:  # one image: nothing to interpolate with
        return np.repeat(pixels, need, axis=0), np.zeros((need, 2), np.int64)
    k = min(k, len(flat) - 1)
    nn = NearestNeighbors(n_neighbors=k + 1).fit(flat).kneighbors(flat, return_distance=False)[:, 1:]
    base = rng.integers(0, len(flat), size=need)
    other = nn[base, rng.integers(0, k, size=need)]
    lam = rng.random((need, 1), dtype=np.float32)
    new = flat[base] + lam * (flat[other] - flat[base])
    return (np.clip(np.rint(new), 0, 255).astype(np.uint8).reshape(need, *pixels.shape[1:]),
            np.stack([base, other], axis=1))


def balance_rows(data: FerData, mode: str, target: float, ops: dict[str, Any], rng: np.random.Generator) -> FerData:
    """Extra minority-class rows (duplicates, augmented duplicates or SMOTE samples) up to the target."""
    if mode not in BALANCE_MODES:
        raise ConfigError(f"augment.balance = {mode!r}: choose one of {', '.join(BALANCE_MODES)}.")
    parts = []
    plan = balance_plan(data.emotion, target) if mode != "none" else {}
    for c, need in plan.items():
        idx = np.flatnonzero(data.emotion == c)
        if mode == "smote":
            pix, pairs = smote_rows(data.pixels[idx], need, rng)
            src = data.source_id[idx].astype(str)  # a blend names both its images: "<a>+<b>#smote"
            ids = np.char.add(np.char.add(np.char.add(src[pairs[:, 0]], "+"), src[pairs[:, 1]]), "#smote")
            parts.append(FerData(pix, np.full(need, c, np.int8), data.usage[idx[pairs[:, 0]]], ids))
            continue
        pick = _pick(idx, need, rng)
        rows = data.subset(pick)
        if mode == "augment_minority":
            rows.pixels = augment_many(rows.pixels, ops, rng, desc=f"balance {EMOTIONS[c]}")
        rows.source_id = np.char.add(rows.source_id.astype(str), f"#{mode}")
        parts.append(rows)
    return FerData.concat(parts) if parts else data.subset(np.zeros(len(data), bool))


def augment_dataset(data: FerData, ops: dict[str, Any], copies: int = 1, balance: str = "none",
                    balance_target: float = 0.5, seed: int = 42) -> tuple[FerData, np.ndarray]:
    """Originals + balancing rows, then `copies` augmented versions of them all; returns (data, kind per row).

    kind: 0 original, 1 balancing row, 2 augmented copy. Balancing first keeps the balanced class
    ratios in the output, since every row gets the same number of augmented copies.
    """
    if int(copies) < 0:
        raise ConfigError(f"augment.copies = {copies}: must be 0 or more.")
    rng = np.random.default_rng(seed)
    labeled = data.subset(data.labeled)  # never train on unlabeled rows
    extra = balance_rows(labeled, balance, balance_target, ops, rng)
    base = FerData.concat([labeled, extra])
    kind = [np.zeros(len(labeled), np.int8), np.ones(len(extra), np.int8)]
    parts = [base]
    for j in range(int(copies)):
        aug = FerData(augment_many(base.pixels, ops, rng, desc=f"copy {j + 1}/{copies}"), base.emotion.copy(),
                      base.usage.copy(), np.char.add(base.source_id.astype(str), f"#aug{j + 1}"))
        parts.append(aug)
        kind.append(np.full(len(aug), 2, np.int8))
    return FerData.concat(parts), np.concatenate(kind)


def preview_rows(emotion: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n row indices for the preview: one per class in turn, seeded."""
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(emotion == c))) for c in range(NUM_CLASSES)]
    out: list[int] = []
    while len(out) < n and any(pools):
        for pool in pools:
            if pool and len(out) < n:
                out.append(int(pool.pop()))
    return np.array(out, dtype=int)
