"""Train/val/test/predict split (competition usage or stratified fractions) with an exact-duplicate leakage check.

Duplicate policy (`split.duplicates`):
  report  keep every row; list the duplicate groups in the report.
  drop    remove leakage: a val/test row whose exact image already occurs in an earlier split
          (priority train > val > test) is dropped, so the train copy is kept and no image is scored
          that was trained on. Within-split duplicates and predict rows are never dropped (predict
          rows make up the submission; duplicates inside train only re-weight an image).
  fail    refuse to split when any image occurs in more than one of train/val/test.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np

from ferops.constants import NUM_CLASSES, SPLITS, UNLABELED, USAGE_TO_SPLIT
from ferops.data.io import FerData, class_counts
from ferops.errors import ConfigError, DataError

log = logging.getLogger("ferops.split")

STRATEGIES = ("usage", "stratified")
DUPLICATE_MODES = ("report", "drop", "fail")
PREDICT_USAGES = ("Test", "Unlabeled")  # usages of prediction-only rows (e.g. Kaggle test.csv)
_PRIORITY = {name: i for i, name in enumerate(SPLITS)}  # train < val < test < predict: earlier split keeps the image


def image_hashes(pixels: np.ndarray) -> list[str]:
    """Hex digest of each image's raw bytes (rows of any array shape [N, ...]): equal images ⇔ equal hash."""
    flat = np.ascontiguousarray(pixels).reshape(len(pixels), -1)
    return [hashlib.blake2b(row.tobytes(), digest_size=12).hexdigest() for row in flat]


def assign_usage(data: FerData) -> np.ndarray:
    """Split name per row from the competition usage; unlabeled/prediction rows → predict."""
    out = np.array([USAGE_TO_SPLIT.get(u, "") for u in data.usage], dtype=object)
    out[(data.emotion == UNLABELED) | np.isin(data.usage, PREDICT_USAGES)] = "predict"
    bad = np.flatnonzero(out == "")
    if len(bad):
        values = sorted(set(data.usage[bad].tolist()))
        raise DataError(
            f"{len(bad)} labeled row(s) have a usage the `usage` split strategy does not know: {values} "
            f"(e.g. rows {bad[:10].tolist()}). It needs {', '.join(USAGE_TO_SPLIT)}. "
            "Fix: set `split.strategy: stratified` in params.yaml for data without competition usage, "
            "or correct the Usage column of the source.")
    return out.astype(str)


def carve_val(splits: np.ndarray, emotion: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Move a seeded, per-class `fraction` of train rows to val (for usage data without PublicTest rows)."""
    out = splits.astype(object).copy()
    rng = np.random.default_rng(seed)
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero((out == "train") & (emotion == c)))
        out[idx[: int(round(fraction * len(idx)))]] = "val"
    return out.astype(str)


def assign_stratified(data: FerData, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Split name per row: per class, a seeded shuffle cut at the cumulative fractions; unlabeled → predict."""
    fr = check_fractions(fractions)
    names = ("train", "val", "test")
    out = np.full(len(data), "predict", dtype=object)
    rng = np.random.default_rng(seed)
    cum = np.cumsum([fr[k] for k in names])
    for c in range(NUM_CLASSES):
        idx = rng.permutation(np.flatnonzero(data.emotion == c))
        cuts = np.round(cum * len(idx)).astype(int)  # cumulative rounding: counts sum exactly to the class size
        for name, lo, hi in zip(names, np.r_[0, cuts[:-1]], cuts):
            out[idx[lo:hi]] = name
    return out.astype(str)


def check_fractions(fractions: dict[str, float]) -> dict[str, float]:
    """train/val/test fractions, each in [0,1] and summing to 1, else a ConfigError naming the fix."""
    try:
        fr = {k: float(fractions.get(k, 0.0)) for k in ("train", "val", "test")}
    except (TypeError, ValueError, AttributeError):
        raise ConfigError(f"split.fractions must map train/val/test to numbers, got {fractions!r}") from None
    extra = set(fractions) - set(fr)
    if extra or any(not 0 <= v <= 1 for v in fr.values()) or abs(sum(fr.values()) - 1) > 1e-6:
        raise ConfigError(f"split.fractions = {dict(fractions)}: need keys train/val/test in [0,1] summing to 1 "
                          "(e.g. {train: 0.8, val: 0.1, test: 0.1}).")
    return fr


def duplicate_groups(hashes: list[str] | np.ndarray, splits: np.ndarray, emotion: np.ndarray,
                     source_id: np.ndarray | None = None) -> dict[str, Any]:
    """Exact duplicates: groups spanning splits (with pair counts), within-split copies, conflicting labels; examples
    name their rows by index and, given `source_id`, by source row or image path."""
    h = np.asarray(hashes)
    _, inv, counts = np.unique(h, return_inverse=True, return_counts=True)
    dup_rows = np.flatnonzero(counts[inv] > 1)
    groups: dict[int, list[int]] = {}
    for r in dup_rows:
        groups.setdefault(int(inv[r]), []).append(int(r))
    cross, conflict = [], 0
    examples: list[dict[str, Any]] = []
    pairs: dict[str, int] = {}
    within = {s: {"groups": 0, "extra_copies": 0} for s in SPLITS}
    for rows in groups.values():
        in_splits = sorted({str(splits[r]) for r in rows}, key=_PRIORITY.__getitem__)
        for s in in_splits:
            k = sum(1 for r in rows if splits[r] == s)
            if k > 1:
                within[s]["groups"] += 1
                within[s]["extra_copies"] += k - 1
        labels = {int(emotion[r]) for r in rows if emotion[r] != UNLABELED}
        conflict += len(labels) > 1
        if len(in_splits) > 1:
            cross.append(rows)
            for i, a in enumerate(in_splits):
                for b in in_splits[i + 1:]:
                    pairs[f"{a}-{b}"] = pairs.get(f"{a}-{b}", 0) + 1
            if len(examples) < 20:
                examples.append({"rows": rows, "splits": [str(splits[r]) for r in rows],
                                 "labels": [int(emotion[r]) for r in rows],
                                 **({"source_ids": [str(source_id[r]) for r in rows]} if source_id is not None else {})})
    return {
        "groups": len(groups),
        "rows_in_groups": int(len(dup_rows)),
        "cross_split_groups": len(cross),
        "cross_split_rows": sum(len(g) for g in cross),
        "cross_split_pairs": dict(sorted(pairs.items())),
        "within_split": within,
        "conflicting_label_groups": int(conflict),
        "examples": examples,
    }


def leakage_drop_mask(hashes: list[str] | np.ndarray, splits: np.ndarray) -> np.ndarray:
    """True for val/test rows whose image already occurs in an earlier split (train > val > test)."""
    seen: dict[str, int] = {}
    for hsh, s in zip(hashes, splits):  # earliest split holding each image
        p = _PRIORITY[str(s)]
        if p < seen.get(hsh, len(SPLITS)):
            seen[hsh] = p
    pri = np.array([_PRIORITY[str(s)] for s in splits], dtype=int)
    first = np.array([seen[x] for x in hashes], dtype=int)
    return (pri > first) & np.isin(splits, ("val", "test"))


def split_dataset(data: FerData, strategy: str = "usage", fractions: dict[str, float] | None = None,
                  duplicates: str = "report", seed: int = 42, val_from_train: float = 0.1, drop_blank: bool = False,
                  ) -> tuple[dict[str, FerData], dict[str, Any]]:
    """Split into train/val/test/predict, handle exact duplicates per `duplicates` and, with `drop_blank`, leave out
    labeled constant (blank) images, which carry no face (FER2013 has 12); returns (parts, report)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"split.strategy = {strategy!r}: choose one of {', '.join(STRATEGIES)}.")
    if duplicates not in DUPLICATE_MODES:
        raise ConfigError(f"split.duplicates = {duplicates!r}: choose one of {', '.join(DUPLICATE_MODES)}.")
    requested = strategy
    lab = data.emotion != UNLABELED
    if strategy == "usage" and lab.any() and set(data.usage[lab].tolist()) <= {"Unknown"}:
        # No labeled row says where it belongs (e.g. Kaggle train.csv + unlabeled test.csv): `usage` has nothing to
        # go by, so split by class instead of stopping (documented: a notice, not a warning).
        log.info("no labeled row has a competition usage (Training/PublicTest/PrivateTest): splitting with the "
                    "`stratified` strategy (split.fractions) instead of `usage`")
        strategy = "stratified"
    fr = check_fractions(fractions or {"train": 0.8, "val": 0.1, "test": 0.1}) if strategy == "stratified" else None
    splits = assign_usage(data) if fr is None else assign_stratified(data, fr, seed)
    carved, public = 0, bool((splits == "val").any())
    if fr is None and not public and (splits == "train").any() and val_from_train > 0:
        # e.g. image folders train/ + test/ without PublicTest: validation must never come from test.
        splits = carve_val(splits, data.emotion, val_from_train, seed)
        carved = int((splits == "val").sum())
    hashes = image_hashes(data.pixels)
    dup = duplicate_groups(hashes, splits, data.emotion, data.source_id)
    leak = {k: v for k, v in dup["cross_split_pairs"].items() if "predict" not in k}
    if duplicates == "fail" and leak:
        ex = next((e for e in dup["examples"] if len(set(e["splits"]) - {"predict"}) > 1), None)
        if ex is None:  # the report's examples (the first 20 groups across splits) can all be copies in predict
            rows_of: dict[str, list[int]] = {}
            for r, hsh in enumerate(hashes):
                rows_of.setdefault(hsh, []).append(r)
            rows = next(g for g in rows_of.values() if len({str(splits[r]) for r in g} - {"predict"}) > 1)
            ex = {"source_ids": [str(data.source_id[r]) for r in rows], "splits": [str(splits[r]) for r in rows]}
        where = f", e.g. {ex['source_ids']} in {ex['splits']}"
        raise DataError(
            f"exact-duplicate images occur in more than one split ({leak} groups per split pair){where}. "
            "Fix: set `split.duplicates: drop` to drop the "
            "val/test copies, or `report` to keep them, or de-duplicate the source.")
    keep = np.ones(len(data), dtype=bool)
    if duplicates == "drop":
        keep &= ~leakage_drop_mask(hashes, splits)
    dup["mode"] = duplicates
    dup["dropped"] = {s: int(((splits == s) & ~keep).sum()) for s in SPLITS}
    flat = data.pixels.reshape(len(data), -1)
    blank = (flat.min(axis=1) == flat.max(axis=1)) & lab if len(data) else np.zeros(0, bool)
    if drop_blank:
        keep &= ~blank
    parts = {s: data.subset((splits == s) & keep) for s in SPLITS}
    empty = [s for s in ("train", "val", "test") if len(parts[s]) == 0]
    if empty and lab.any():  # evaluate (test) or selection (val) would fail hours later, after training
        if fr is not None:  # already stratified: the fractions (rounded per class) left the split without rows
            fix = (f"raise {' and '.join(f'split.fractions.{s} (now {fr[s]:g})' for s in empty)}: each class's "
                   "share is rounded to whole rows, so a small fraction of a small set can leave none")
        else:  # the usage each empty split is made from (val: also carved from train when there is no PublicTest)
            add = {"train": "add Training rows (image folders: a train/ folder)",
                   "val": (f"raise split.val_from_train (now {val_from_train:g}), the share of each class's train "
                           "rows moved to val, rounded to whole rows, or add PublicTest rows (image folders: a val/ "
                           "folder)" if len(parts["train"]) and not public else "add PublicTest rows (image folders: a val/ folder)"),
                   "test": "add PrivateTest rows (image folders: a test/ folder)"}
            fix = "; ".join(add[s] for s in empty) + "; or set `split.strategy: stratified` (split.fractions)"
        dropped = [f"{dup['dropped'][s]} {s}" for s in empty if dup["dropped"][s]]
        if dropped:  # the rows were there: `drop` removed them as copies of images in an earlier split
            fix = (f"`split.duplicates: drop` removed {' and '.join(dropped)} row(s), copies of images in an earlier "
                   f"split: `report` keeps them; or {fix}")
        raise DataError(f"the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty "
                        f"({strategy} strategy: {', '.join(f'{k} {int((splits == k).sum())}' for k in SPLITS)}). "
                        f"Fix: {fix}.")
    report = {
        "strategy": strategy,
        "strategy_requested": requested,
        "fractions": fr,
        "seed": seed if strategy == "stratified" or carved else None,
        "n_in": len(data),
        "val_carved_from_train": carved,
        "blank": {"found": int(blank.sum()), "dropped": bool(drop_blank),
                  "source_ids": data.source_id[blank][:50].astype(str).tolist()},
        "n": {s: len(p) for s, p in parts.items()},
        "per_class": {s: class_counts(p.emotion) for s, p in parts.items() if s != "predict"},
        "duplicates": dup,
    }
    return parts, report


def stratified_subsample(data: FerData, n: int | None, seed: int) -> FerData:
    """The labeled rows, cut to n with every class kept in proportion (largest remainder; seeded)."""
    lab = data.subset(data.labeled)
    if n is None or n >= len(lab):
        return lab
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(lab.emotion, return_counts=True)
    exact = counts / counts.sum() * n
    quota = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - quota))[: n - quota.sum()]:
        quota[i] += 1
    idx = np.concatenate([rng.choice(np.flatnonzero(lab.emotion == c), size=q, replace=False)
                          for c, q in zip(classes, quota, strict=True)])
    return lab.subset(np.sort(idx))
