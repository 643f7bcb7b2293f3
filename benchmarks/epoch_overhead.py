"""Costs that `model.fit` pays once per epoch rather than per step, each measured side by side in one process.

    python benchmarks/epoch_overhead.py --model resnet --epochs 4 --steps 40

- tf.data's autotuner. `make_dataset` turns it off; the `autotune` arm turns it back on for the same pipeline. Each arm
  trains `--epochs` epochs in one `fit` call, as training does, twice, the order flipped the second time. For each arm
  the script prints the median and mean epoch, counts the stalled epochs (those whose first call took more than twice
  the median of the epoch's other calls) and sums the stalls' excess over that median.
- Re-aiming the LR schedule, which `time_budget_min` does after most epochs on a noisy host. The schedule's horizon is
  a variable that the traced step reads (`variable` arm: set `total_steps`). Before that change the step was re-traced
  (`retrace` arm: the same, plus `make_train_function(force=True)`). Both re-aim after every epoch, the same way.

Random pixels: this measures speed only, not accuracy. An epoch is `--steps` batches of the model's batch size.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--epochs", type=int, default=4, help="epochs per fit call; each arm runs two calls")
    ap.add_argument("--steps", type=int, default=40, help="batches per epoch")
    ap.add_argument("--parts", nargs="+", choices=["autotune", "reaim"], default=["autotune", "reaim"])
    args = ap.parse_args()

    from ferops.runner import tf_environment

    tf_environment()
    from ferops.config import deep_merge, load_params

    params = load_params(args.params)
    if args.model not in params["train_deep"]["models"]:
        sys.exit(f"error: --model {args.model}: not a model of train_deep.models in {args.params} "
                 f"({', '.join(params['train_deep']['models'])})")
    import keras
    import tensorflow as tf

    sys.path.insert(0, str(Path(__file__).parent))
    from throughput import compiled_model

    from ferops.training import make_dataset

    cfg = deep_merge(params["train_deep"]["common"], params["train_deep"]["models"][args.model])
    batch = int(cfg.get("batch_size", 128))
    model, schedule = compiled_model(cfg, args.steps, 10 * args.epochs)
    rng = np.random.default_rng(0)
    n = args.steps * batch
    ds = make_dataset(rng.integers(0, 256, (n, 48, 48), dtype=np.uint8), rng.integers(0, 7, n), batch, shuffle=True)
    on = tf.data.Options()
    on.autotune.enabled = True

    class EpochCalls(keras.callbacks.Callback):
        """Per epoch: its wall time and whether its first call stalled. With `reaim`, re-aim the schedule after every
        epoch as TimeBudget does (`retrace`: the pre-variable way, re-tracing the step as well)."""

        def __init__(self, reaim: str | None = None):
            super().__init__()
            self.reaim, self.epochs, self.stalls, self.stall_s = reaim, [], 0, 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.t = [time.perf_counter()]

        def on_train_batch_end(self, batch, logs=None):
            self.t.append(time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            dt = np.diff(self.t)
            self.epochs.append(self.t[-1] - self.t[0])
            if len(dt) > 1 and dt[0] > 2 * np.median(dt[1:]):
                self.stalls += 1
                self.stall_s += float(dt[0] - np.median(dt[1:]))
            if self.reaim:
                schedule.total_steps = schedule.total_steps + args.steps
                if self.reaim == "retrace":
                    self.model.make_train_function(force=True)

    def compare(arms: dict) -> dict:
        """Each arm trains `--epochs` epochs in one `fit` call (as training does: one call, many epochs), twice,
        the arms' order flipped the second time."""
        seen = {name: EpochCalls(reaim) for name, (_, reaim) in arms.items()}
        for turn in range(2):
            for name, (d, _) in (list(arms.items()) if turn == 0 else list(arms.items())[::-1]):
                model.fit(d, epochs=args.epochs, verbose=0, callbacks=[seen[name]])
        res = {}
        for name, c in seen.items():
            res[name] = {"median_epoch_s": round(statistics.median(c.epochs), 2),
                         "mean_epoch_s": round(statistics.mean(c.epochs), 2), "stalled_epochs": c.stalls,
                         "stalls_s": round(c.stall_s, 1), "epochs": len(c.epochs)}
            print(f"{name:>22}: epoch median {res[name]['median_epoch_s']:.2f} s, mean {res[name]['mean_epoch_s']:.2f} s; "
                  f"first call stalled in {c.stalls} of {len(c.epochs)} epochs, {c.stall_s:.1f} s in all", flush=True)
        return res

    model.fit(ds, epochs=1, verbose=0)  # warm-up: trace, fill the cache
    out = {}
    if "autotune" in args.parts:
        out.update(compare({"no autotune": (ds, None), "autotune": (ds.with_options(on), None)}))
    if "reaim" in args.parts and not isinstance(schedule, float):  # a plateau schedule has nothing to re-aim
        out.update(compare({"re-aim via variable": (ds, "variable"), "re-aim via re-trace": (ds, "retrace")}))
    print(json.dumps(out))


if __name__ == "__main__":
    from ferops.runner import run

    run(main)  # a ferops error (missing model, data or store) is one `error:` line
