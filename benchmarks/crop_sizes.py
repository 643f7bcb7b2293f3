"""Val accuracy of one trained deep model at several test-time centre-crop sizes (same weights, val split only).

    python benchmarks/crop_sizes.py benchmarks/out/resnet18_wd --crops 40 44 46 48

The directory is a `benchmarks/train.py` output (result.json + model/model.keras). Each size re-builds the
inference network with `online_aug.crop` set to it (48 = no crop) and copies the trained weights; the
network is fully convolutional up to global pooling, so any size runs. The test split is not read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a benchmarks/train.py output directory")
    ap.add_argument("--crops", type=int, nargs="+", default=[40, 44, 46, 48])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fer2013.csv.gz"))
    args = ap.parse_args()
    run = Path(args.run_dir)
    if not ((run / "result.json").is_file() and (run / "model" / "model.keras").is_file()):
        sys.exit(f"error: {run} holds no trained run (result.json + model/model.keras of benchmarks/train.py).")

    from ferops.runner import tf_environment

    tf_environment()
    import keras

    from ferops.models.zoo import custom_objects, inference_model
    from ferops.tta import predict_proba

    sys.path.insert(0, str(Path(__file__).parent))
    from train import read_splits

    cfg = json.loads((run / "result.json").read_text())["config"]
    trained = keras.models.load_model(run / "model" / "model.keras", custom_objects=custom_objects(), compile=False)
    val = read_splits(args.data)["val"]
    y = val.emotion.astype(int)
    rows = {}
    for crop in args.crops:
        # crop 48 (the full image) means no crop layer, as in input_block
        net = inference_model(trained, {**cfg, "online_aug": {**cfg.get("online_aug", {}), "crop": crop}})
        rows[crop] = {tta: round(float((predict_proba(net, val.pixels, tta=tta).argmax(1) == y).mean()), 4)
                      for tta in ("none", "flip")}
        print(f"crop {crop:>2}: val {rows[crop]['none']:.4f}  flip {rows[crop]['flip']:.4f}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    from ferops.runner import run

    run(main)  # a ferops error (missing model, data or store) is one `error:` line
