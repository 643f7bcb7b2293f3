"""evaluate: score every trained model once on the test split; compare; predict the unlabeled rows.

python stages/evaluate.py --split data/processed/split --models models --ingest-report reports/ingest.json \
    --metrics reports/metrics.json --comparison reports/model_comparison.md --submission reports/submission.csv \
    --out reports/evaluation --mistakes reports/mistakes --serving reports/serving.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ferops.config import load_params, number, section
from ferops.constants import TTA_SETTINGS
from ferops.errors import ConfigError
from ferops.runner import run


def main() -> None:
    """Parse paths, evaluate all models, write metrics.json, the comparison table, the submission and serving.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", required=True, type=Path, help="folder with train.npz, val.npz, test.npz and predict.npz")
    ap.add_argument("--models", required=True, type=Path, help="folder with baselines/*/ and deep/*/")
    ap.add_argument("--ingest-report", required=True, type=Path)
    ap.add_argument("--metrics", required=True, type=Path, help="reports/metrics.json (DVC metrics)")
    ap.add_argument("--comparison", required=True, type=Path, help="markdown table of all models")
    ap.add_argument("--submission", required=True, type=Path, help="id,emotion CSV for the unlabeled rows")
    ap.add_argument("--out", required=True, type=Path, help="folder for the comparison chart (model_comparison.png) and, per model <m>/, the test "
                    "confusion matrix (PNG + CSV), calibration plot and the val mistakes gallery (PNG)")
    ap.add_argument("--mistakes", type=Path, help="folder for each model's <m>/mistakes_val.csv (every val error, "
                    "most confident first); default: `mistakes` beside --out")
    ap.add_argument("--serving", required=True, type=Path, help="per deep model, the TTA mode and temperatures the "
                    "register stage serves (reports/serving.json)")
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    params = load_params(args.params)
    cfg = section(params, "evaluate")
    # a mistyped value (`batch_size: big`) fails here, naming its key, before TensorFlow and the data load
    tta, batch_size = str(cfg.get("tta", "auto")), number(cfg, "evaluate", "batch_size", 512, whole=True, low=1)
    if tta not in TTA_SETTINGS:
        raise ConfigError(f"params.yaml evaluate.tta={tta!r}: use one of {', '.join(TTA_SETTINGS)}.")

    from ferops.data.io import load_npz, read_json, write_json
    from ferops.evaluation import (comparison_markdown, declared_models, discover_models, evaluate_all, load_predict,
                                   metrics_summary, serving_summary, write_submission)
    from ferops.tracking import init_tracking

    ingest = read_json(args.ingest_report)
    test, val = load_npz(args.split / "test.npz"), load_npz(args.split / "val.npz")
    predict = load_predict(args.split / "predict.npz")
    entries = discover_models(args.models, declared_models(params))  # not a removed model's leftover folder
    init_tracking()
    results, labels = evaluate_all(entries, test, predict, args.out, tta=tta, batch_size=batch_size, val=val,
                                   mistakes_dir=args.mistakes, train_pixels=load_npz(args.split / "train.npz").pixels)
    write_json(metrics_summary(results), args.metrics)
    write_json(serving_summary(results, tta), args.serving)
    args.comparison.parent.mkdir(parents=True, exist_ok=True)
    args.comparison.write_text(comparison_markdown(results, tta, ingest))
    write_submission(predict.source_id, labels, args.submission)
    print(f"evaluated {len(results)} models on {int(test.labeled.sum())} test images → {args.metrics}, "
          f"{args.comparison}; {len(labels)} unlabeled rows predicted → {args.submission}")


if __name__ == "__main__":
    run(main)
