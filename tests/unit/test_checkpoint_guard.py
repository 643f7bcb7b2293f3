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


def test_the_training_code_fingerprint_follows_every_module_training_reaches(tmp_path):
    """A checkpoint records the training code (training.py and what it imports): an edit of the model zoo changes it."""
    from ferops.codebase import code_fingerprint

    pkg = tmp_path / "ferops"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "__init__.py").write_text("")
    (pkg / "training.py").write_text("from ferops.models import zoo\n")
    (pkg / "models" / "zoo.py").write_text("WIDTH = 32\n")
    (pkg / "inference.py").write_text("X = 1\n")  # not reached from training
    before = code_fingerprint(pkg / "training.py", tmp_path)
    (pkg / "inference.py").write_text("X = 2\n")
    assert code_fingerprint(pkg / "training.py", tmp_path) == before
    import shutil

    moved = tmp_path / "elsewhere"  # another clone, install or machine: the same code, the same fingerprint
    shutil.copytree(pkg, moved / "ferops")
    assert code_fingerprint(moved / "ferops" / "training.py", moved) == before
    (pkg / "models" / "zoo.py").write_text("WIDTH = 64\n")
    assert code_fingerprint(pkg / "training.py", tmp_path) != before


def test_a_half_written_member_result_trains_the_member_again(tmp_path):
    """A kill while a finished ensemble member's result.json was written left half a file, and every rerun of the
    stage failed reading it; now the file is written atomically, and a broken one means "not finished"."""
    from ferops.training import load_member, write_atomic

    done = tmp_path / "member_1_done"
    done.mkdir()
    (done / "result.json").write_text('{"key": "abc", "history": {"accu')
    assert load_member(done, "abc") is None
    write_atomic(done / "result.json", '{"key": "other"}')
    assert not list(done.glob("*.tmp")) and load_member(done, "abc") is None
