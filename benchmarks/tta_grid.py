"""How much denser test-time augmentation than the built-in modes would give — on val only.

    python benchmarks/tta_grid.py models/deep/resnet/model.keras            # val from ../shared/data/fer2013.csv.gz
    python benchmarks/tta_grid.py MODEL --data data/processed/split/val.npz --max-shift 3

Predicts every whole-image shift of -k..+k px in both axes (and ten-crop's corners), each with its mirror, once
((2k+1)^2 x 2 views for a 44-px crop), then reports the val accuracy of the built-in modes (none, flip, tencrop, shift;
their views as ferops.tta makes them) beside denser view sets made from the same predictions. The test split is
never read: this answers whether a new mode is worth adding, a choice made on val.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def view_sets(k: int, crop: int) -> dict[str, list[tuple[int, int]]]:
    """Named sets of (dy, dx) shifts (each used with its mirror): the built-in modes exactly as
    `ferops.tta` makes them for a model with this crop, then denser sets up to ±k px."""
    from ferops.tta import TTA_VIEW_MODES, _view_offsets

    sets = {m: [(0, 0), *_view_offsets(m, crop)] for m in TTA_VIEW_MODES}
    sets["tencrop+shift"] = [(0, 0), *_view_offsets("all", crop)]
    for r in range(2, k + 1):
        sets[f"all {2 * r + 1}x{2 * r + 1} (±{r} px)"] = [(a, b) for a in range(-r, r + 1) for b in range(-r, r + 1)]
        sets[f"3x3 grid at ±{r} px"] = [(a, b) for a in (-r, 0, r) for b in (-r, 0, r)]
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a saved .keras model (e.g. models/deep/resnet/model.keras)")
    ap.add_argument("--data", default=None, help="FER2013 CSV (its PublicTest rows) or a split .npz (default: the shared CSV)")
    ap.add_argument("--max-shift", type=int, default=3, help="largest shift k of the denser sets in px (views: (2k+1)^2 x 2)")
    args = ap.parse_args()
    if not Path(args.model).is_file():
        sys.exit(f"error: {args.model}: no such .keras file")

    sys.path.insert(0, str(Path(__file__).parent))
    from train import DEFAULT_DATA, read_splits

    from ferops.data.io import load_npz
    from ferops.inference import load_keras
    from ferops.models.zoo import crop_size

    data = args.data or str(DEFAULT_DATA)
    val = load_npz(data) if data.endswith(".npz") else read_splits(data)["val"]
    keep = val.labeled
    x, y = val.pixels[keep].astype(np.float32)[..., None], val.emotion[keep].astype(int)
    model = load_keras(args.model)
    crop = crop_size(model)
    sets = view_sets(args.max_shift, crop)
    t0 = time.perf_counter()
    probs: dict[tuple[int, int, bool], np.ndarray] = {}
    for dy, dx in dict.fromkeys(o for shifts in sets.values() for o in shifts):  # each shift predicted once
        b = np.roll(x, (dy, dx), axis=(1, 2))
        probs[dy, dx, False] = model.predict(b, batch_size=512, verbose=0).astype(np.float64)
        probs[dy, dx, True] = model.predict(b[:, :, ::-1], batch_size=512, verbose=0).astype(np.float64)
    print(f"{len(probs)} views of {len(y)} val faces in {time.perf_counter() - t0:.0f} s (model crop {crop or 'none'})")
    print(f"{'views':>5}  {'val acc':>7}  set")
    for name, shifts in sets.items():
        mirrors = (False,) if name == "none" else (False, True)
        p = sum(probs[a, b, m] for a, b in shifts for m in mirrors)
        print(f"{len(shifts) * len(mirrors):5d}  {100 * float((p.argmax(1) == y).mean()):6.2f}%  {name}")


if __name__ == "__main__":
    from ferops.runner import run

    run(main)  # a ferops error (missing model, data or store) is one `error:` line
