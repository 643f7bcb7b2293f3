"""Cost of each online augmentation on the Keras backend in use: side-by-side fits of the GPU recipe's ResNet.

    KERAS_BACKEND=jax python benchmarks/aug_speed.py [--data .gpu/fer2013.npz.xz] [--steps 40]

Found that Keras' RandomRotation/Translation/Zoom cost ~100x a whole ResNet-18 step on JAX (H100), which is
why ferops warps with its own RandomAffine on non-TensorFlow backends (benchmarks/RESULTS.md, "GPU recipe").
Each case fits 2 epochs of `--steps` steps (batch 128) on real faces; the second epoch is timed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFF = {"hflip": False, "rotate_deg": 0, "translate": 0, "zoom": 0, "contrast": 0, "crop": 0, "erasing": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / ".gpu" / "fer2013.npz.xz"), help="CSV or packed splits")
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import keras
    from train import read_splits

    from ferops.config import deep_merge, load_params
    from ferops.models.zoo import build_model
    from ferops.training import (
        choose_precision,
        make_dataset,
        lr_schedule,
        make_optimizer,
        resolve_config,
    )

    params = deep_merge(load_params(ROOT / "params.yaml"), load_params(ROOT / "profiles" / "gpu.yaml"))
    base = resolve_config(params["train_deep"]["common"], params["train_deep"]["models"]["resnet"])
    train = read_splits(args.data)["train"]
    n = 128 * args.steps
    pixels, labels = train.pixels[:n], train.emotion[:n].astype(int)

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.last = time.perf_counter() - self.t0

    cases = {
        "no augmentation": OFF,
        "flip + crop + erasing": {**OFF, "hflip": True, "crop": 44, "erasing": 0.5},
        "+ rotation (built-in)": {**OFF, "hflip": True, "crop": 44, "erasing": 0.5, "rotate_deg": 15, "warp": "builtin"},
        "full profile, built-in warps": {**base["online_aug"], "warp": "builtin"},
        "full profile, affine warp": {**base["online_aug"], "warp": "affine"},
    }
    print(f"backend {keras.backend.backend()}, precision {choose_precision(base.get('precision', 'auto'))}")
    for name, aug in cases.items():
        cfg = {**base, "online_aug": aug}
        keras.backend.clear_session()  # first: it resets the dtype policy too
        keras.mixed_precision.set_global_policy(choose_precision(cfg.get("precision", "auto")))
        model = build_model(cfg, seed=1)
        model.compile(optimizer=make_optimizer(cfg, lr_schedule(cfg, args.steps, 2)), loss="categorical_crossentropy")
        timer = Timer()
        model.fit(make_dataset(pixels, labels, 128, shuffle=True), epochs=2, verbose=0, callbacks=[timer])
        print(f"{name:32s} {timer.last / args.steps * 1000:8.1f} ms/step  {n / timer.last:8.0f} img/s", flush=True)


if __name__ == "__main__":
    from ferops.runner import run

    run(main)  # a ferops error (missing model, data or store) is one `error:` line
