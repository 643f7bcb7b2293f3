"""Inference benchmark: champion batch throughput (images/s) and `ferops predict` latency for one photo.

    python benchmarks/inference.py                       # fresh default resnet from params.yaml (untrained: speed only)
    python benchmarks/inference.py --model models:/fer2013-resnet@champion
    python benchmarks/inference.py --model models/deep/resnet/model.keras --photo-runs 50
    python benchmarks/inference.py --tta tencrop         # (a) and (b) with test-time augmentation (10 views a face)
    python benchmarks/inference.py --model models:/fer2013-resnet@champion --tta auto   # as `ferops predict` runs it
    python benchmarks/inference.py --model <dir>/resnet/model --tta tencrop --score ../shared/data/fer2013.csv.gz

(a) throughput: `predict_on_batch` on batches of --batch raw 48x48 images (what FerPyfunc does per chunk),
    plus parsing FER2013 `pixels` strings (the REST/CSV input path); the model runs as `load_keras` serves it,
    BatchNormalization folded into the convolutions (`--fold-ablation`: beside the unfolded model and XLA;
    `--by-stage`: where the time goes — the served model cut after its stem and each stage, with each part's
    multiply-adds and achieved GFLOP/s, to tell a compute-bound model from one losing time outside its convolutions);
(b) latency: `predict_photos` on one photo — read, face detection, crop, classify, annotate, write —
    median over --photo-runs, on a real photo that scikit-image ships (512x512) and on a 4000x3000 upscale.
(c) `--score DATA`: the model's PrivateTest accuracy through this serving path (folded BN, `predict_proba`),
    single pass and under `--tta` — what the served champion answers, against evaluate's figures.
Targets: ≥ 1,000 images/s and ≤ 150 ms per photo on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def default_model(params_path: Path):
    """The default resnet of params.yaml, freshly built for inference (weights untrained: speed is the same)."""
    from ferops.config import load_params, section
    from ferops.models.zoo import build_model

    deep = section(load_params(params_path), "train_deep")
    cfg = {**(deep.get("common") or {}), **(deep["models"]["resnet"] or {})}
    return build_model(cfg, seed=0, inference=True), "fresh resnet from params.yaml (train_deep.models.resnet)"


def timed(fn, runs: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process-CPU seconds of `runs` calls (after one warm-up call)."""
    fn()
    wall, cpu = [], []
    for _ in range(runs):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu


def interleaved(calls: dict, repeats: int) -> dict:
    """Median wall seconds of each call, timed in turn `repeats` times (a slow spell of a shared host hits them all)."""
    secs: dict = {k: [] for k in calls}
    for _ in range(repeats):
        for k, call in calls.items():
            t = time.perf_counter()
            call()
            secs[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in secs.items()}


def throughput(model, batch: int, repeats: int, tta: str = "none") -> dict:
    """Images/s of predict_on_batch on `batch` raw images (each under `tta`'s views), and of parsing `pixels` strings."""
    from ferops.inference import parse_pixel_strings, predict_proba

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, 48, 48), dtype=np.uint8)
    secs, cpu = timed(lambda: predict_proba(model, x, batch_size=batch, tta=tta), repeats)
    strings = [" ".join(map(str, p.ravel())) for p in x]
    parse, _ = timed(lambda: parse_pixel_strings(strings), 3)
    return {"batch": batch, "repeats": repeats, "tta": tta, "median_s": statistics.median(secs),
            "images_per_s": batch / statistics.median(secs), "best_images_per_s": batch / min(secs),
            # CPU time is no steadier here: TF's worker threads spin while they wait for a busy core.
            "cpu_ms_per_image": 1000 * statistics.median(cpu) / batch,
            "parse_rows_per_s": batch / statistics.median(parse)}


def fold_ablation(model, batch: int, repeats: int) -> dict:
    """Side by side, batches interleaved: the model as built/saved vs `fold_batchnorm` of it (what
    `load_keras` serves), plus each with XLA (`jit_compile`). Median images/s per variant and ratios."""
    import keras

    from ferops.inference import predict_proba
    from ferops.models.zoo import fold_batchnorm

    x = np.random.default_rng(0).integers(0, 256, (batch, 48, 48), dtype=np.uint8)
    variants = {"bn": model, "folded": fold_batchnorm(model)}
    for name in list(variants):  # compile(jit_compile=True) changes a model: XLA runs on copies
        xla = keras.models.clone_model(variants[name])
        xla.set_weights(variants[name].get_weights())
        xla.compile(jit_compile=True)
        variants[f"{name}+xla"] = xla
    ref = predict_proba(variants["bn"], x[:64])
    diffs = {k: float(np.abs(predict_proba(m, x[:64]) - ref).max()) for k, m in variants.items()}
    for m in variants.values():  # warm-up at the timed batch size: XLA compiles (and TF traces) once per shape
        predict_proba(m, x, batch_size=batch)
    secs = interleaved({k: lambda m=m: predict_proba(m, x, batch_size=batch) for k, m in variants.items()}, repeats)
    ips = {k: batch / v for k, v in secs.items()}
    return {"batch": batch, "repeats": repeats, "images_per_s": ips, "vs_bn": {k: v / ips["bn"] for k, v in ips.items()},
            "max_abs_prob_diff": diffs}


def multiply_adds(layer) -> int:
    """Multiply-adds per image of a Conv2D or Dense layer (its built output shape); 0 for any other layer."""
    kind = type(layer).__name__
    if kind == "Conv2D":
        kh, kw = layer.kernel_size
        out = layer.output.shape
        return int(out[1] * out[2] * kh * kw * layer.input.shape[-1] // layer.groups * layer.filters)
    if kind == "Dense":
        return int(layer.input.shape[-1] * layer.units)
    return 0


def stage_cuts(model) -> list[tuple[str, int]]:
    """(part, index of its last layer): the stem, each ResNet stage (layers `s<i>b<j>_…`, and the activation after
    a block's add), the head; a model without such layers is one part, "model"."""
    cuts, part = [], "stem"
    for i, layer in enumerate(model.layers):
        m = re.match(r"(s\d+)b\d+_", layer.name)
        if not m and part not in ("stem", "head") and type(layer).__name__ == "Activation":
            continue  # closes the block before it
        this = m.group(1) if m else ("stem" if part == "stem" else "head")
        if this != part:
            cuts.append((part, i - 1))
            part = this
    cuts.append((part if cuts else "model", len(model.layers) - 1))
    return cuts


def model_parts(model) -> list[dict]:
    """`stage_cuts` as parts: name, index of the last layer, layer count and multiply-adds per image (millions)."""
    parts, start = [], 0
    for name, end in stage_cuts(model):
        macs = sum(multiply_adds(layer) for layer in model.layers[start:end + 1])
        parts.append({"part": name, "end": end, "layers": end + 1 - start, "mmacs_per_image": macs / 1e6})
        start = end + 1
    return parts


def by_stage(model, batch: int, repeats: int) -> dict:
    """Median ms per batch of the model cut after each of its `model_parts`, cut models interleaved; a part's time
    is the difference from the cut before it."""
    import keras

    parts = model_parts(model)
    subs = [keras.Model(model.inputs, model.layers[p["end"]].output) for p in parts]
    x = np.random.default_rng(0).integers(0, 256, (batch, 48, 48, 1)).astype(np.float32)
    for sub in subs:
        sub.predict_on_batch(x)
    upto = list(interleaved({k: lambda sub=sub: sub.predict_on_batch(x) for k, sub in enumerate(subs)}, repeats).values())
    for k, p in enumerate(parts):
        p["ms"] = 1000 * (upto[k] - (upto[k - 1] if k else 0.0))
        p["gflops"] = 2 * p["mmacs_per_image"] * batch / p["ms"] if p["ms"] > 0 else None
    total = sum(p["mmacs_per_image"] for p in parts)
    return {"batch": batch, "repeats": repeats, "parts": parts, "mmacs_per_image": total,
            "gflops": 2 * total * 1e6 * batch / upto[-1] / 1e9}


def latency(model, photo: Path, runs: int, out_dir: Path, tta: str = "none") -> dict:
    """Median ms of predict_photos on one photo (model loaded, detector warm)."""
    from ferops.inference import face_detector, predict_photos

    res = predict_photos([photo], model, out_dir, tta=tta)[0]
    secs, cpu = timed(lambda: predict_photos([photo], model, out_dir, tta=tta), runs)
    return {"photo": photo.name, "tta": tta, "size": res.get("image_size"), "faces": len(res["faces"]), "runs": runs,
            "median_ms": 1000 * statistics.median(secs), "p90_ms": 1000 * float(np.percentile(secs, 90)),
            "median_cpu_ms": 1000 * statistics.median(cpu), "detector": face_detector()[0]}


def score(model, data: str, tta: str) -> dict:
    """PrivateTest accuracy of `model` through ferops.inference.predict_proba, single pass and under `tta`."""
    sys.path.insert(0, str(Path(__file__).parent))
    from train import read_splits

    from ferops.inference import predict_proba

    test = read_splits(data)["test"]
    x, y = test.pixels[test.labeled], test.emotion[test.labeled].astype(int)
    out = {"data": Path(data).name, "rows": int(len(y))}
    for mode in dict.fromkeys(("none", tta)):
        t = time.perf_counter()
        out[f"test_accuracy_{mode}"] = float((predict_proba(model, x, tta=mode).argmax(1) == y).mean())
        out[f"seconds_{mode}"] = time.perf_counter() - t
    return out


def machine() -> str:
    """CPU model, core count and SIMD flags that matter for TF."""
    name, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name}, {os.cpu_count()} cores, {'/'.join(simd) or 'no AVX2'}"


def main() -> None:
    from ferops.constants import TTA_VIEW_MODES  # plain Python: TensorFlow is not imported yet

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model URI or .keras path (default: a fresh resnet from params.yaml)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5, help="timed batches for throughput")
    ap.add_argument("--photo-runs", type=int, default=30)
    ap.add_argument("--huge-runs", type=int, default=5, help="runs on the 4000x3000 photo (0 = skip)")
    ap.add_argument("--fold-ablation", action="store_true",
                    help="(a) also for the unfolded model and with XLA, batches interleaved (needs a model with BN)")
    ap.add_argument("--by-stage", action="store_true",
                    help="(a) also time the served model cut after its stem and each stage (ms, multiply-adds, GFLOP/s)")
    ap.add_argument("--tta", default="none", choices=("auto", *TTA_VIEW_MODES),
                    help="test-time augmentation for (a) and (b) (ten-crop: 10 views per face; auto: the mode recorded "
                         "with the model, what `ferops predict` uses by default)")
    ap.add_argument("--score", default=None, metavar="DATA",
                    help="(c) also score the model on DATA's PrivateTest rows, single pass and under --tta")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    for name in ("batch", "repeats", "photo_runs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.huge_runs < 0:
        ap.error("--huge-runs must be 0 (skip) or more")
    if args.score and not Path(args.score).exists():
        ap.error(f"--score {args.score}: no such file")

    from ferops.runner import tf_environment

    tf_environment()  # the project's TF settings (oneDNN on), before TensorFlow is imported
    import cv2
    from skimage.data import astronaut

    from ferops.inference import load_classifier, load_keras
    from ferops.models.zoo import fold_batchnorm

    if args.model:
        clf = load_classifier(args.model, args.params)
        model, what, args.tta = clf.model, args.model, clf.resolve(args.tta)
        raw = None
        if args.fold_ablation:
            if not Path(args.model).is_file():
                sys.exit("--fold-ablation: pass --model as a .keras file (or no --model for the default resnet)")
            raw = load_keras(args.model, fold=False)
    else:
        raw, what = default_model(Path(args.params))
        model = fold_batchnorm(raw)  # as load_keras serves it
        args.tta = "none" if args.tta == "auto" else args.tta  # a fresh model has no recorded mode
    report = {"model": what, "machine": machine(), "cmd": " ".join([Path(sys.executable).name, *sys.argv])}
    print(f"model: {what}\nmachine: {report['machine']}", flush=True)

    t = throughput(model, args.batch, args.repeats, args.tta)
    report["throughput"] = t
    print(f"(a) batch {t['batch']}, TTA {args.tta}: {t['images_per_s']:.0f} images/s median "
          f"(best {t['best_images_per_s']:.0f}); {t['cpu_ms_per_image']:.2f} ms CPU/image; "
          f"pixels-string parsing {t['parse_rows_per_s']:.0f} rows/s", flush=True)

    if args.fold_ablation:
        f = fold_ablation(raw, args.batch, args.repeats)
        report["fold_ablation"] = f
        print("(a) side by side, median images/s: " + ", ".join(
            f"{k} {v:.0f} (×{f['vs_bn'][k]:.2f}, max |Δp| {f['max_abs_prob_diff'][k]:.1e})"
            for k, v in f["images_per_s"].items()), flush=True)

    if args.by_stage:
        report["by_stage"] = b = by_stage(model, args.batch, args.repeats)
        print(f"(a) by part, batch {b['batch']}, median ms: " + ", ".join(
            f"{p['part']} {p['ms']:.1f} ({p['mmacs_per_image']:.1f} M mult-adds/image"
            + (f", {p['gflops']:.0f} GFLOP/s)" if p["gflops"] and p["mmacs_per_image"] else ")") for p in b["parts"])
            + f"; whole model {b['mmacs_per_image']:.1f} M mult-adds/image, {b['gflops']:.0f} GFLOP/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photo = tmp / "astronaut.jpg"
        bgr = cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(photo), bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        report["latency"] = [latency(model, photo, args.photo_runs, tmp / "out", args.tta)]
        if args.huge_runs:
            huge = tmp / "astronaut_4000x3000.jpg"
            cv2.imwrite(str(huge), cv2.resize(bgr[64:448], (4000, 3000), interpolation=cv2.INTER_CUBIC),
                        [cv2.IMWRITE_JPEG_QUALITY, 90])
            report["latency"].append(latency(model, huge, args.huge_runs, tmp / "out", args.tta))
    for lat in report["latency"]:
        print(f"(b) {lat['photo']} {lat['size'][0]}x{lat['size'][1]}, {lat['faces']} face(s), TTA {lat['tta']}, "
              f"detector {lat['detector']}: {lat['median_ms']:.0f} ms median (CPU {lat['median_cpu_ms']:.0f} ms), "
              f"p90 {lat['p90_ms']:.0f} ms over {lat['runs']} runs",
              flush=True)
    if args.score:
        report["score"] = sc = score(model, args.score, args.tta)
        print("(c) " + ", ".join(f"test accuracy {k[len('test_accuracy_'):]} {100 * v:.2f} % "
                                 f"({sc['seconds_' + k[len('test_accuracy_'):]]:.0f} s)"
                                 for k, v in sc.items() if k.startswith("test_accuracy_"))
              + f" on {sc['rows']} rows of {sc['data']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    from ferops.runner import run

    run(main)  # a ferops error (missing model, data or store) is one `error:` line
