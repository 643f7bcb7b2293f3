"""Inference engines for the champion on CPU: the served Keras graph against TF Lite (XNNPACK) in fp32,
dynamic-range int8 and full int8 — throughput, one-face latency and val accuracy side by side.

    python benchmarks/engines.py --model <out>/resnet/model/model.keras

Why it exists: RESULTS.md's "Inference" named int8 post-training quantisation as the next way up; this
measures it (and the fp32 runtime swap) before anyone builds it in. The TF Lite interpreter comes from
`ai_edge_litert` when installed (pip install ai-edge-litert), else TensorFlow's own `tf.lite.Interpreter`.
Full int8 is calibrated on 300 train images; val = PublicTest; the test split is not read.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fer2013.csv.gz"
CHUNK = 256  # images per interpreter call (64-256 ran fastest here)


class Interpreted:
    """A TF Lite flatbuffer behind `predict_on_batch`, resized to each batch size."""

    def __init__(self, flatbuffer: bytes, threads: int):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            import tensorflow as tf

            Interpreter = tf.lite.Interpreter
        self.it = Interpreter(model_content=flatbuffer, num_threads=threads)  # its default is one thread
        self.inp = self.it.get_input_details()[0]["index"]
        self.out = self.it.get_output_details()[0]["index"]
        self.batch = -1

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        parts = []
        for i in range(0, len(x), CHUNK):
            part = np.ascontiguousarray(x[i:i + CHUNK], dtype=np.float32)
            if len(part) != self.batch:
                self.it.resize_tensor_input(self.inp, list(part.shape))
                self.it.allocate_tensors()
                self.batch = len(part)
            self.it.set_tensor(self.inp, part)
            self.it.invoke()
            parts.append(self.it.get_tensor(self.out).copy())
        return np.concatenate(parts)


def convert(model, mode: str, calibration: np.ndarray) -> bytes:
    """fp32 | dynamic (int8 weights) | int8 (weights and activations, calibrated) flatbuffer of a Keras model."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode != "fp32":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "int8":
        conv.representative_dataset = lambda: ([calibration[i:i + 1]] for i in range(len(calibration)))
    with contextlib.redirect_stdout(io.StringIO()):  # Keras' export prints its signature
        return conv.convert()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a trained .keras file (e.g. models/deep/resnet/model.keras)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="FER2013 CSV (val rows are scored)")
    ap.add_argument("--repeats", type=int, default=7, help="timed passes over 1,024 val images per engine")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    if not Path(args.model).is_file():
        sys.exit(f"error: {args.model}: no such .keras file")

    from ferops.runner import tf_environment

    tf_environment()
    sys.path.insert(0, str(Path(__file__).parent))
    from inference import machine, timed
    from train import read_splits

    from ferops.inference import load_keras, predict_proba

    splits = read_splits(args.data)
    xv = splits["val"].pixels.astype(np.float32)[..., None]
    yv = splits["val"].emotion.astype(int)
    rng = np.random.default_rng(0)
    train = splits["train"].pixels
    calibration = train[rng.choice(len(train), 300, replace=False)].astype(np.float32)[..., None]

    keras_model = load_keras(args.model)  # as served: BatchNormalization folded
    engines = {"keras (served)": keras_model}
    for mode in ("fp32", "dynamic", "int8"):
        t = time.perf_counter()
        engines[f"tflite {mode}"] = Interpreted(convert(keras_model, mode, calibration), args.threads)
        print(f"converted {mode} in {time.perf_counter() - t:.1f} s", flush=True)

    print(f"machine: {machine()}", flush=True)
    ref = predict_proba(keras_model, xv)
    x = xv[:1024]
    rates: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(args.repeats):  # engines take turns; a pause lets TF's spinning threads settle
        for name, model in engines.items():
            time.sleep(0.5)
            t = time.perf_counter()
            predict_proba(model, x)
            rates[name].append(len(x) / (time.perf_counter() - t))
    base = statistics.median(rates["keras (served)"])
    print(f"\n{'engine':16} {'images/s':>9} {'ratio':>6} {'1 face ms':>9} {'val acc':>8} {'agree':>7} {'max|Δp|':>8}")
    for name, model in engines.items():
        p = ref if model is keras_model else predict_proba(model, xv)
        one, _ = timed(lambda m=model: predict_proba(m, xv[:1]), 30)  # after one warm-up call
        ips = statistics.median(rates[name])
        print(f"{name:16} {ips:9.0f} {ips / base:6.2f} {1000 * statistics.median(one):9.2f} "
              f"{100 * (p.argmax(1) == yv).mean():8.2f} {100 * (p.argmax(1) == ref.argmax(1)).mean():6.1f}% "
              f"{np.abs(p - ref).max():8.1e}", flush=True)


if __name__ == "__main__":
    from ferops.runner import run

    run(main)  # a ferops error (missing model, data or store) is one `error:` line
