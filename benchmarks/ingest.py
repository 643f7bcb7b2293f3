"""Benchmark: the seed reports' per-row `np.fromstring` loop vs ferops' reader on the full FER2013 CSV.

Usage:  python benchmarks/ingest.py [--data ../shared/data/fer2013.csv.gz] [--repeats 3] [--baseline-repeats 1]
                                   [--one-thread] [--zlib]
The readers run interleaved in one process on the same file; medians, end to end (gunzip included).
`--one-thread` adds ferops' reader with its pixel parse on one thread (the threaded parse's own gain, side by side);
`--zlib` adds it gunzipping with the standard library's zlib (its fallback) instead of ISA-L.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import zlib
from pathlib import Path
from unittest import mock

import numpy as np

DEFAULT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fer2013.csv.gz"


def baseline(path: Path) -> np.ndarray:
    """The reports' reader: pandas for the table, then np.fromstring per row."""
    import pandas as pd

    df = pd.read_csv(path)
    faces = [np.fromstring(row, sep=" ") for row in df["pixels"]]
    return np.stack(faces).reshape(-1, 48, 48).astype(np.uint8)


def ours(path: Path) -> np.ndarray:
    """ferops.data.formats.read_any (validation included)."""
    from ferops.data.formats import read_any

    data, _ = read_any(path)
    return data.pixels


def ours_one_thread(path: Path) -> np.ndarray:
    """read_any with the chunked pixel parse on one thread (as before the parse used every core)."""
    from ferops.data import formats

    with mock.patch.object(formats, "_PARSE_THREADS", 1):
        return ours(path)


def ours_zlib(path: Path) -> np.ndarray:
    """read_any gunzipping with the standard library's zlib (its fallback when ISA-L's `isal` is not installed)."""
    from ferops.data import formats

    with mock.patch.object(formats, "_inflate", lambda: zlib):
        return ours(path)


def timed(fn, path: Path) -> tuple[float, float, np.ndarray]:
    """Wall and CPU seconds of one call (CPU time is the fairer figure on a shared machine), and its output."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(path)
    return time.perf_counter() - t0, time.process_time() - c0, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FER2013_CSV", DEFAULT)))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline-repeats", type=int, default=1)
    ap.add_argument("--one-thread", action="store_true", help="also time ferops' reader with a one-thread parse")
    ap.add_argument("--zlib", action="store_true", help="also time ferops' reader gunzipping with zlib, not ISA-L")
    args = ap.parse_args()
    if min(args.repeats, args.baseline_repeats) < 1:
        ap.error("--repeats and --baseline-repeats must be at least 1")
    if not args.data.exists():
        print(f"skip: {args.data} not found (the real FER2013 CSV: put fer2013.csv.gz there, or pass --data)")
        return 0
    print(f"data: {args.data.resolve()} ({args.data.stat().st_size / 1e6:.1f} MB)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {sys.version.split()[0]}, numpy {np.__version__}")
    readers = [("ours", ours, args.repeats), ("baseline", baseline, args.baseline_repeats)]
    if args.one_thread:
        readers.insert(1, ("ours_1t", ours_one_thread, args.repeats))
    if args.zlib:
        readers.insert(1, ("ours_zlib", ours_zlib, args.repeats))
    import pandas  # noqa: F401  both readers' imports before the clock: a first run must not pay them
    import ferops.data.formats  # noqa: F401

    runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in readers}
    px: dict[str, np.ndarray] = {}
    for i in range(max(args.repeats, args.baseline_repeats)):  # interleaved, so all see the same machine load
        for name, fn, n in readers:
            if i < n:
                wall, cpu, px[name] = timed(fn, args.data)
                runs[name].append((wall, cpu))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
    for k, label in (("ours", "ferops read_any            "), ("ours_1t", "ferops, one parse thread   "),
                     ("ours_zlib", "ferops, zlib inflate       "),
                     ("baseline", "baseline per-row fromstring")):
        if k not in med:
            continue
        print(f"{label}: median {med[k][0]:6.2f} s wall, {med[k][1]:6.2f} s CPU; "
              f"wall runs {[round(w, 2) for w, _ in runs[k]]}")
    px_base, px_ours = px["baseline"], px["ours"]
    same = all(p.shape == px_base.shape and np.array_equal(p, px_base) for p in px.values())
    print(f"rows: {len(px_ours)}; identical pixels: {same}")
    print(f"speed-up: {med['baseline'][0] / med['ours'][0]:.1f}x wall, {med['baseline'][1] / med['ours'][1]:.1f}x CPU")
    if "ours_1t" in med:
        print(f"threaded parse against one thread: {med['ours_1t'][0] / med['ours'][0]:.2f}x wall")
    if "ours_zlib" in med:
        print(f"with zlib instead of ISA-L: {med['baseline'][0] / med['ours_zlib'][0]:.1f}x the baseline's wall")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
