"""`ferops predict --faces` on a labelled image folder: accuracy and photos/s of each face mode.

    python benchmarks/face_modes.py --model models/deep/resnet/model.keras
    python benchmarks/face_modes.py --model models:/fer2013-resnet@champion \
        --folder ../shared/data/fer2013_images_sample/test --usage all

The folder holds `<class>/*.jpg` (the Kaggle image release's layout; class names as in ferops.constants.EMOTIONS,
any case). For each mode — whole (the image is one face crop), detect (OpenCV's cascade, then the square around
each face), auto (whole for small near-square images, as `ferops predict` does by default) — it runs
`predict_photos` over every image (no annotated copies) and reports: accuracy of the first face's label against
the folder (photos with no face found count as wrong), how many photos had a face, and photos/s (median of
--runs, model loaded and warm). `--group-ablation` times the default mode also with one model call per photo
(PHOTO_GROUP = 1) beside the grouped default, alternating, to show what grouping buys.

`--usage PublicTest` (the default) takes only the files named `PublicTest_*` (the Kaggle release's validation
images): a choice such as the default face mode is made on val, never on the PrivateTest files beside them; `--usage
all` takes every file (a folder of your own).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def labelled_images(folder: Path, usage: str = "all") -> tuple[list[Path], np.ndarray]:
    """Image paths under folder/<class>/ (named `<usage>_*` unless usage is `all`) and their class indices (folder
    name → EMOTIONS, case-insensitive)."""
    from ferops.constants import EMOTIONS
    from ferops.inference import list_photos

    names = [e.lower() for e in EMOTIONS]
    paths = [p for p in list_photos([folder]) if p.parent.name.lower() in names
             and (usage == "all" or p.name.startswith(f"{usage}_"))]
    if not paths:
        sys.exit(f"error: no images under {folder}/<class>/ (classes: {', '.join(names)})"
                 + ("" if usage == "all" else f" named {usage}_*; --usage all takes every file"))
    return paths, np.array([names.index(p.parent.name.lower()) for p in paths])


def score(results: list[dict], labels: np.ndarray) -> dict:
    """Accuracy of each photo's first face against its folder label; photos without a face count as wrong."""
    pred = np.array([r["faces"][0]["label"] if r["faces"] else -1 for r in results])
    return {"accuracy": round(float((pred == labels).mean()), 4), "photos": len(results),
            "with_face": int((pred >= 0).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a .keras file, model directory or models:/name@alias URI")
    ap.add_argument("--folder", type=Path, default=ROOT.parent / "shared/data/fer2013_images_sample/test")
    ap.add_argument("--tta", default="auto", help="none | flip | tencrop | shift | auto (the recorded mode)")
    ap.add_argument("--usage", default="PublicTest", help="PublicTest (default: the val files) | PrivateTest | "
                    "Training | all (every file)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--group-ablation", action="store_true")
    args = ap.parse_args()

    from ferops.runner import start_tensorflow

    start_tensorflow()
    from ferops import inference as inf

    paths, labels = labelled_images(args.folder, args.usage)
    clf = inf.load_classifier(args.model, ROOT / "params.yaml")
    tta = clf.resolve(args.tta)
    report: dict = {"folder": str(args.folder), "usage": args.usage, "model": args.model, "tta": tta, "machine": platform.processor()
                    or platform.machine(), "modes": {}}
    for mode in inf.FACE_MODES:
        res = inf.predict_photos(paths, clf.model, None, tta=tta, faces=mode)  # also the warm-up
        secs = []
        for _ in range(args.runs):
            t = time.perf_counter()
            inf.predict_photos(paths, clf.model, None, tta=tta, faces=mode)
            secs.append(time.perf_counter() - t)
        report["modes"][mode] = {**score(res, labels), "photos_per_s": round(len(paths) / statistics.median(secs), 1)}
        print(mode, report["modes"][mode], file=sys.stderr)
    if args.group_ablation:
        grouped, single = [], []
        default_group = inf.PHOTO_GROUP
        for _ in range(args.runs):
            for size, out in ((default_group, grouped), (1, single)):
                inf.PHOTO_GROUP = size
                t = time.perf_counter()
                inf.predict_photos(paths, clf.model, None, tta=tta, faces="auto")
                out.append(time.perf_counter() - t)
        inf.PHOTO_GROUP = default_group
        report["group_ablation"] = {"grouped_photos_per_s": round(len(paths) / statistics.median(grouped), 1),
                                    "per_photo_photos_per_s": round(len(paths) / statistics.median(single), 1),
                                    "speedup": round(statistics.median(single) / statistics.median(grouped), 2)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    from ferops.runner import run

    run(main)  # a ferops error (missing model, data or store) is one `error:` line
