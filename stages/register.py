"""register: put the best ResNet (by validation accuracy) in the MLflow registry; challenger/champion aliases.

python stages/register.py --metrics reports/metrics.json --models models/deep --ingest-report reports/ingest.json \
    --split data/processed/split --split-report reports/split.json --serving reports/serving.json \
    --out reports/register.json --card reports/model_card.md
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ferops.config import load_params, section
from ferops.runner import run


def main() -> None:
    """Parse paths, register the best candidate, write reports/register.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", required=True, type=Path, help="reports/metrics.json from evaluate (test numbers)")
    ap.add_argument("--models", required=True, type=Path, help="folder of trained deep models (models/deep)")
    ap.add_argument("--ingest-report", required=True, type=Path, help="reports/ingest.json (data sha256 for tags)")
    ap.add_argument("--split", type=Path, default=None,
                    help="data/processed/split: the digest of its val.npz is tagged, so a champion validated on another "
                         "val split is not compared by accuracy")
    ap.add_argument("--split-report", type=Path, default=None, help="reports/split.json (the model card says how "
                                                                   "val and test were made)")
    ap.add_argument("--serving", required=True, type=Path, help="reports/serving.json from evaluate: the TTA mode and "
                    "temperatures to serve each model with")
    ap.add_argument("--out", required=True, type=Path, help="reports/register.json")
    ap.add_argument("--card", type=Path, required=True,
                    help="the registered version's model card (also its description in the MLflow registry)")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()

    from ferops.data.io import read_json, write_json
    from ferops.registry import read_serving, register_best
    from ferops.tracking import init_tracking

    cfg = section(load_params(args.params), "register")
    init_tracking()
    report = register_best(args.models, read_json(args.metrics), read_json(args.ingest_report), cfg,
                           split_dir=args.split, split_report=read_json(args.split_report) if args.split_report else None,
                           experiment=os.environ.get("DVC_EXP_NAME") or None,  # set by `dvc exp run`
                           serving=read_serving(args.serving))
    args.card.parent.mkdir(parents=True, exist_ok=True)
    args.card.write_text(report.pop("model_card"), encoding="utf-8")
    write_json(report, args.out)
    print(f"{report['name']} v{report['version']} ({report['model']}, val {report['val_accuracy']:.4f}) "
          f"aliases {', '.join(report['aliases']) or '-'}; champion is v{report['champion_version']}: {report['reason']}")


if __name__ == "__main__":
    run(main)
