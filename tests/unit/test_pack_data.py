"""benchmarks/pack_data.py: the lossless packed splits that travel to a lent GPU machine."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from pack_data import SPLITS, pack, unpack  # noqa: E402

from ferops.data.synthetic import make_synthetic  # noqa: E402


def test_pack_round_trip_is_lossless_and_smaller(tmp_path):
    data = make_synthetic(90, 0)
    parts = {k: data.subset(np.arange(90) % 3 == i) for i, k in enumerate(SPLITS)}
    parts["train"].pixels[0, :, :] = np.arange(48, dtype=np.uint8) * 5  # steep deltas wrap around 255
    out = pack(parts, tmp_path / "fer.npz.xz")
    back = unpack(out)
    for k in SPLITS:
        np.testing.assert_array_equal(back[k].pixels, parts[k].pixels)
        np.testing.assert_array_equal(back[k].emotion, parts[k].emotion)
        assert set(back[k].usage) == {k}
    assert out.stat().st_size < sum(p.pixels.nbytes for p in parts.values())
