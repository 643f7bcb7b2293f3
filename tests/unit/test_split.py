"""Split invariants: no row lost or duplicated, unlabeled → predict, stratified fractions, duplicate modes."""

from __future__ import annotations

import numpy as np
import pytest

from ferops.constants import NUM_CLASSES, SPLITS
from ferops.data.io import FerData, load_npz, save_npz
from ferops.data.split import assign_stratified, image_hashes, leakage_drop_mask, split_dataset
from ferops.data.synthetic import make_synthetic
from ferops.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def data() -> FerData:
    """Synthetic labeled rows (competition usages) plus 20 unlabeled Test rows."""
    d = make_synthetic(400, seed=3)
    unl = make_synthetic(20, seed=4)
    unl = FerData(unl.pixels, np.full(20, -1, np.int8), np.full(20, "Test"), np.char.add(unl.source_id, "u"))
    return FerData.concat([d, unl])


def _ids(parts: dict[str, FerData]) -> list[str]:
    return sorted(i for p in parts.values() for i in p.source_id.tolist())


@pytest.mark.parametrize("strategy", ["usage", "stratified"])
def test_no_row_lost_or_duplicated(data, strategy):
    parts, report = split_dataset(data, strategy=strategy, seed=1)
    assert set(parts) == set(SPLITS)
    assert _ids(parts) == sorted(data.source_id.tolist())
    assert sum(report["n"].values()) == len(data) == report["n_in"]


@pytest.mark.parametrize("strategy", ["usage", "stratified"])
def test_unlabeled_rows_go_to_predict_only(data, strategy):
    parts, _ = split_dataset(data, strategy=strategy, seed=1)
    assert len(parts["predict"]) == 20 and (parts["predict"].emotion == -1).all()
    for s in ("train", "val", "test"):
        assert (parts[s].emotion >= 0).all()


def test_usage_strategy_maps_competition_usages(data):
    parts, report = split_dataset(data, strategy="usage")
    for usage, split in (("Training", "train"), ("PublicTest", "val"), ("PrivateTest", "test")):
        assert (parts[split].usage == usage).all()
        assert report["n"][split] == int(((data.usage == usage) & data.labeled).sum())


def test_usage_strategy_refuses_labeled_rows_with_unknown_usage(data):
    bad = FerData(data.pixels[:5], data.emotion[:5].copy(), np.array(["Training"] * 4 + ["Unknown"]), data.source_id[:5])
    bad.emotion[4] = 2
    with pytest.raises(DataError, match=r"Unknown.*rows \[4\].*stratified"):
        split_dataset(bad, strategy="usage")


def test_stratified_fractions_and_class_proportions():
    d = make_synthetic(1000, seed=5)
    fr = {"train": 0.7, "val": 0.2, "test": 0.1}
    parts, report = split_dataset(d, strategy="stratified", fractions=fr, seed=7)
    for s, f in fr.items():
        assert abs(len(parts[s]) / len(d) - f) < 0.01
        for c in range(NUM_CLASSES):  # each class is cut at the fractions (±1 row of rounding)
            n_c = int((d.emotion == c).sum())
            assert abs(int((parts[s].emotion == c).sum()) - f * n_c) <= 1
    assert report["fractions"] == fr and report["seed"] == 7


def test_stratified_is_deterministic_for_a_seed():
    d = make_synthetic(300, seed=6)
    fr = {"train": 0.8, "val": 0.1, "test": 0.1}
    a, b, c = (assign_stratified(d, fr, s) for s in (1, 1, 2))
    assert (a == b).all()
    assert (a != c).any()


def test_bad_fractions_and_modes_are_config_errors(data):
    with pytest.raises(ConfigError, match="summing to 1"):
        split_dataset(data, strategy="stratified", fractions={"train": 0.8, "val": 0.3, "test": 0.1})
    with pytest.raises(ConfigError, match="split.strategy"):
        split_dataset(data, strategy="random")
    with pytest.raises(ConfigError, match="split.duplicates"):
        split_dataset(data, duplicates="ignore")


def _with_duplicates(data: FerData) -> FerData:
    """Copies: train row → val (leak), train row → test with another label (leak + conflict), val row twice in val."""
    d = FerData(data.pixels.copy(), data.emotion.copy(), data.usage.copy(), data.source_id.copy())
    tr, va, te = (np.flatnonzero((d.usage == u) & d.labeled) for u in ("Training", "PublicTest", "PrivateTest"))
    d.pixels[va[0]] = d.pixels[tr[0]]
    d.pixels[te[0]] = d.pixels[tr[1]]
    d.emotion[te[0]] = (d.emotion[tr[1]] + 1) % NUM_CLASSES
    d.pixels[va[2]] = d.pixels[va[1]]
    return d


def test_duplicates_report_keeps_everything_and_counts_them(data):
    d = _with_duplicates(data)
    parts, report = split_dataset(d, duplicates="report")
    dup = report["duplicates"]
    assert dup["cross_split_groups"] == 2
    assert dup["cross_split_pairs"] == {"train-test": 1, "train-val": 1}
    assert dup["within_split"]["val"] == {"groups": 1, "extra_copies": 1}
    assert dup["conflicting_label_groups"] >= 1
    assert sum(report["n"].values()) == len(d) and sum(dup["dropped"].values()) == 0


def test_duplicates_drop_removes_val_test_copies_keeps_train(data):
    d = _with_duplicates(data)
    parts, report = split_dataset(d, duplicates="drop")
    assert report["duplicates"]["dropped"] == {"train": 0, "val": 1, "test": 1, "predict": 0}
    train_h = set(image_hashes(parts["train"].pixels))
    for s in ("val", "test"):
        assert not train_h & set(image_hashes(parts[s].pixels))
    assert report["n"]["train"] == int(((d.usage == "Training") & d.labeled).sum())
    val_h = image_hashes(parts["val"].pixels)
    assert len(val_h) - len(set(val_h)) == 1  # the val row copied within val is kept with its twin (report only)


def test_duplicates_fail_names_rows_and_fix(data):
    with pytest.raises(DataError, match=r"more than one split.*e.g. \[.*split.duplicates: drop"):
        split_dataset(_with_duplicates(data), duplicates="fail")
    parts, _ = split_dataset(data, duplicates="fail")  # clean data passes
    assert sum(len(p) for p in parts.values()) == len(data)


def test_leakage_mask_priority_train_then_val_then_test():
    hashes = ["a", "a", "a", "b", "b", "c"]
    splits = np.array(["test", "val", "train", "test", "val", "predict"])
    assert leakage_drop_mask(hashes, splits).tolist() == [True, True, False, True, False, False]


def test_empty_predict_split_round_trips(tmp_path):
    d = make_synthetic(60, seed=8)
    parts, report = split_dataset(d)
    assert report["n"]["predict"] == 0
    back = load_npz(save_npz(parts["predict"], tmp_path / "predict.npz"))
    assert back.pixels.shape == (0, 48, 48) and back.pixels.dtype == np.uint8 and len(back.emotion) == 0


def test_usage_without_publictest_carves_val_from_train_never_from_test():
    from ferops.data.synthetic import make_synthetic

    data = make_synthetic(400, seed=3)
    data.usage[data.usage == "PublicTest"] = "Training"
    parts, report = split_dataset(data, "usage", val_from_train=0.1)
    test_ids = set(data.source_id[data.usage == "PrivateTest"])
    assert report["val_carved_from_train"] == len(parts["val"]) > 0
    assert set(parts["test"].source_id) == test_ids and not (set(parts["val"].source_id) & test_ids)
    assert len(parts["train"]) + len(parts["val"]) == int((data.usage == "Training").sum())


def test_data_without_competition_usage_is_split_by_class_under_the_default_strategy(caplog):
    """Kaggle train.csv (labeled, no Usage: "Unknown") + unlabeled test.csv: the default `usage` strategy has
    nothing to go by, so the split falls back to `stratified` instead of stopping (and says so)."""
    d = make_synthetic(300, seed=5)
    labeled = FerData(d.pixels, d.emotion, np.full(len(d), "Unknown"), d.source_id)
    unl = make_synthetic(10, seed=6)
    unl = FerData(unl.pixels, np.full(10, -1, np.int8), np.full(10, "Unlabeled"), np.char.add(unl.source_id, "t"))
    with caplog.at_level("INFO", logger="ferops.split"):
        parts, report = split_dataset(FerData.concat([labeled, unl]), strategy="usage", seed=1)
    assert report["strategy"] == "stratified" and report["strategy_requested"] == "usage" and report["seed"] == 1
    assert len(parts["predict"]) == 10 and len(parts["train"]) == 240  # 80 % (per-class rounding moves val/test a bit)
    assert min(len(parts["val"]), len(parts["test"])) >= 25
    (notice,) = [r for r in caplog.records if "splitting with the `stratified` strategy" in r.getMessage()]
    assert notice.levelname == "INFO"  # documented behaviour: a notice, not a warning
    mixed = FerData(d.pixels, d.emotion, np.where(np.arange(len(d)) % 2, "Unknown", "Training"), d.source_id)
    with pytest.raises(DataError, match="usage the `usage` split strategy does not know"):
        split_dataset(mixed, strategy="usage")  # some rows have a usage: a partial guess would be wrong


def test_training_rows_only_stop_at_split_with_the_fix_not_at_evaluate():
    d = make_synthetic(100, seed=5)
    only_train = FerData(d.pixels, d.emotion, np.full(len(d), "Training"), d.source_id)
    with pytest.raises(DataError, match=r"the test split is empty .*split.strategy: stratified"):
        split_dataset(only_train)
    parts, _ = split_dataset(only_train, strategy="stratified")
    assert len(parts["test"]) > 0


def test_an_empty_stratified_split_names_its_fraction_not_the_strategy_already_set():
    d = make_synthetic(200, seed=5)  # ~28 rows a class: the last 1 % of each rounds to none
    with pytest.raises(DataError) as err:
        split_dataset(d, strategy="stratified", fractions={"train": 0.98, "val": 0.01, "test": 0.01})
    msg = str(err.value)
    assert "the test split is empty" in msg and "split.strategy" not in msg  # it is stratified already
    assert "Fix: raise split.fractions.test (now 0.01)" in msg


def test_duplicate_examples_and_the_fail_message_name_source_rows():
    d = make_synthetic(60, seed=2)
    px = d.pixels.copy()
    i, j = int(np.flatnonzero(d.usage == "Training")[0]), int(np.flatnonzero(d.usage == "PrivateTest")[0])
    px[j] = px[i]  # the same image in train and test
    data = FerData(px, d.emotion, d.usage, d.source_id)
    _, report = split_dataset(data)
    ex = report["duplicates"]["examples"][0]
    assert ex["source_ids"] == [str(d.source_id[i]), str(d.source_id[j])]
    with pytest.raises(DataError, match=str(d.source_id[j])):
        split_dataset(data, duplicates="fail")


def test_blank_images_are_reported_and_dropped_on_request():
    d = make_synthetic(80, seed=4)
    px = d.pixels.copy()
    px[:3] = 0  # three blank (constant) images
    data = FerData(px, d.emotion, d.usage, d.source_id)
    parts, report = split_dataset(data)
    assert report["blank"] == {"found": 3, "dropped": False, "source_ids": d.source_id[:3].tolist()}
    assert sum(len(p) for p in parts.values()) == 80
    parts, report = split_dataset(data, drop_blank=True)
    assert sum(len(p) for p in parts.values()) == 77 and report["blank"]["dropped"]
    assert not any(s in set(d.source_id[:3]) for p in parts.values() for s in p.source_id)


def test_an_empty_usage_split_names_the_fix_for_that_split():
    """A test/ folder only (no train rows), or train/ + test/ with `val_from_train` 0: the fix named is the one for
    the empty split (a train/ folder; split.val_from_train), not 'add a test/ folder' the user already has."""
    d = make_synthetic(100, seed=5)
    test_only = FerData(d.pixels, d.emotion, np.full(len(d), "PrivateTest"), d.source_id)
    with pytest.raises(DataError) as err:
        split_dataset(test_only)
    msg = str(err.value)
    assert "the train and val splits are empty" in msg and "add Training rows (image folders: a train/ folder)" in msg
    assert "a test/ folder" not in msg and "val_from_train" not in msg and "split.strategy: stratified" in msg
    no_val = FerData(d.pixels, d.emotion, np.where(d.usage == "PublicTest", "Training", d.usage), d.source_id)
    with pytest.raises(DataError) as err:
        split_dataset(no_val, val_from_train=0.0)
    msg = str(err.value)
    assert "the val split is empty" in msg and "raise split.val_from_train (now 0)" in msg
    assert "a val/ folder" in msg and "a test/ folder" not in msg


def test_a_split_emptied_by_duplicates_drop_says_so():
    """PublicTest rows that `drop` removed as copies of train images: the fix names `drop`, not carving val from
    train (no carving happens when PublicTest rows exist)."""
    d = make_synthetic(100, seed=5)
    px, tr, va = d.pixels.copy(), np.flatnonzero(d.usage == "Training"), np.flatnonzero(d.usage == "PublicTest")
    px[va] = px[tr[:len(va)]]  # every PublicTest image is a copy of a train image: `drop` empties val
    with pytest.raises(DataError) as err:
        split_dataset(FerData(px, d.emotion, d.usage, d.source_id), duplicates="drop")
    msg = str(err.value)
    assert "the val split is empty" in msg and "val_from_train" not in msg  # there were PublicTest rows: no carving
    assert f"`split.duplicates: drop` removed {len(va)} val row(s)" in msg


def test_the_fail_message_names_a_leaking_group_when_predict_copies_come_first():
    """More than 20 train images copied into the unlabeled prediction rows (e.g. Kaggle test.csv) fill the report's
    examples; the refusal still names the rows of a train/val/test leak, not none."""
    d = make_synthetic(200, seed=2)
    tr, te = np.flatnonzero(d.usage == "Training"), np.flatnonzero(d.usage == "PrivateTest")
    unl = FerData(d.pixels[tr[:25]].copy(), np.full(25, -1, np.int8), np.full(25, "Unlabeled"),
                  np.char.add(d.source_id[tr[:25]], "p"))
    px = d.pixels.copy()
    px[te[-1]] = px[tr[-1]]  # the one leak: a train image in test
    data = FerData.concat([unl, FerData(px, d.emotion, d.usage, d.source_id)])
    _, report = split_dataset(data)
    assert all("predict" in e["splits"] for e in report["duplicates"]["examples"])  # 20 train-predict groups
    with pytest.raises(DataError) as err:
        split_dataset(data, duplicates="fail")
    rows = sorted([(int(tr[-1]), "train"), (int(te[-1]), "test")])  # the group's rows in row order
    assert f"e.g. {[str(d.source_id[r]) for r, _ in rows]} in {[s for _, s in rows]}" in str(err.value)
