"""Training throughput (images/s) of deep-model variants, measured side by side in one process.

    python benchmarks/throughput.py --model resnet \
        --variant base= --variant noaug=online_aug.rotate_deg=0,online_aug.zoom=0,online_aug.translate=0 \
        --variant xla=jit_compile=true --rounds 3 --steps 20

Each variant is train_deep.models.<model> (merged over common) plus `key=value` overrides (dotted keys,
YAML values). Variants take turns one train step at a time (`--rounds` x `--steps` steps each, the order
flipped every turn), so the shared host's noise hits them alike; printed per variant: the median step as
images/s, and the median of its step-by-step ratios to the first variant's (the paired figure to quote).
`--fit-steps N` also trains each variant through `model.fit` over `make_dataset` (N batches of the first variant's
size, the same random images for all, each variant batching them at its own batch size; 2 timed epochs after a warm-up,
variants one after the other): the input path and Keras' per-step loop that train_on_batch skips.
Random pixels: speed only, no accuracy.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, body = text.partition("=")
    overrides: dict = {}
    # split on commas outside [...] / {...} so list values like stages=[2,2,2,2] survive
    for item in filter(None, re.split(r",(?![^\[{]*[\]}])", body)):
        key, _, value = item.partition("=")
        node = overrides
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return name, overrides


def compiled_model(cfg: dict, steps_per_epoch: int = 100, epochs: int = 10):
    """The variant's model, built and compiled as training compiles it (precision, optimizer and LR schedule, label
    smoothing, steps per execution, optional XLA). Returns (model, the schedule or float learning rate)."""
    import keras

    from ferops.models.zoo import build_model
    from ferops.training import choose_precision, lr_schedule, make_optimizer, set_seeds, steps_per_execution

    set_seeds(0)
    keras.mixed_precision.set_global_policy(choose_precision(cfg.get("precision", "auto")))
    model = build_model(cfg, seed=0)
    if any(layer.name == "low_res" for layer in model.layers):
        model.get_layer("low_res").enabled = True  # time the low-resolution phase of progressive resizing
    schedule = lr_schedule(cfg, steps_per_epoch, epochs)
    model.compile(optimizer=make_optimizer(cfg, schedule), jit_compile=bool(cfg.get("jit_compile", False)),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
                  steps_per_execution=steps_per_execution(cfg))
    return model, schedule


def fit_throughput(runs: dict, fit_steps: int) -> dict[str, float]:
    """Images/s of each variant through `model.fit` over `make_dataset`: the real input path (tf.data shuffle/batch/
    cast, Keras' epoch loop) that train_on_batch on one batch skips. The same `fit_steps` x (first variant's batch)
    random images for every variant, each batched at its own batch size (a batch_size variant trains at its batch) and
    mixed as training mixes it (a batch_mix variant pays for its cutmix/mixup, as train_keras hands it to make_dataset)."""
    from ferops.training import make_dataset, train_mix

    rng = np.random.default_rng(1)
    n = fit_steps * len(next(iter(runs.values()))["x"])
    pixels, labels = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8), rng.integers(0, 7, n)
    out = {}
    for name, r in runs.items():
        ds = make_dataset(pixels, labels, len(r["x"]), shuffle=True, mix=train_mix(r["cfg"]))
        r["model"].fit(ds, epochs=1, verbose=0)  # warm-up: the dataset's first pass
        t0 = time.perf_counter()
        r["model"].fit(ds, epochs=2, verbose=0)
        out[name] = round(2 * n / (time.perf_counter() - t0), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--variant", action="append", default=[], help="name=key=value,key=value (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="timed train steps per variant per round (--rounds x --steps in all)")
    ap.add_argument("--fit-steps", type=int, default=0,
                    help="also time each variant through model.fit over make_dataset (this many batches of the first variant's size; "
                         "2 epochs after 1 warm-up)")
    args = ap.parse_args()

    from ferops.runner import tf_environment

    tf_environment()  # the project's TF settings (oneDNN on); override with TF_ENABLE_ONEDNN_OPTS=0
    from ferops.config import deep_merge, load_params
    from ferops.training import mix_config

    params = load_params(args.params)
    if args.model not in params["train_deep"]["models"]:
        sys.exit(f"error: --model {args.model}: not a model of train_deep.models in {args.params} "
                 f"({', '.join(params['train_deep']['models'])})")
    import keras

    base = deep_merge(params["train_deep"]["common"], params["train_deep"]["models"][args.model])
    variants = [parse_variant(v) for v in (args.variant or ["base="])]
    for _name, over in variants:  # a malformed batch_mix (--fit-steps uses it) is one error line before minutes of timing
        mix_config(deep_merge(base, over))
    runs = {}
    for name, over in variants:
        cfg = deep_merge(base, over)
        batch = int(cfg.get("batch_size", 128))
        model, _ = compiled_model(cfg)
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (batch, 48, 48, 1)).astype(np.float32)
        y = keras.utils.to_categorical(rng.integers(0, 7, batch), 7)
        for _ in range(3):
            model.train_on_batch(x, y)  # trace + warm up
        runs[name] = {"model": model, "cfg": cfg, "x": x, "y": y, "s": []}
    order = list(runs.items())
    for turn in range(args.rounds * args.steps):
        for _name, r in (order if turn % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            r["model"].train_on_batch(r["x"], r["y"])
            r["s"].append(time.perf_counter() - t0)
    first = order[0][1]
    out = {}
    for name, r in runs.items():
        ips = len(r["x"]) / statistics.median(r["s"])
        # per-image time of the first variant over this one's, step by step: > 1 = faster than the first
        ratio = statistics.median((a / len(first["x"])) / (b / len(r["x"])) for a, b in zip(first["s"], r["s"]))
        out[name] = {"images_per_s": round(ips, 1), "ratio": round(ratio, 3), "params": r["model"].count_params(),
                     "step_s_p10_p90": [round(float(v), 3) for v in np.percentile(r["s"], [10, 90])]}
        print(f"{name:>16}: {ips:8.1f} img/s  x{ratio:.3f} paired  ({r['model'].count_params():,} params)", flush=True)
    if args.fit_steps:
        for name, ips in fit_throughput(runs, args.fit_steps).items():
            out[name]["fit_images_per_s"] = ips
            print(f"{name:>16}: {ips:8.1f} img/s through model.fit", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    from ferops.runner import run

    run(main)  # a ferops error (missing model, data or store) is one `error:` line
