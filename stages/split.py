"""split stage: train/val/test/predict .npz files with an exact-duplicate leakage check → reports/split.json."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ferops.config import load_params, number, section
from ferops.data.io import load_npz, read_json, save_npz, write_json
from ferops.errors import DataError
from ferops.runner import run

log = logging.getLogger("ferops.split")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, help="canonical dataset (.npz) from ingest")
    ap.add_argument("--validation", required=True, help="reports/validation.json from validate")
    ap.add_argument("--out", required=True, help="folder for {train,val,test,predict}.npz")
    ap.add_argument("--report", required=True, help="split report (JSON)")
    ap.add_argument("--figures", required=True, help="folder for split_hist.png")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()

    from ferops.data.split import split_dataset
    from ferops.plots import class_histogram

    validation = read_json(args.validation)
    if not validation.get("success", False):
        raise DataError(f"{args.validation}: the data failed validation — fix the critical checks listed there, "
                        "then run `dvc repro` again.")
    p = section(load_params(args.params), "split")
    seed, val_share = number(p, "split", "seed", 42, whole=True), number(p, "split", "val_from_train", 0.1, low=0, high=1)
    data = load_npz(args.data)
    parts, report = split_dataset(data, strategy=p.get("strategy", "usage"), fractions=p.get("fractions"),
                                  duplicates=p.get("duplicates", "report"), seed=seed, val_from_train=val_share,
                                  drop_blank=bool(p.get("drop_blank", False)))
    if report["val_carved_from_train"]:
        log.warning("no PublicTest rows: %d train rows (split.val_from_train) became the validation split",
                    report["val_carved_from_train"])
    for name, part in parts.items():
        save_npz(part, Path(args.out) / f"{name}.npz")
    report["validation_suite"] = validation.get("suite")
    write_json(report, args.report)
    class_histogram(report["per_class"], Path(args.figures) / "split_hist.png", title="Images per class and split")
    d = report["duplicates"]
    log.info("split %s: %s; duplicates (%s): %d groups across splits %s; %d duplicate groups in all have "
             "conflicting labels; dropped %s",
             report["strategy"], report["n"], d["mode"], d["cross_split_groups"], d["cross_split_pairs"],
             d["conflicting_label_groups"], d["dropped"])


if __name__ == "__main__":
    run(main)
