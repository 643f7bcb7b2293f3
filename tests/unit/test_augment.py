"""Augmentation invariants: shape/dtype/range, labels, determinism, identity at p=0, balancing modes."""

from __future__ import annotations

import numpy as np
import pytest

from ferops.constants import NUM_CLASSES
from ferops.data.augment import (OPS, augment_batch, augment_dataset, balance_plan, check_ops, preview_rows,
                                 smote_rows)
from ferops.data.io import FerData
from ferops.data.synthetic import make_synthetic
from ferops.errors import ConfigError

ALL_ON = {"hflip": {"p": 0.5}, "rotate": {"p": 0.5, "max_deg": 12}, "shift": {"p": 0.5, "max_px": 4},
          "rescale": {"p": 0.3, "min": 0.9, "max": 1.1}, "center_crop": {"p": 0.2, "size": 42},
          "brightness_contrast": {"p": 0.4, "brightness": 0.15, "contrast": 0.2},
          "gaussian_blur": {"p": 0.15, "sigma": 0.8}, "gaussian_noise": {"p": 0.15, "std": 6.0}}


@pytest.fixture(scope="module")
def data() -> FerData:
    """Synthetic train-like rows (imbalanced like FER2013: Disgust rare)."""
    d = make_synthetic(350, seed=11)
    return d.subset(d.usage == "Training")


def test_shape_dtype_range_and_change(data):
    out = augment_batch(data.pixels, ALL_ON, np.random.default_rng(0))
    assert out.shape == data.pixels.shape and out.dtype == np.uint8
    assert out.min() >= 0 and out.max() <= 255
    assert (out != data.pixels).any(axis=(1, 2)).mean() > 0.8  # most images changed by some op
    assert out is not data.pixels


@pytest.mark.parametrize("op", list(OPS))
def test_each_op_changes_images_and_keeps_range(data, op):
    x = data.pixels[:40]
    out = augment_batch(x, {op: {"p": 1.0}}, np.random.default_rng(1))
    assert out.dtype == np.uint8 and out.shape == x.shape
    assert (out != x).any(axis=(1, 2)).mean() > 0.5, op


def test_deterministic_for_a_seed(data):
    a = augment_batch(data.pixels, ALL_ON, np.random.default_rng(5))
    b = augment_batch(data.pixels, ALL_ON, np.random.default_rng(5))
    c = augment_batch(data.pixels, ALL_ON, np.random.default_rng(6))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_p_zero_is_identity(data):
    off = {k: {**v, "p": 0.0} for k, v in ALL_ON.items()}
    assert np.array_equal(augment_batch(data.pixels, off, np.random.default_rng(0)), data.pixels)
    assert np.array_equal(augment_batch(data.pixels, {}, np.random.default_rng(0)), data.pixels)


def test_hflip_twice_is_identity_and_mirrors(data):
    x = data.pixels[:30]
    once = augment_batch(x, {"hflip": {"p": 1.0}}, np.random.default_rng(0))
    assert np.array_equal(once, x[:, :, ::-1])
    assert np.array_equal(augment_batch(once, {"hflip": {"p": 1.0}}, np.random.default_rng(1)), x)


def test_bad_ops_are_config_errors():
    with pytest.raises(ConfigError, match="unknown op"):
        check_ops({"sharpen": {"p": 0.5}})
    with pytest.raises(ConfigError, match=r"rotate.*unknown key"):
        check_ops({"rotate": {"p": 0.5, "degrees": 3}})
    for ops, words in (({"hflip": {"p": 1.5}}, "augment.ops.hflip.p: 1.5 is not a number ≥ 0 and ≤ 1"),
                       ({"gaussian_blur": {"p": 0.2, "sigma": "abc"}}, "augment.ops.gaussian_blur.sigma: 'abc' is not"),
                       ({"hflip": {"p": "half"}}, "augment.ops.hflip.p: 'half' is not"),
                       ({"rescale": {"p": 1, "min": 0, "max": 0}}, "augment.ops.rescale.min: 0 is not a number ≥ 0.1"),
                       ({"rescale": {"p": 1, "min": 1.5, "max": 0.5}}, "min 1.5 is above max 0.5"),
                       (["hflip"], "give a mapping of op → settings"), ({"hflip": 0.5}, "give its settings as a mapping")):
        with pytest.raises(ConfigError) as err:
            check_ops(ops)
        assert words in str(err.value), (ops, str(err.value))


def test_dataset_copies_preserve_labels_and_originals(data):
    out, kind = augment_dataset(data, ALL_ON, copies=2, seed=3)
    n = len(data)
    assert len(out) == 3 * n and (kind == 0).sum() == n and (kind == 2).sum() == 2 * n
    assert np.array_equal(out.pixels[:n], data.pixels)  # originals first, untouched
    for j in range(3):  # every copy keeps its original's label
        assert np.array_equal(out.emotion[j * n:(j + 1) * n], data.emotion)
    assert out.pixels.dtype == np.uint8 and out.emotion.dtype == np.int8
    again, _ = augment_dataset(data, ALL_ON, copies=2, seed=3)
    assert np.array_equal(out.pixels, again.pixels)


def test_unlabeled_rows_are_never_augmented(data):
    unl = FerData(data.pixels[:5], np.full(5, -1, np.int8), np.full(5, "Test"), np.char.add(data.source_id[:5], "u"))
    out, _ = augment_dataset(FerData.concat([data, unl]), ALL_ON, copies=1, seed=0)
    assert len(out) == 2 * len(data) and (out.emotion >= 0).all()


@pytest.mark.parametrize("mode", ["oversample", "augment_minority", "smote"])
def test_balance_modes_raise_minority_counts(data, mode):
    before = np.bincount(data.emotion, minlength=NUM_CLASSES)
    out, kind = augment_dataset(data, ALL_ON, copies=0, balance=mode, balance_target=0.6, seed=2)
    after = np.bincount(out.emotion, minlength=NUM_CLASSES)
    goal = int(np.ceil(0.6 * before.max()))
    for c in range(NUM_CLASSES):
        assert after[c] == max(before[c], goal) if before[c] else after[c] == 0
    assert after[before.argmin()] > before.min()
    assert (kind == 1).sum() == (after - before).sum()
    extra = out.subset(kind == 1)
    if mode == "smote":  # each blend names its two source rows of the same class
        ids = {str(s): e for s, e in zip(data.source_id, data.emotion)}
        for sid, e in zip(extra.source_id.astype(str), extra.emotion):
            a, b = sid.removesuffix("#smote").split("+")
            assert ids[a] == ids[b] == e and a != b, sid
    if mode == "oversample":  # exact copies of minority rows
        orig = {p.tobytes() for p in data.pixels}
        assert all(p.tobytes() in orig for p in extra.pixels)


def test_balance_target_keeps_ratio_after_copies(data):
    out, _ = augment_dataset(data, ALL_ON, copies=1, balance="oversample", balance_target=1.0, seed=2)
    counts = np.bincount(out.emotion, minlength=NUM_CLASSES)
    assert len(set(counts[counts > 0].tolist())) == 1  # fully balanced, also after the augmented copies


def test_balance_plan_and_bad_target():
    emo = np.array([0] * 10 + [1] * 2 + [2] * 6, np.int8)
    assert balance_plan(emo, 0.5) == {1: 3}
    assert balance_plan(emo, 1.0) == {1: 8, 2: 4}
    with pytest.raises(ConfigError, match="balance_target"):
        balance_plan(emo, 1.5)
    with pytest.raises(ConfigError, match="augment.balance"):
        augment_dataset(make_synthetic(20, 0), {}, balance="undersample")


def test_smote_samples_lie_between_neighbours():
    rng = np.random.default_rng(0)
    a = np.zeros((1, 48, 48), np.uint8)
    b = np.full((1, 48, 48), 200, np.uint8)
    new, pairs = smote_rows(np.concatenate([a, b]), 50, rng)
    assert new.shape == (50, 48, 48) and new.dtype == np.uint8
    assert sorted(map(tuple, np.unique(pairs, axis=0).tolist())) == [(0, 1), (1, 0)]  # each blends the two
    v = new.reshape(50, -1)
    assert (v.min(1) == v.max(1)).all()  # each sample is a uniform blend of the two images
    assert v[:, 0].min() >= 0 and v[:, 0].max() <= 200 and len(np.unique(v[:, 0])) > 10


def test_preview_rows_cover_classes(data):
    rows = preview_rows(data.emotion, 8, seed=0)
    assert len(rows) == 8 and len(set(rows.tolist())) == 8
    assert len(set(data.emotion[rows].tolist())) == min(8, len(set(data.emotion.tolist())))
