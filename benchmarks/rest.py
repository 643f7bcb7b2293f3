"""Score and time a served model over REST: PrivateTest accuracy and images/s through `/invocations`.

    make serve &                                     # the champion on 127.0.0.1:5001 (or any `mlflow models serve`)
    python benchmarks/rest.py --tta auto             # auto = the mode recorded at registration
    python benchmarks/rest.py --tta none --batch 64 --url http://127.0.0.1:5001/invocations

Sends the labeled PrivateTest rows of --data in the FER2013 CSV format (a `pixels` column of 2,304 grey levels),
--batch rows per request, one request at a time; reports accuracy, macro-F1, images/s over the whole pass (JSON
encoding, HTTP and the model together) and the median latency of a one-row request. `served_by`: the `model` each
answer names (`models:/<name>/<N>` under `ferops serve`; null from a server whose model predates that column).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fer2013.csv.gz"


def post(url: str, rows: list[str], tta: str) -> list[dict]:
    """One `/invocations` request; the served predictions (dicts with `label`), or exit with the server's message."""
    import requests

    payload = {"dataframe_split": {"columns": ["pixels"], "data": [[r] for r in rows]}, "params": {"tta": tta}}
    try:
        r = requests.post(url, json=payload, timeout=600)
    except requests.ConnectionError:
        sys.exit(f"error: nothing answers at {url} — start the server first (make serve) or pass --url.")
    if r.status_code != 200:
        sys.exit(f"error: {url} answered {r.status_code}: {r.text[:500]}")
    return r.json()["predictions"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:5001/invocations")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--tta", default="none", help="request param: none | flip | tencrop | shift | auto")
    ap.add_argument("--batch", type=int, default=256, help="rows per request")
    ap.add_argument("--single-runs", type=int, default=30, help="one-row requests timed for the latency")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"skip: real data not found at {args.data} (put fer2013.csv.gz there, or pass --data)")

    sys.path.insert(0, str(Path(__file__).parent))
    from train import read_splits

    from ferops.metrics import classification_metrics

    test = read_splits(args.data)["test"]
    test = test.subset(test.labeled)
    rows = [" ".join(map(str, p.ravel())) for p in test.pixels.astype(np.uint8)]
    post(args.url, rows[:1], args.tta)  # warm-up (the first call loads/traces)
    t0 = time.perf_counter()
    answers = [p for i in range(0, len(rows), args.batch) for p in post(args.url, rows[i:i + args.batch], args.tta)]
    wall = time.perf_counter() - t0
    labels = [p["label"] for p in answers]
    served = sorted({str(p["model"]) for p in answers if p.get("model")})  # more than one: the server changed mid-pass
    lat = []
    for i in range(args.single_runs):
        t = time.perf_counter()
        post(args.url, rows[i:i + 1], args.tta)
        lat.append(time.perf_counter() - t)
    m = classification_metrics(test.emotion.astype(int), np.asarray(labels))
    out = {"url": args.url, "served_by": ", ".join(served) or None, "tta": args.tta, "rows": len(rows),
           "batch": args.batch, "test_accuracy": round(m["accuracy"], 4), "test_macro_f1": round(m["macro_f1"], 4),
           "images_per_s": round(len(rows) / wall, 1),
           "one_row_median_ms": round(1000 * statistics.median(lat), 1), "command": "python " + " ".join(sys.argv)}
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
