"""The .npz dataset file: a broken or foreign file is a DataError naming it, never a traceback from numpy."""

from __future__ import annotations

import numpy as np
import pytest

from ferops.data.io import load_npz, save_npz
from ferops.data.synthetic import make_synthetic
from ferops.errors import DataError


def test_roundtrip(tmp_path):
    d = make_synthetic(10, seed=1)
    back = load_npz(save_npz(d, tmp_path / "fer.npz"))
    np.testing.assert_array_equal(back.pixels, d.pixels)
    assert back.source_id.tolist() == d.source_id.tolist()


@pytest.mark.parametrize("kind", ["truncated", "other arrays", "a .npy", "text"])
def test_unreadable_dataset_file_is_a_data_error(tmp_path, kind):
    p = tmp_path / "fer.npz"
    if kind == "truncated":  # a stage killed while writing it, a full disk
        whole = save_npz(make_synthetic(10, seed=1), p).read_bytes()
        p.write_bytes(whole[: len(whole) // 2])
    elif kind == "other arrays":
        np.savez(p, x=np.zeros(3))
    elif kind == "a .npy":
        with open(p, "wb") as fh:
            np.save(fh, np.zeros(3))
    else:
        p.write_text("hello\n")
    with pytest.raises(DataError, match=r"fer\.npz: not a readable ferops dataset .*re-run the stage"):
        load_npz(p)
