"""Regression for a native crash: TF 2.21's AVX-512 oneDNN kernels corrupt the heap training mini_xception on the full
train split (segfault within the first epoch). Its `onednn_max_isa: avx2` (params.yaml) must keep a real epoch alive.
A fresh process, as each DVC stage is: oneDNN reads the ISA cap once, before its first kernel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
import numpy as np
from ferops.runner import cap_onednn_isa, tf_environment
tf_environment()
from ferops.config import load_params
from ferops.data.formats import read_any
from ferops.data.split import split_dataset
from ferops.training import resolve_config, train_keras
td = load_params(sys.argv[1])["train_deep"]
cfg = resolve_config(td["common"], td["models"]["mini_xception"])
cap_onednn_isa(cfg)
parts = split_dataset(read_any(sys.argv[2])[0], "usage")[0]
val = parts["val"].subset(np.arange(len(parts["val"])) < 512)
res = train_keras(parts["train"], val, cfg, seed=42, max_epochs=1, verbose=0)
print("trained", res.epochs_run, "epoch, val accuracy", round(res.val_accuracy, 3))
"""


@pytest.mark.slow
@pytest.mark.realdata
def test_mini_xception_trains_a_full_epoch_under_its_onednn_cap(real_csv):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO / "params.yaml"), str(real_csv)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"exit {proc.returncode} (negative = killed by that signal):\n{proc.stderr[-2000:]}"
    assert "trained 1 epoch" in proc.stdout
