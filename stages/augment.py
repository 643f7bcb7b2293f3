"""augment stage: offline augmentation + class balancing of the train split → augmented train .npz."""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from ferops.config import load_params, number, section
from ferops.data.io import load_npz, save_npz, write_json
from ferops.runner import run

log = logging.getLogger("ferops.augment")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train", required=True, help="train split (.npz) from the split stage")
    ap.add_argument("--out", required=True, help="augmented train set (.npz)")
    ap.add_argument("--report", required=True, help="augment report (JSON)")
    ap.add_argument("--preview", required=True, help="augmentation preview (PNG)")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()

    from ferops.data.augment import augment_batch, augment_dataset, check_ops, preview_rows
    from ferops.data.io import class_counts
    from ferops.plots import augmentation_preview

    p = section(load_params(args.params), "augment")
    seed, ops = number(p, "augment", "seed", 42, whole=True), check_ops(p.get("ops"))
    copies = number(p, "augment", "copies", 1, whole=True, low=0)
    target = number(p, "augment", "balance_target", 0.5, low=0)
    preview_n = number(p, "augment", "preview_n", 8, whole=True, low=1)  # before the work: 0 fails in the plot
    train = load_npz(args.train)
    t0 = time.perf_counter()
    out, kind = augment_dataset(train, ops, copies=copies, balance=p.get("balance", "none"),
                                balance_target=target, seed=seed)
    wall = time.perf_counter() - t0
    save_npz(out, args.out, kind=kind)  # kind: 0 original, 1 balancing row, 2 augmented copy
    rows = preview_rows(train.emotion, preview_n, seed)
    rng = np.random.default_rng(seed + 1)
    augmentation_preview(train.pixels[rows], [augment_batch(train.pixels[rows], ops, rng) for _ in range(6)], args.preview)
    report = {
        "rows_in": len(train), "rows_out": len(out),
        "rows_by_kind": {"original": int((kind == 0).sum()), "balance": int((kind == 1).sum()),
                         "augmented": int((kind == 2).sum())},
        "per_class_before": class_counts(train.emotion), "per_class_after": class_counts(out.emotion),
        "copies": copies, "balance": p.get("balance", "none"),
        "balance_target": target, "seed": seed, "ops": ops, "wall_s": round(wall, 2),
    }
    write_json(report, args.report)
    log.info("augmented %d → %d rows in %.1f s (balance=%s); per class %s", len(train), len(out), wall,
             report["balance"], report["per_class_after"])


if __name__ == "__main__":
    run(main)
