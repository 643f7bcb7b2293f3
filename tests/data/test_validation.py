"""Data tier: the GX suite passes on good data (synthetic; real FER2013) and names what fails on corrupted copies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ferops.data.io import FerData, save_npz
from ferops.data.synthetic import make_synthetic
from ferops.data.validation import (SUITE_NAME, SUITE_VERSION, dataset_frame, describe_failures, raise_on_critical,
                                    validate_dataset, validate_frame)
from ferops.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def _copy(d: FerData) -> FerData:
    return FerData(d.pixels.copy(), d.emotion.copy(), d.usage.copy(), d.source_id.copy())


def _label_9(d: FerData) -> FerData:
    d = _copy(d)
    d.emotion[3] = 9
    return d


def _usage_foo(d: FerData) -> FerData:
    d = _copy(d)
    d.usage = d.usage.astype(object)
    d.usage[5] = "Foo"
    d.usage = d.usage.astype(str)
    return d


def _no_training_disgust(d: FerData) -> FerData:
    """Drop class 1 (Disgust) from the Training rows: it stays in val/test only."""
    return d.subset(~((d.usage == "Training") & (d.emotion == 1)))


def _unlabeled_training_row(d: FerData) -> FerData:
    d = _copy(d)
    d.emotion[np.flatnonzero(d.usage == "Training")[0]] = -1
    return d


CORRUPTIONS = {  # corruption → (failing expectation type, its column)
    "label 9": (_label_9, "expect_column_values_to_be_in_set", "emotion"),
    "usage Foo": (_usage_foo, "expect_column_values_to_be_in_set", "usage"),
    "missing Training class": (_no_training_disgust, "expect_column_distinct_values_to_contain_set", "train_emotion"),
    "unlabeled Training row": (_unlabeled_training_row, "expect_column_pair_values_to_be_in_set", ["usage", "emotion"]),
}


@pytest.fixture(scope="module")
def synth() -> FerData:
    return make_synthetic(400, seed=21)


def _failed(report: dict, key: str = "critical") -> list[tuple[str, object]]:
    return [(f["expectation"], f["column"]) for f in report[key]]


def test_suite_passes_on_synthetic_and_builds_data_docs(synth, tmp_path):
    docs = tmp_path / "data_docs"
    report = validate_dataset(synth, {"max_duplicate_fraction": 0.05}, docs_dir=docs)
    assert report["success"] and report["critical"] == []
    assert report["suite"] == SUITE_NAME and f"v{SUITE_VERSION}" in SUITE_NAME
    assert report["n_rows"] == len(synth) and report["expectations"]["evaluated"] >= 12
    assert (docs / "index.html").exists()
    assert list((docs / "validations").rglob("*.html")) and (docs / "expectations" / f"{SUITE_NAME}.html").exists()
    assert not (Path.cwd() / "gx").exists()  # the GX context never lands in the working directory
    raise_on_critical(report, "synthetic")  # no error


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_suite_fails_on_corruption_naming_the_expectation(synth, name):
    corrupt, exp_type, column = CORRUPTIONS[name]
    report = validate_dataset(corrupt(synth))
    assert not report["success"]
    assert (exp_type, column) in _failed(report), _failed(report)
    with pytest.raises(DataError, match=exp_type):
        raise_on_critical(report, "fer.npz")


def test_pixel_level_corruptions_are_critical(synth):
    px = synth.pixels.reshape(len(synth), -1).astype(np.float64)
    px[0, 0], px[1, 1], px[2, 2] = 300.0, -4.0, np.nan
    report = validate_frame(dataset_frame(px, synth.emotion, synth.usage))
    failed = _failed(report)
    assert ("expect_column_values_to_be_between", "pixel_max") in failed
    assert ("expect_column_values_to_be_between", "pixel_min") in failed
    assert ("expect_column_values_to_be_in_set", "has_null") in failed
    ragged = [p.ravel() for p in synth.pixels[:50]]
    ragged[7] = ragged[7][:2000]
    report = validate_frame(dataset_frame(ragged, synth.emotion[:50], synth.usage[:50]))
    bad = next(f for f in report["critical"] if f["column"] == "n_pixels")
    assert bad["unexpected_count"] == 1 and bad["partial_unexpected_index_list"] == [7]


def test_warnings_never_fail_but_are_listed(synth):
    d = _copy(synth)
    d.pixels[:40] = d.pixels[40:80]  # 80 of 400 rows in duplicate pairs
    d.pixels[80:90] = 128  # 10 blank images = 2.5 % (identical, so also one duplicate group: 90 rows = 22.5 %)
    report = validate_dataset(d, {"min_class_fraction": 0.05, "max_duplicate_fraction": 0.05, "max_blank_fraction": 0.01})
    assert report["success"] and report["critical"] == []
    warned = {f["column"]: f for f in report["warnings"]}
    assert set(warned) == {"is_duplicate", "is_blank", "train_class_fraction"}  # Disgust < 5 % of train
    assert warned["is_duplicate"]["observed"] == pytest.approx(0.225)
    assert warned["is_blank"]["observed"] == pytest.approx(0.025)
    assert report["duplicates"]["groups"] == 41 and report["blanks"]["count"] == 10  # 40 pairs + the blank group
    assert report["blanks"]["rows"] == list(range(80, 90))
    assert report["blanks"]["source_ids"] == d.source_id[80:90].tolist()  # rows of the source, not of fer.npz
    assert "is_duplicate" in describe_failures(report, "x", "warnings")


def test_stage_exits_nonzero_with_readable_error(synth, tmp_path):
    data = save_npz(_usage_foo(synth), tmp_path / "fer.npz")
    report = tmp_path / "validation.json"
    res = subprocess.run([sys.executable, str(REPO / "stages" / "validate.py"), "--data", str(data), "--report", str(report),
                          "--docs", str(tmp_path / "docs"), "--params", str(REPO / "params.yaml")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=180)
    assert res.returncode != 0
    assert "error:" in res.stderr and "expect_column_values_to_be_in_set(usage)" in res.stderr and "'Foo'" in res.stderr
    assert "Traceback" not in res.stderr
    assert report.exists() and (tmp_path / "docs" / "index.html").exists()


@pytest.mark.realdata
def test_suite_passes_on_real_fer2013_with_duplicate_warning(real_data, tmp_path):
    report = validate_dataset(real_data, {"min_class_fraction": 0.01, "max_duplicate_fraction": 0.05,
                                          "max_blank_fraction": 0.01}, docs_dir=tmp_path / "docs")
    assert report["success"], describe_failures(report, "fer2013.csv.gz")
    assert report["n_rows"] == 35887
    assert report["usage_counts"] == {"Training": 28709, "PublicTest": 3589, "PrivateTest": 3589}
    assert [f["column"] for f in report["warnings"]] == ["is_duplicate"]  # Disgust 1.5 % > 1 %; blanks 0.03 %
    dup = report["duplicates"]
    assert 1400 <= dup["groups"] <= 1500 and 3100 <= dup["rows_in_groups"] <= 3400  # README: ~1,460 groups, ~3,240 rows
    assert dup["cross_usage_groups"] > 0 and dup["conflicting_label_groups"] > 0
    assert 8 <= report["blanks"]["count"] <= 16  # "a dozen"
    assert report["train_class_fractions"]["Disgust"] == pytest.approx(436 / 28709, abs=1e-5)


@pytest.mark.realdata
@pytest.mark.parametrize("name", list(CORRUPTIONS)[:3])
def test_suite_fails_on_corrupted_real_copies(real_data, name):
    corrupt, exp_type, column = CORRUPTIONS[name]
    sample = real_data.subset(np.arange(0, len(real_data), 10))  # 3,589 real rows keep the test fast
    assert validate_dataset(sample)["success"]
    report = validate_dataset(corrupt(sample))
    assert (exp_type, column) in _failed(report)


@pytest.mark.realdata
def test_usage_split_of_real_data_matches_readme(real_data):
    from ferops.data.split import split_dataset

    parts, report = split_dataset(real_data, strategy="usage", duplicates="report")
    assert report["n"] == {"train": 28709, "val": 3589, "test": 3589, "predict": 0}
    readme = {  # ../shared/data/README.md: Training / PublicTest / PrivateTest
        "Angry": (3995, 467, 491), "Disgust": (436, 56, 55), "Fear": (4097, 496, 528), "Happy": (7215, 895, 879),
        "Sad": (4830, 653, 594), "Surprise": (3171, 415, 416), "Neutral": (4965, 607, 626)}
    for i, split in enumerate(("train", "val", "test")):
        assert report["per_class"][split] == {k: v[i] for k, v in readme.items()}
    dup = report["duplicates"]
    assert dup["cross_split_groups"] > 0 and set(dup["cross_split_pairs"]) >= {"train-val", "train-test"}
    dropped, rep = split_dataset(real_data, strategy="usage", duplicates="drop")
    assert rep["n"]["train"] == 28709 and rep["duplicates"]["dropped"]["val"] > 0 and rep["duplicates"]["dropped"]["test"] > 0


def test_rare_class_warning_names_the_class(synth):
    """The imbalance warning says which class is rare (and its share), not only the smallest share observed."""
    report = validate_dataset(synth, {"min_class_fraction": 0.05})
    rare = next(f for f in report["warnings"] if f["column"] == "train_class_fraction")
    share = report["train_class_fractions"]["Disgust"]
    assert share < 0.05 and rare["rare_classes"] == {"Disgust": share}
    assert f"below 0.05: Disgust {share:.4f}" in describe_failures(report, "x", "warnings")
