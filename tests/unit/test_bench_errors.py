"""The benchmark scripts' error paths: a missing model, data, run folder or server, an unknown model name or a
count that leaves nothing to time is one line, not a traceback (and is found before the minutes of work)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
B = ROOT / "benchmarks"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """A tiny packed train/val/test file (benchmarks/pack_data.py), the --data every script reads."""
    sys.path.insert(0, str(B))
    from pack_data import SPLITS, pack

    from ferops.data.synthetic import make_synthetic

    data = make_synthetic(30, 0)
    return pack({k: data.subset(np.arange(30) % 3 == i) for i, k in enumerate(SPLITS)},
                tmp_path_factory.mktemp("packed") / "fer.npz.xz")


CASES = {
    "inference, missing model": (["inference.py", "--model", "nope.keras", "--repeats", "1", "--huge-runs", "0"],
                                 "nope.keras: no such file"),
    "inference, no store outside a project": (["inference.py", "--model", "models:/fer2013-resnet@champion"],
                                              "not in a ferops project"),
    "inference, --repeats 0": (["inference.py", "--repeats", "0"], "--repeats must be at least 1"),
    "inference, missing --score data": (["inference.py", "--score", "nope.csv"], "--score nope.csv: no such file"),
    "ingest, --repeats 0": (["ingest.py", "--repeats", "0"], "must be at least 1"),
    "ensemble, not a run": (["ensemble.py", "nope"], "nope holds no probas.npz"),
    "logit_offsets, not a run": (["logit_offsets.py", "nope"], "nope holds no probas.npz"),
    "calibration, not a run": (["calibration.py", "nope"], "nope holds no probas.npz"),
    "crop_sizes, not a run": (["crop_sizes.py", "nope"], "nope holds no trained run"),
    "tta_grid, missing model": (["tta_grid.py", "nope.keras"], "nope.keras: no such .keras file"),
    "engines, missing model": (["engines.py", "--model", "nope.keras"], "nope.keras: no such .keras file"),
    "pack_data, missing data": (["pack_data.py", "nope.csv", "out.npz.xz"], "nope.csv: no dataset found"),
    "throughput, unknown model": (["throughput.py", "--model", "nope"], "--model nope: not a model"),
    "train, unknown model": (["train.py", "--model", "nope", "--data", "{packed}"], "--model nope: not a model"),
    "train --rescore, no such run": (["train.py", "--model", "nope", "--rescore", "--data", "{packed}", "--out",
                                      str(B / "out")], "holds no trained run"),
    "rest, no server": (["rest.py", "--data", "{packed}", "--url", "http://127.0.0.1:{port}/invocations"],
                        "nothing answers at"),
}


@pytest.mark.parametrize("case", CASES)
def test_benchmark_error_is_one_line(case, tmp_path, packed):
    argv, expected = CASES[case]
    argv = [a.format(packed=packed, port=closed_port()) for a in argv]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the store is the cwd's project's
    r = subprocess.run([sys.executable, str(B / argv[0]), *argv[1:]], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=300)
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    assert expected in r.stderr.strip().splitlines()[-1], r.stderr
    assert not (ROOT / "benchmarks" / "out" / "nope").exists()


@pytest.mark.parametrize("script", sorted(p.name for p in B.glob("*.py")))
def test_every_benchmark_says_its_usage_on_help(script):
    """`pack_data.py --help` printed its docstring to stderr and exited 1 (a user audit); every script's --help is a
    usage line on stdout and exit 0, as the README's "each --help says how to point elsewhere" promises."""
    r = subprocess.run([sys.executable, str(B / script), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith(f"usage: {script}"), (r.returncode, r.stdout[:200], r.stderr[-500:])
