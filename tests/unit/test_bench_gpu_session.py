"""benchmarks/gpu_session.sh: the one-call GPU measurement's bookkeeping, with a stand-in for benchmarks/train.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Stands in for the interpreter: `benchmarks/train.py` writes a tiny run (or fails for seed 13), the rest is Python.
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = benchmarks/train.py ]; then
    exec "{python}" - "$@" <<'END'
import json, sys
from pathlib import Path
import numpy as np
a = sys.argv[2:]
seed, out = int(a[a.index("--seed") + 1]), Path(a[a.index("--out") + 1]) / "resnet"
if seed == 13:
    sys.exit("seed 13 fails")
out.mkdir(parents=True)
rng = np.random.default_rng(seed)
p = rng.dirichlet(np.ones(7), size=(2, 12)).astype(np.float32)
np.savez(out / "probas.npz", val=p, test=p, y_val=np.arange(12) % 7, y_test=np.arange(12) % 7)
(out / "result.json").write_text(json.dumps({{"seed": seed, "val_accuracy": 0.5}}))
END
fi
exec "{python}" "$@"
"""


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None, reason="needs bash and tar")
def test_runs_of_an_earlier_call_are_not_shipped_or_ensembled(tmp_path):
    """A second call on the same machine (a rerun on a warm device, or after a local smoke run) shipped the earlier
    call's seed folders in runs.tgz (the tar took s*/) and ensembled a failed seed's leftover run as if it were new.
    Only the seeds that finished in this call may be in runs.tgz and ensemble.json."""
    for f in ("benchmarks/gpu_session.sh", "benchmarks/ensemble.py", "profiles/gpu.yaml"):
        (tmp_path / f).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / f, tmp_path / f)
    (tmp_path / "data.npz.xz").write_bytes(b"")
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "DATA": "data.npz.xz", "EPOCHS": "1"}

    def call(seeds: str, out: Path) -> subprocess.CompletedProcess:
        out.mkdir()
        return subprocess.run(["bash", "benchmarks/gpu_session.sh"], cwd=tmp_path, capture_output=True, text=True,
                              env={**env, "SEEDS": seeds, "OUT": str(out)}, timeout=300)

    first = call("42 13", tmp_path / "out1")
    assert first.returncode == 0, first.stderr + first.stdout
    # seed 13 failed in the first call too; write it a leftover run as an older call would have left
    leftover = tmp_path / "benchmarks" / "out" / "gpu_session" / "s13"
    shutil.copytree(tmp_path / "benchmarks" / "out" / "gpu_session" / "s42", leftover)
    second = call("7 13", tmp_path / "out2")  # 42 not asked for this time, 13 fails again
    assert "seed 13: no result" in second.stdout
    with tarfile.open(tmp_path / "out2" / "runs.tgz") as tar:
        names = set(tar.getnames())
    assert {n.split("/")[0] for n in names if "/" in n} == {"s7"}, names
    members = json.loads((tmp_path / "out2" / "ensemble.json").read_text())["members"]
    assert [Path(m).parts[-2] for m in members] == ["s7"]
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == [
        "ensemble.json", "runs.tgz", "s13.log", "s7.json", "s7.log"]
