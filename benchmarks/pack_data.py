"""Pack FER2013's train/val/test splits into one small file for a machine the CSV cannot travel to.

    python benchmarks/pack_data.py ../shared/data/fer2013.csv.gz .gpu/fer2013.npz.xz

The lent GPU machine takes at most 64 MiB of files; the CSV is 95 MB. Row-wise pixel deltas
compressed with LZMA bring the three splits to ~62 MB, losslessly. `benchmarks/train.py --data`
reads the packed file directly. Never commit the packed file (it is the dataset).
"""

from __future__ import annotations

import io
import lzma
import sys
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


def pack(parts: dict, path: str | Path) -> Path:
    """Write splits {name: FerData} as LZMA-compressed npz of row-wise deltas (uint8, wrapping)."""
    arrays = {}
    for k in SPLITS:
        x = parts[k].pixels
        arrays[f"{k}_x"] = np.diff(x.astype(np.int16), axis=2, prepend=0).astype(np.uint8)
        arrays[f"{k}_y"] = parts[k].emotion.astype(np.int8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lzma.compress(buf.getvalue(), preset=6))
    return path


def unpack(path: str | Path) -> dict:
    """The splits written by `pack`, as {name: FerData}."""
    from ferops.data.io import FerData

    z = np.load(io.BytesIO(lzma.decompress(Path(path).read_bytes())))
    out = {}
    for k in SPLITS:
        x = np.cumsum(z[f"{k}_x"], axis=2, dtype=np.uint8)  # undoes the wrapping deltas exactly
        y = z[f"{k}_y"]
        n = len(y)
        out[k] = FerData(x, y, np.full(n, k, dtype=object), np.array([f"{k}-{i}" for i in range(n)], dtype=object))
    return out


def main(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="FER2013 with a Usage column (fer2013.csv, .csv.gz, icml_face_data.csv)")
    ap.add_argument("out", help="the packed file to write (e.g. .gpu/fer2013.npz.xz; git-ignored, never commit it)")
    args = ap.parse_args(argv)
    from ferops.data.formats import read_any
    from ferops.data.split import split_dataset

    data, _ = read_any(args.data)
    parts, _ = split_dataset(data, "usage")
    out = pack(parts, args.out)
    back = unpack(out)
    assert all((back[k].pixels == parts[k].pixels).all() for k in SPLITS), "round trip failed"
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB, " + ", ".join(f"{k}={len(back[k])}" for k in SPLITS))


if __name__ == "__main__":
    from ferops.runner import run

    run(lambda: main(sys.argv[1:]))  # a ferops error (missing data) is one `error:` line
