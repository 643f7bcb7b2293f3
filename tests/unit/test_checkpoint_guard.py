"""A checkpoint resumes only the training it was made by: same config, seed and data (labels and pixels too)."""

from __future__ import annotations

import numpy as np

from ferops.data.io import data_digest
from ferops.data.synthetic import make_synthetic
from ferops.tracking import RUN_ID_FILE
from ferops.training import RUN_CONFIG_FILE, _guard_checkpoint


def _identity(train, val) -> dict:
    return {"cfg": {"arch": "cnn", "epochs": 3}, "seed": 0, "data": data_digest(train, val), "max_epochs": None}


def test_corrected_labels_of_the_same_row_count_start_fresh(tmp_path, capsys):
    d = make_synthetic(60, 3)
    train, val = d.subset(np.arange(60) < 45), d.subset(np.arange(60) >= 45)
    ckpt = tmp_path / "ckpt"
    assert not _guard_checkpoint(ckpt, _identity(train, val), RUN_CONFIG_FILE, strict=True)  # first run
    (ckpt / RUN_ID_FILE).write_text("run-of-the-killed-stage\n")
    assert _guard_checkpoint(ckpt, _identity(train, val), RUN_CONFIG_FILE, strict=True)  # a resume keeps it
    assert (ckpt / RUN_ID_FILE).exists()

    train.emotion[0] = (train.emotion[0] + 1) % 7  # one label corrected: same rows, same count
    assert not _guard_checkpoint(ckpt, _identity(train, val), RUN_CONFIG_FILE, strict=True)
    assert not (ckpt / RUN_ID_FILE).exists() and "starting fresh" in capsys.readouterr().err


def test_strict_guard_drops_a_checkpoint_without_its_record(tmp_path):
    """Files of unknown origin (no identity record, e.g. from an older ferops) are not resumed into a new run."""
    d = make_synthetic(30, 3)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / RUN_ID_FILE).write_text("old\n")
    assert not _guard_checkpoint(ckpt, _identity(d, d), RUN_CONFIG_FILE, strict=True)
    assert not (ckpt / RUN_ID_FILE).exists() and (ckpt / RUN_CONFIG_FILE).exists()
    (ckpt / "weights").write_text("w")  # the lenient (per-training) guard keeps unrecorded files: its caller's
    assert not _guard_checkpoint(ckpt, {"epochs": 1}) and (ckpt / "weights").exists()
