"""Keras training for the deep models: config merge, seeds, precision, tf.data, schedules, resume.

`train_keras` is shared by the train_deep stage and the Optuna trials (tune).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ferops.config import deep_merge, number_problem
from ferops.constants import IMG_SIZE, NUM_CLASSES
from ferops.data.io import FerData, data_digest
from ferops.errors import ConfigError, DataError

RUN_CONFIG_FILE = "mlflow_run_config.json"  # beside the run id in a checkpoint: which config that MLflow run is of
OPTIMIZERS = ("adam", "adamw", "sgd_nesterov")
SCHEDULES = ("plateau", "constant", "cosine", "onecycle")
PRECISIONS = {"fp32": "float32", "float32": "float32", "bf16": "mixed_bfloat16", "mixed_bfloat16": "mixed_bfloat16",
              "fp16": "mixed_float16", "mixed_float16": "mixed_float16"}


@dataclass
class TrainResult:
    """What a training run produced: the (best-epoch) model, its per-epoch history and summary numbers."""

    model: Any               # float32 inference model (no augmentation layers): save/serve/evaluate this one
    history: dict[str, list[float]]
    best_epoch: int          # 1-based epoch whose weights the model holds
    epochs_run: int
    val_accuracy: float
    val_macro_f1: float
    wall_s: float
    images_per_s: float      # training throughput (train steps only, first epoch's tracing excluded when possible)
    precision: str
    val_proba: np.ndarray | None = field(default=None, repr=False)
    train_model: Any = field(default=None, repr=False)  # the model as trained (augmentation layers, training precision)
    swa_val_accuracy: float | None = None   # `swa`: the weight average's val accuracy (None: off or < 2 epochs averaged)
    swa_epochs: list[int] = field(default_factory=list)  # the epochs averaged
    swa_used: bool = False   # the model holds the average (it beat the best epoch on val), not epoch `best_epoch`
    ema_bn_val_accuracy: float | None = None  # `ema`: val with BN statistics recomputed for the average (None: off)
    ema_bn_used: bool = False  # the model holds those statistics (they beat the ones tracked under the raw weights)


def resolve_config(common: dict[str, Any], model_cfg: dict[str, Any], tuned: dict[str, Any] | None = None) -> dict[str, Any]:
    """Model config = common defaults ← model section ← tuned params (deep merge, later wins)."""
    return deep_merge(deep_merge(common or {}, model_cfg or {}), tuned or {})


def set_seeds(seed: int) -> None:
    """Seed Python, NumPy and TF/Keras and make TF ops deterministic (same data + params → same metrics on CPU)."""
    import keras

    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def _local_gpus() -> list:
    """The GPUs the Keras backend sees: TF physical devices, JAX devices, or torch device indices."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.config.list_physical_devices("GPU")
    if backend == "jax":
        import jax

        return [d for d in jax.devices() if d.platform == "gpu"]
    if backend == "torch":
        import torch

        return list(range(torch.cuda.device_count()))
    return []


def gpu_capability() -> tuple[int, int] | None:
    """CUDA compute capability of the first GPU the Keras backend sees (None: no GPU).

    Works for the tensorflow, jax and torch backends, so a GPU machine without TensorFlow can train
    (KERAS_BACKEND=jax, see benchmarks/RESULTS.md, "GPU recipe").
    """
    import keras

    gpus = _local_gpus()
    if not gpus:
        return None
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        cc = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability") or (0, 0)
        return int(cc[0]), int(cc[1])
    if backend == "jax":
        major, _, minor = str(getattr(gpus[0], "compute_capability", "0.0")).partition(".")
        return int(major or 0), int(minor or 0)
    import torch

    return tuple(torch.cuda.get_device_capability(gpus[0]))  # type: ignore[return-value]


def gpu_count() -> int:
    """How many GPUs the Keras backend sees (0 on CPU-only machines)."""
    return len(_local_gpus())


def data_parallel(setting: Any = "auto") -> Any:
    """The distribution under which to build, compile and fit so each step splits its batch over every local GPU
    (an object whose `.scope()` is entered for each), or None to train on one device.

    `auto` turns it on with two or more GPUs; `true` forces it (one replica on a CPU-only machine: how
    the tests run it); `false` never. TensorFlow: `tf.distribute.MirroredStrategy`; JAX: Keras'
    `DataParallel` distribution. `batch_size` stays the global batch (each GPU gets batch / n).
    """
    import keras

    s = str(setting).lower() if setting is not None else "false"
    if s not in ("auto", "true", "false"):
        raise ConfigError(f"data_parallel={setting!r}: use auto (every GPU when there are several) | true | false.")
    if s == "false" or (s == "auto" and gpu_count() < 2):
        return None
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy()
    if backend == "jax":
        devices = keras.distribution.list_devices("gpu") or keras.distribution.list_devices()
        return keras.distribution.DataParallel(devices=devices)
    raise ConfigError(f"data_parallel={setting!r} is not supported on the {backend} backend; "
                      "use KERAS_BACKEND=tensorflow or jax, or data_parallel: false.")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def check_precision(setting: Any) -> str:
    """The setting lower-cased if it is auto or a PRECISIONS name, else ConfigError listing them."""
    s = str(setting or "auto").lower()
    if s != "auto" and s not in PRECISIONS:
        raise ConfigError(f"precision={setting!r}: use auto | fp32 | bf16 | fp16.")
    return s


def choose_precision(setting: str = "auto") -> str:
    """Keras dtype policy: auto → mixed_bfloat16 on Ampere+ GPUs and avx512_bf16/AMX CPUs, mixed_float16 on older GPUs, else float32.

    bf16 needs no loss scaling and runs as fast as fp16 on compute capability ≥ 8.0.
    """
    s = check_precision(setting)
    if s in PRECISIONS:
        return PRECISIONS[s]
    cc = gpu_capability()
    if cc is not None:
        return "mixed_bfloat16" if cc >= (8, 0) else "mixed_float16"
    if _cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        return "mixed_bfloat16"
    return "float32"


def _lr_schedules():
    """Registered (serialisable) per-step LR schedules, built lazily."""
    global _SCHEDULES
    if _SCHEDULES is not None:
        return _SCHEDULES
    import keras
    from keras import ops

    class Replannable(keras.optimizers.schedules.LearningRateSchedule):
        """`total_steps` is mirrored in a variable that the traced train step reads, so TimeBudget can re-aim the
        schedule without re-tracing it (a re-trace cost ~5 s on 2 cores, and a noisy host re-plans most epochs)."""

        def _set_horizon(self, total_steps: int) -> None:
            self._total = int(max(1, total_steps))
            self._horizon = keras.Variable(float(self._total), dtype="float32", trainable=False, name="lr_horizon")

        @property
        def total_steps(self) -> int:
            return self._total

        @total_steps.setter
        def total_steps(self, value: int) -> None:
            self._total = int(max(1, value))
            self._horizon.assign(float(self._total))

        def _steps(self):
            return ops.cast(ops.convert_to_tensor(self._horizon), "float32")

    @keras.saving.register_keras_serializable(package="ferops")
    class WarmupCosine(Replannable):
        """Linear warm-up over `warmup_steps`, then cosine decay to `base_lr * final_ratio` at `anneal_frac` of
        `total_steps`, held there to the end (`anneal_frac` < 1: the constant-rate tail that `swa` averages over)."""

        def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 0, final_ratio: float = 0.01,
                     anneal_frac: float = 1.0):
            self.base_lr = float(base_lr)
            self._set_horizon(total_steps)
            self.warmup_steps, self.final_ratio = int(max(0, warmup_steps)), float(final_ratio)
            self.anneal_frac = float(anneal_frac)

        def __call__(self, step):
            step = ops.cast(step, "float32")
            warm = self.base_lr * (step + 1.0) / float(max(1, self.warmup_steps))
            end = ops.maximum(1.0, self.anneal_frac * self._steps() - self.warmup_steps)
            t = ops.clip((step - self.warmup_steps) / end, 0.0, 1.0)
            low = self.base_lr * self.final_ratio
            cos = low + 0.5 * (self.base_lr - low) * (1.0 + ops.cos(math.pi * t))
            return ops.where(step < self.warmup_steps, warm, cos)

        def get_config(self):
            return {"base_lr": self.base_lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                    "final_ratio": self.final_ratio, "anneal_frac": self.anneal_frac}

    @keras.saving.register_keras_serializable(package="ferops")
    class OneCycle(Replannable):
        """One-cycle: linear rise from base/25 to base over `pct_start`, then cosine down to `base * final_ratio`
        (base/1e4) at `anneal_frac` of `total_steps`, held there to the end (see WarmupCosine)."""

        def __init__(self, base_lr: float, total_steps: int, pct_start: float = 0.3, final_ratio: float = 1e-4,
                     anneal_frac: float = 1.0):
            self.base_lr, self.pct_start = float(base_lr), float(pct_start)
            self._set_horizon(total_steps)
            self.final_ratio, self.anneal_frac = float(final_ratio), float(anneal_frac)

        def __call__(self, step):
            step = ops.cast(step, "float32")
            span = self.anneal_frac * self._steps()
            up = ops.maximum(1.0, self.pct_start * span)
            start, end = self.base_lr / 25.0, self.base_lr * self.final_ratio
            rise = start + (self.base_lr - start) * ops.minimum(step / up, 1.0)
            t = ops.clip((step - up) / ops.maximum(1.0, span - up), 0.0, 1.0)
            fall = end + 0.5 * (self.base_lr - end) * (1.0 + ops.cos(math.pi * t))
            return ops.where(step < up, rise, fall)

        def get_config(self):
            return {"base_lr": self.base_lr, "total_steps": self.total_steps, "pct_start": self.pct_start,
                    "final_ratio": self.final_ratio, "anneal_frac": self.anneal_frac}

    _SCHEDULES = {"WarmupCosine": WarmupCosine, "OneCycle": OneCycle}
    return _SCHEDULES


_SCHEDULES: dict[str, Any] | None = None


def lr_schedule(cfg: dict[str, Any], steps_per_epoch: int, epochs: int) -> Any:
    """The configured learning rate: a per-step schedule over `epochs` (cosine | onecycle) or a float (plateau).
    With `swa`, the schedule anneals to `swa.lr_ratio` × lr by `swa.start` of the epochs and holds that rate."""
    lr = float(cfg.get("lr", 1e-3))
    schedule = cfg.get("schedule", "plateau")
    total = steps_per_epoch * epochs
    swa = swa_config(cfg)
    tail = {"final_ratio": swa["lr_ratio"], "anneal_frac": swa["start"]} if swa else {}
    if schedule == "cosine":
        return _lr_schedules()["WarmupCosine"](lr, total, int(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch),
                                               **tail)
    if schedule == "onecycle":
        return _lr_schedules()["OneCycle"](lr, total, **tail)
    if schedule is not None and schedule not in SCHEDULES:
        raise ConfigError(f"schedule={schedule!r}: use {' | '.join(SCHEDULES)}.")
    return lr


def make_optimizer(cfg: dict[str, Any], lr: Any) -> Any:
    """Optimizer (adam | adamw | sgd_nesterov) at learning rate `lr` (a float or a schedule, see `lr_schedule`)."""
    import keras

    wd = float(cfg.get("weight_decay", 0.0) or 0.0) or None
    name = cfg.get("optimizer", "adam")
    choices: dict[str, tuple[type, dict[str, Any]]] = {
        "adam": (keras.optimizers.Adam, {}),
        "adamw": (keras.optimizers.AdamW, {"weight_decay": wd or 0.0}),
        "sgd_nesterov": (keras.optimizers.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": wd})}
    if name not in choices:
        raise ConfigError(f"optimizer={name!r}: use {' | '.join(OPTIMIZERS)}.")
    cls, kw = choices[name]
    decay = ema_decay(cfg)
    opt = cls(lr, **kw) if decay is None else _with_ema_warmup(cls)(lr, use_ema=True, ema_momentum=decay, **kw)
    if wd and not cfg.get("decay_norm_and_bias", True):
        # BN scales/offsets and biases set no capacity a penalty should limit; decaying them only shrinks BN's
        # gamma (Goyal et al. 2017, "no bias decay")
        opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return opt


def _as_number(value: Any) -> float:
    """float(value), or NaN — which fails every range check — when it is not a number (config checks)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def ema_decay(cfg: dict[str, Any]) -> float | None:
    """`ema: <decay>` checked (None = off): validate and keep an exponential moving average of the weights."""
    ema = cfg.get("ema")
    if ema is None or ema == 0:  # also False
        return None
    decay = _as_number(ema)
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"ema={ema!r}: give the moving average's decay per step, e.g. 0.998 (0 or null = off).")
    return decay


def swa_config(cfg: dict[str, Any]) -> dict[str, float] | None:
    """`swa: {start, lr_ratio}` checked (None = off): stochastic weight averaging (Izmailov et al. 2018)."""
    swa = cfg.get("swa")
    if swa is None or swa is False:
        return None
    if not isinstance(swa, dict) or set(swa) - {"start", "lr_ratio"}:
        raise ConfigError(f"swa={swa!r}: give {{start: 0.75, lr_ratio: 0.1}} (average the epochs after 75 % of the "
                          "run, at a constant 0.1 × lr), or null = off.")
    start, ratio = _as_number(swa.get("start", 0.75)), _as_number(swa.get("lr_ratio", 0.1))
    if not 0.0 < start < 1.0:
        raise ConfigError(f"swa.start={swa.get('start')!r}: the share of the epochs before averaging starts, in (0, 1).")
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"swa.lr_ratio={swa.get('lr_ratio')!r}: the averaging phase's rate as a share of lr, in (0, 1].")
    return {"start": start, "lr_ratio": ratio}


def swa_ignored_ratio(cfg: dict[str, Any]) -> str | None:
    """A warning when `swa.lr_ratio` is set but the schedule cannot use it (plateau and constant keep their own
    rates; only cosine and onecycle anneal to it), else None. A warning, not an error: a study may search the
    schedule under a common `swa`."""
    swa, schedule = cfg.get("swa"), cfg.get("schedule", "plateau")
    # not in (cosine, onecycle): `schedule: null` is a valid config too, a constant rate (lr_schedule, train_keras)
    if isinstance(swa, dict) and "lr_ratio" in swa and schedule not in ("cosine", "onecycle"):
        return (f"swa.lr_ratio={swa['lr_ratio']!r} is ignored with schedule={schedule}, which keeps its own rates; "
                "schedule: cosine or onecycle anneals to it")
    return None


def batchnorm_layers(model: Any) -> list:
    """Every BatchNormalization layer in `model`, nested models included."""
    import keras

    found, todo = [], list(model.layers)
    while todo:
        layer = todo.pop(0)
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        todo.extend(getattr(layer, "layers", []) or [])
    return found


def recompute_bn_stats(model: Any, pixels: np.ndarray, batch_size: int = 256) -> None:
    """Set every BatchNormalization's moving mean/variance to their average over `pixels` (uint8 faces), seen
    in training mode (augmentation on, as when they were learnt): averaged weights need statistics of their own,
    which no training step computed. Eager calls, so each batch can set the exact running-average momentum."""
    import keras

    bns = batchnorm_layers(model)
    if not bns:
        return
    saved = [b.momentum for b in bns]
    x = np.asarray(pixels, dtype=np.uint8).reshape(-1, IMG_SIZE, IMG_SIZE, 1)
    seen = 0
    try:
        for i in range(0, len(x), batch_size):
            part = x[i:i + batch_size].astype(np.float32)
            for b in bns:  # moving = seen/(seen+n) · moving + n/(seen+n) · batch: the mean over all images so far
                b.momentum = seen / (seen + len(part))
            model(keras.ops.convert_to_tensor(part), training=True)
            seen += len(part)
    finally:
        for b, m in zip(bns, saved):
            b.momentum = m


def save_weights_npz(path: Path, weights: list[np.ndarray], **extra: np.ndarray) -> None:
    """A list of weight arrays (keys w0, w1, ...) plus `extra` arrays, written atomically: a kill never leaves half a file."""
    tmp = path.with_name(path.stem + ".tmp.npz")
    # numpy's stub: mypy takes the unpacked dicts as possibly filling savez's allow_pickle (a bool), hence the ignore
    np.savez(tmp, **extra, **{f"w{i}": w for i, w in enumerate(weights)})  # type: ignore[arg-type]
    tmp.replace(path)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` through a temporary file and a rename: a kill never leaves half a file (a half-written checkpoint
    record read as another config started a run afresh; a half-written member result broke every rerun). No fsync: a
    power cut may leave the file empty, which every reader takes as "start afresh"; one writer per folder (DVC's lock)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def load_weights_npz(path: Path) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """What `save_weights_npz` wrote: the weight list in order, and the extra arrays by name."""
    with np.load(path) as z:
        extra = {k: z[k] for k in z.files if not (k[0] == "w" and k[1:].isdigit())}
        return [z[f"w{i}"] for i in range(len(z.files) - len(extra))], extra


def steps_per_execution(cfg: dict[str, Any]) -> int:
    """`steps_per_execution` (default 1): train steps per traced call; callbacks' batch hooks see every n-th step."""
    n = cfg.get("steps_per_execution")
    if n is None:
        return 1
    if isinstance(n, bool) or not _as_number(n).is_integer() or int(n) < 1:
        raise ConfigError(f"steps_per_execution must be a positive integer, got {n!r}.")
    return int(n)


def time_budget_s(cfg: dict[str, Any]) -> float | None:
    """`time_budget_min` checked, in seconds (None = off: train exactly `epochs`)."""
    budget = cfg.get("time_budget_min")
    if budget is None:
        return None
    minutes = _as_number(budget)
    if not minutes > 0:
        raise ConfigError(f"time_budget_min={budget!r}: give the training budget in minutes, e.g. 58 (null = off).")
    return 60.0 * minutes


# A deep model's plain-number keys: (whole number?, lowest, highest or None), as train_keras and the builders read
# them. Checked up front because `epochs: ten` otherwise ends in a bare ValueError traceback from int(), after
# TensorFlow has started and an MLflow run was opened (and left FAILED).
NUMBER_KEYS: dict[str, tuple[bool, float, float | None]] = {
    "epochs": (True, 1, None), "batch_size": (True, 1, None), "early_stopping_patience": (True, 0, None),
    "plateau_patience": (True, 0, None), "warmup_epochs": (False, 0, None), "lr": (False, 0, None),
    "weight_decay": (False, 0, None), "label_smoothing": (False, 0, 1), "dropout": (False, 0, 0.95),
    "dense": (True, 1, None), "stem_stride": (True, 1, None), "base_filters": (True, 1, None),
    "aug_strength": (False, 0, None)}
NULL_MEANS_DEFAULT = ("weight_decay", "aug_strength")  # read as `or` defaults; the other keys' null crashed in training


def check_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """`cfg` if its numbers and choices are usable, else ConfigError `key=value: why` (the train_deep stage adds
    where params.yaml sets it); cheap, so stages call it before TensorFlow starts."""
    if "use_augmented" in cfg:  # a params.yaml from before train_data: say where the choice moved
        raise ConfigError(f"use_augmented={cfg['use_augmented']!r}: replaced by params.yaml train_deep.train_data "
                          "(data/processed/augmented/train.npz for the augment stage's set); delete this key.")
    for key, (whole, low, high) in NUMBER_KEYS.items():
        if key in cfg and cfg[key] is None and key not in NULL_MEANS_DEFAULT:  # `warmup_epochs:` left empty
            raise ConfigError(f"{key}=null: give {number_problem('', whole=whole, low=low, high=high)}, or delete "
                              "the line for the default (a null was read as a number after TensorFlow started).")
        problem = None if cfg.get(key) is None else number_problem(cfg[key], whole=whole, low=low, high=high)
        if problem:
            raise ConfigError(f"{key}={cfg[key]!r}: give {problem}.")
    for key, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
        if cfg.get(key) is not None and cfg[key] not in choices:
            raise ConfigError(f"{key}={cfg[key]!r}: use {' | '.join(choices)}.")
    check_precision(cfg.get("precision"))
    from ferops.models.zoo import check_arch, check_arch_config  # no Keras import at module level

    check_arch(cfg.get("arch"))
    check_arch_config(cfg)  # layer sizes too: before TensorFlow starts and the MLflow run opens, not in the build
    steps_per_execution(cfg), time_budget_s(cfg), ema_decay(cfg), swa_config(cfg), mix_config(cfg)
    if progressive_on(cfg) and cfg.get("arch") in FLATTENING_ARCHS:
        raise ConfigError(f"progressive={cfg['progressive']!r}: arch {cfg['arch']} flattens a fixed-size feature map, "
                          "so it cannot train on smaller images first — use it with resnet or mini_xception.")
    return cfg


FLATTENING_ARCHS = ("dnn", "cnn", "vgg")  # their dense head needs the full-size map (models.zoo: Flatten)


def progressive_on(cfg: dict[str, Any]) -> bool:
    """Whether `progressive` is set and valid (ConfigError when malformed), before TensorFlow starts."""
    from ferops.models.zoo import aug_config, progressive_config

    return progressive_config(cfg, aug_config(cfg)["crop"] or IMG_SIZE) is not None  # the crop train_keras trains at


def budget_epochs(done: int, elapsed_s: float, epoch_s: list[float], budget_s: float, max_epochs: int) -> int:
    """The epoch a budgeted run should end after: those done plus as many more as fit in what is left of the
    budget at the median of all epoch times so far, at most `max_epochs`. All, not the recent few: on a shared
    host epoch times swing ±25 % for minutes at a time, and a plan that follows each swing anneals the LR early
    in a slow spell, then adds epochs at a near-zero LR that train nothing (benchmarks/RESULTS.md)."""
    per = float(np.median(epoch_s)) if epoch_s else 0.0
    more = int((budget_s - elapsed_s) // per) if per > 0 else max_epochs
    return max(done, min(max_epochs, done + more))


_clock = time.perf_counter  # TimeBudget's clock (tests swap in a simulated one)
_EMA_CLASSES: dict[type, type] = {}


def _with_ema_warmup(base: type) -> type:
    """`base` whose weight average uses decay min(d, (1+t)/(10+t)) at step t, as timm's ModelEma does: Keras'
    fixed decay keeps the random initial weights in the average for ~3/(1-d) steps, most of a short run."""
    if base not in _EMA_CLASSES:
        from keras import ops

        class EmaWarmup(base):
            def _update_model_variables_moving_average(self, trainable_variables):
                t = ops.cast(self.iterations, "float32")
                decay = ops.minimum(self.ema_momentum, (1.0 + t) / (10.0 + t))
                for var, average in zip(trainable_variables, self._model_variables_moving_average):
                    if average is not None:
                        d = ops.cast(decay, var.dtype)
                        average.assign(ops.add(ops.multiply(d, average), ops.multiply(1.0 - d, var)))

        EmaWarmup.__name__ = EmaWarmup.__qualname__ = base.__name__  # saved configs name the Keras optimizer
        _EMA_CLASSES[base] = EmaWarmup
    return _EMA_CLASSES[base]


def class_weight_vector(labels: np.ndarray) -> np.ndarray:
    """Inverse-frequency weight per class, normalised so the average sample weight is 1 (absent classes: 0)."""
    counts = np.bincount(labels.astype(int), minlength=NUM_CLASSES).astype(float)
    present = counts > 0
    w = np.zeros(NUM_CLASSES)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


def _labeled(data: FerData, what: str) -> FerData:
    sub = data.subset(data.labeled)
    if len(sub) == 0:
        raise DataError(f"{what} split has no labelled rows — check the split stage output.")
    return sub


MIX_MODES = ("mixup", "cutmix")


def mix_config(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """`batch_mix: {mode, alpha, p}` checked (None = off): mixup or cutmix on a share `p` of training batches."""
    mix = cfg.get("batch_mix")
    if not mix:
        return None
    if not isinstance(mix, dict) or set(mix) - {"mode", "alpha", "p"}:  # a typo (`alfa:`) trained the default
        raise ConfigError(f"batch_mix={mix!r}: give {{mode: mixup|cutmix, alpha: <beta param>, p: <0..1>}}.")
    mode, alpha, p = mix.get("mode", "cutmix"), _as_number(mix.get("alpha", 1.0)), _as_number(mix.get("p", 1.0))
    if mode not in MIX_MODES or not alpha > 0 or not 0 <= p <= 1:
        raise ConfigError(f"batch_mix={mix!r}: mode must be one of {', '.join(MIX_MODES)}, alpha > 0, p in 0..1.")
    return {"mode": mode, "alpha": alpha, "p": p}


def _mean_overlap(a0: int, a1: int, side: int, crop: int) -> float:
    """Mean length of [a0, a1) inside a `crop`-px window at a uniform offset 0..side-crop: the model's random crop."""
    return float(np.mean([max(0, min(a1, o + crop) - max(a0, o)) for o in range(side - crop + 1)]))


def train_mix(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """`mix_config` as training hands it to `make_dataset`: cutmix also gets the model's training crop, which its
    label weight counts (see mix_batch)."""
    from ferops.models.zoo import aug_config

    mix = mix_config(cfg)
    if mix is not None and mix["mode"] == "cutmix":
        mix["crop"] = aug_config(cfg)["crop"]
    return mix


def mix_batch(x: np.ndarray, y: np.ndarray, w: np.ndarray | None, rng: np.random.Generator, *, mode: str,
              alpha: float, p: float, crop: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Mix a batch with a shuffled copy of itself: images (x [n,h,w,c]), one-hot labels y and weights w alike.

    mixup blends whole images with λ ~ Beta(alpha, alpha); cutmix pastes a box of 1-λ of the image area
    from the partner and mixes the labels by the area really pasted (the box is clipped at the borders) — with
    `crop` (the model's random `crop`-px training window, taken after this), by the box's expected share of that
    window (at 44 of 48 px, the full image's area was 2.9 points off per image, 1.9 too little for the partner on
    average; this is unbiased for the crop, 1.8 off, as each image's own offset is drawn later, in the model —
    translate/zoom and progressive's smaller windows still move or trim the box, unmodelled).
    With probability 1-p the batch passes unchanged.
    """
    n = len(x)
    if n < 2 or rng.random() >= p:
        return x, y, w
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(n)
    if mode == "mixup":
        x = (lam * x + (1.0 - lam) * x[perm]).astype(x.dtype)
    else:
        h, wd = x.shape[1:3]
        ch, cw = round(h * np.sqrt(1.0 - lam)), round(wd * np.sqrt(1.0 - lam))
        cy, cx = int(rng.integers(h)), int(rng.integers(wd))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, wd)
        x = x.copy()
        x[:, y0:y1, x0:x1] = x[perm, y0:y1, x0:x1]
        if 0 < crop < min(h, wd):  # offsets along y and x are drawn independently: the means multiply
            lam = 1.0 - _mean_overlap(y0, y1, h, crop) * _mean_overlap(x0, x1, wd, crop) / (crop * crop)
        else:
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * wd)
    y = (lam * y + (1.0 - lam) * y[perm]).astype(y.dtype)
    if w is not None:
        w = (lam * w + (1.0 - lam) * w[perm]).astype(w.dtype)
    return x, y, w


def make_dataset(pixels: np.ndarray, labels: np.ndarray | None, batch_size: int, *, shuffle: bool = False,
                 seed: int = 0, sample_weight: np.ndarray | None = None, mix: dict[str, Any] | None = None) -> Any:
    """Batches of (float32 pixels, one-hot labels[, weights]) from uint8 arrays, reshuffled every epoch (seeded).

    `mix` (from `mix_config`) applies `mix_batch` to every batch, seeded per batch. TensorFlow backend: a
    tf.data pipeline (cache → shuffle → batch → cast → [mix] → prefetch). Other Keras backends (jax, torch):
    a keras.utils.PyDataset over the same arrays.
    """
    import keras

    x = np.asarray(pixels, dtype=np.uint8).reshape(-1, IMG_SIZE, IMG_SIZE, 1)
    parts: tuple = (x,) if labels is None else (x, np.asarray(labels, dtype=np.int32))
    if sample_weight is not None:
        parts = parts + (np.asarray(sample_weight, dtype=np.float32),)
    if mix is not None and labels is None:
        raise ValueError("batch_mix needs labels")
    if keras.backend.backend() != "tensorflow":
        return _array_batches()(parts, int(batch_size), shuffle=shuffle, seed=seed, mix=mix)
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(parts).cache()
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(int(batch_size))

    def prep(x, *rest):
        x = tf.cast(x, tf.float32)
        if not rest:
            return x
        return (x, tf.one_hot(rest[0], NUM_CLASSES)) + tuple(rest[1:])  # one-hot for label smoothing

    ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE)
    if mix is not None:
        ds = _tf_mixed(ds, mix, seed)
    # tf.data's autotuner stalled the first step of half the epochs by ~5 s on 2 cores (benchmarks/epoch_overhead.py,
    # RESULTS.md), and this pipeline — a cast of a cached array — has nothing to tune. Without it,
    # AUTOTUNE parallelism means one call per core and prefetch grows its buffer by itself.
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def _tf_mixed(ds, mix: dict[str, Any], seed: int):
    """`mix_batch` inside tf.data: one seed per batch from a seeded random stream, new draws every epoch."""
    import tensorflow as tf

    def run(*arrays):
        *batch, s = arrays
        x, y, w = mix_batch(batch[0], batch[1], batch[2] if len(batch) > 2 else None,
                            np.random.default_rng(abs(int(s))), **mix)
        return (x, y) if w is None else (x, y, w)

    def apply(batch, s):
        out = tf.numpy_function(run, [*batch, s], [t.dtype for t in batch], stateful=False)
        for t, ref in zip(out, batch):
            t.set_shape(ref.shape)
        return tuple(out)

    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip((ds, seeds)).map(apply, num_parallel_calls=tf.data.AUTOTUNE)


@functools.cache
def _array_batches():
    """The PyDataset class behind make_dataset on non-TensorFlow backends, built lazily (keras import is heavy)."""
    import keras

    class ArrayBatches(keras.utils.PyDataset):
        def __init__(self, parts: tuple, batch_size: int, *, shuffle: bool, seed: int,
                     mix: dict[str, Any] | None = None):
            super().__init__()
            self.parts, self.batch_size, self.shuffle, self.mix = parts, batch_size, shuffle, mix
            self.seed, self.epoch = seed, 0
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(parts[0])) if shuffle else np.arange(len(parts[0]))

        def __len__(self) -> int:
            return math.ceil(len(self.order) / self.batch_size)

        def __getitem__(self, i: int):
            idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.parts[0][idx].astype(np.float32)
            if len(self.parts) == 1:
                return (x,)
            onehot = np.eye(NUM_CLASSES, dtype=np.float32)[self.parts[1][idx]]  # one-hot for label smoothing
            rest = tuple(p[idx] for p in self.parts[2:])
            if self.mix is not None:
                rng = np.random.default_rng((self.seed, self.epoch, i))  # same draws however batches are fetched
                x, onehot, w = mix_batch(x, onehot, rest[0] if rest else None, rng, **self.mix)
                rest = () if w is None else (w,)
            return (x, onehot) + rest

        def on_epoch_end(self) -> None:
            self.epoch += 1
            if self.shuffle:
                self.rng.shuffle(self.order)

    return ArrayBatches


def _callbacks():
    """Callback classes, built lazily (keras import is heavy)."""
    global _CALLBACKS
    if _CALLBACKS is not None:
        return _CALLBACKS
    import keras

    class LrLogger(keras.callbacks.Callback):
        """Put the optimizer's current learning rate into the epoch logs as `lr` (History, progress bar, MLflow)."""

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                # ReduceLROnPlateau (which runs first) logs the rate used this epoch, before it reduces it.
                lr = logs.pop("learning_rate", None)
                logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate) if lr is None else lr)

    class LowResEpochs(keras.callbacks.Callback):
        """Progressive resizing: the model's `low_res` layer shrinks training images for the first `epochs` epochs.
        Set at every epoch start (a resumed run lands in the right phase); a switch re-traces the train step."""

        def __init__(self, layer, epochs: int, full: int):
            super().__init__()
            self.layer, self.epochs, self.full = layer, int(epochs), int(full)

        def on_epoch_begin(self, epoch, logs=None):
            want = epoch < self.epochs
            if self.layer.enabled != want:
                self.layer.enabled = want
                self.model.make_train_function(force=True)

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["train_size"] = float(self.layer.size if epoch < self.epochs else self.full)

    class Throughput(keras.callbacks.Callback):
        """Training images/s, measured over train steps only (the first epoch, which traces, is dropped when possible)."""

        def __init__(self, n_images: int):
            super().__init__()
            self.n, self._t0, self.t_start = n_images, None, time.perf_counter()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_test_begin(self, logs=None):
            if self._t0 is not None:
                self.times.append(time.perf_counter() - self._t0)
                self._t0 = None

        def on_epoch_end(self, epoch, logs=None):
            self.on_test_begin()

        def images_per_s(self) -> float:
            t = self.times[1:] or self.times
            return float(self.n * len(t) / sum(t)) if t and sum(t) > 0 else 0.0

    class EmaValidation(keras.callbacks.Callback):
        """With `ema`, score val on the optimizer's weight average and let early stopping keep that: the average is
        swapped in for the val pass and swapped out at epoch end, after EarlyStopping (listed before this) took its
        copy and before BackupAndRestore saves — a resumed run goes on training the raw weights."""

        def __init__(self):
            super().__init__()
            self.raw = None

        def on_test_begin(self, logs=None):
            opt = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)  # fp16 wraps it for loss scaling
            if self.raw is None and getattr(opt, "use_ema", False) and opt.built:
                weights = self.model.trainable_variables
                self.raw = [keras.ops.convert_to_numpy(v) for v in weights]
                opt._overwrite_model_variables_with_average_value(weights)  # per device under tf.distribute

        def on_epoch_end(self, epoch, logs=None):
            if self.raw is not None:
                for v, w in zip(self.model.trainable_variables, self.raw):
                    v.assign(w)
                self.raw = None

    class SwaAverage(keras.callbacks.Callback):
        """`swa`: a running mean of the trainable weights at the end of every epoch past `start` of the planned
        epochs (TimeBudget's `planned_epochs` when it re-plans, listed before this). With `ckpt_dir` the mean is
        saved each epoch and reloaded on resume; an epoch already averaged is not averaged twice."""

        def __init__(self, start: float, max_epochs: int, ckpt_dir: Path | None = None):
            super().__init__()
            self.start, self.max_epochs, self.dir = float(start), int(max_epochs), ckpt_dir
            self.mean: list[np.ndarray] | None = None
            self.count = 0
            self.epochs: list[int] = []

        @property
        def file(self) -> Path | None:
            return None if self.dir is None else self.dir / "swa.npz"

        def on_train_begin(self, logs=None):
            if self.file is not None and self.file.exists():
                self.mean, extra = load_weights_npz(self.file)
                self.epochs = [int(e) for e in extra["epochs"]]
                self.count = len(self.epochs)

        def on_epoch_end(self, epoch, logs=None):
            planned = int((logs or {}).get("planned_epochs", self.max_epochs))
            if epoch + 1 <= self.start * planned or epoch + 1 in self.epochs:
                return
            weights = [keras.ops.convert_to_numpy(v).astype(np.float32) for v in self.model.trainable_variables]
            self.count += 1
            self.mean = weights if self.mean is None else [m + (w - m) / self.count for m, w in zip(self.mean, weights)]
            self.epochs.append(epoch + 1)
            if self.file is not None:
                self.dir.mkdir(parents=True, exist_ok=True)
                save_weights_npz(self.file, self.mean, epochs=np.array(self.epochs))

        def assign(self) -> None:
            """Put the mean into the model's trainable weights (its BN statistics still need `recompute_bn_stats`)."""
            assert self.mean is not None  # called once epochs were averaged (choose_swa: count ≥ 2)
            for v, m in zip(self.model.trainable_variables, self.mean):
                v.assign(m.astype(v.dtype))

    class TimeBudget(keras.callbacks.Callback):
        """`time_budget_min`: after every epoch, re-plan how many epochs fit the budget (`budget_epochs`), re-aim the
        LR schedule to end with the last of them — so the run anneals on time instead of being cut off at a high
        rate — and stop there. Logs `time_s` (elapsed) and `planned_epochs`; a resumed run counts the time it
        had already spent (from TrainState's history)."""

        def __init__(self, budget_s: float, steps_per_epoch: int, max_epochs: int, schedule=None, state=None,
                     low: dict | None = None, full: int = 0):
            super().__init__()
            self.budget, self.steps, self.max_epochs = float(budget_s), int(steps_per_epoch), int(max_epochs)
            self.schedule, self.state, self.clock = schedule, state, _clock
            # `progressive`: its small epochs are cheaper, so they must not set the pace of the full-size ones
            self.low_epochs = int(low["epochs"]) if low else 0
            self.low_scale = (full / low["size"]) ** 2 if low and full else 1.0
            self.durations: list[float] = []
            self.small: list[bool] = []  # per timed epoch: was it a `progressive` small one (a resumed run skips some)
            self.t0 = self.last = None
            self.planned = self.max_epochs

        def _aim(self, epochs: int) -> None:
            self.planned = epochs
            if self.schedule is not None and self.schedule.total_steps != epochs * self.steps:
                self.schedule.total_steps = epochs * self.steps  # a variable the traced TF step reads
                if keras.backend.backend() != "tensorflow":
                    self.model.make_train_function(force=True)  # jax/torch: the horizon is a constant of the step

        def on_epoch_begin(self, epoch, logs=None):
            if self.t0 is None:  # every on_train_begin has run: TrainState has restored a resumed run's history
                hist = self.state.history if self.state is not None else {}
                now = self.clock()
                self.t0, self.last = now - (hist.get("time_s") or [0.0])[-1], now
                if hist.get("planned_epochs"):
                    self._aim(int(hist["planned_epochs"][-1]))

        def pace(self) -> list[float]:
            """Epoch times to plan the remaining (full-size) epochs from: the full-size ones once there are any;
            during a `progressive` small phase, its epochs scaled up by the pixel ratio (an over-estimate: in real
            training 32-px epochs were ×1.5 (resize) to ×1.8 (crop) faster, not ×1.9, so the plan errs short and grows
            after the switch)."""
            full = [d for d, small in zip(self.durations, self.small) if not small]
            return full or [d * self.low_scale for d in self.durations]

        def on_epoch_end(self, epoch, logs=None):
            now = self.clock()
            self.durations.append(now - self.last)
            self.small.append(epoch < self.low_epochs)
            self.last = now
            pace = self.pace()
            plan = budget_epochs(epoch + 1, now - self.t0, pace, self.budget, self.max_epochs)
            if plan != self.planned:
                print(f"time budget {self.budget / 60:.1f} min: {plan} epochs fit (median epoch "
                      f"{np.median(pace):.0f} s); the LR schedule now ends at epoch {plan}", file=sys.stderr)
                self._aim(plan)
            if logs is not None:
                logs["time_s"], logs["planned_epochs"] = float(now - self.t0), float(plan)
            if epoch + 1 >= plan:
                self.model.stop_training = True

    class TrainState(keras.callbacks.Callback):
        """Resumable state beside BackupAndRestore: full history, early-stopping/plateau state, best weights, the
        epochs' train-step times, and whether training had decided to stop (a run killed after that resumes to the end)."""

        def __init__(self, ckpt_dir: Path, backup_dir: Path, early, plateau=None, throughput=None):
            super().__init__()
            self.dir, self.backup_dir, self.early, self.plateau = ckpt_dir, backup_dir, early, plateau
            self.throughput = throughput
            self.history: dict[str, list[float]] = {}
            self.resumed_from = 0
            self.prior_s = 0.0  # training time of the epochs done before a resume (the run's wall counts them)
            self._begin = 0.0  # on_train_begin's clock
            self._best_saved = None

        @property
        def state_file(self) -> Path:
            return self.dir / "state.json"

        def on_train_begin(self, logs=None):
            # Runs after BackupAndRestore (which restored weights + optimizer) and EarlyStopping's reset.
            self._begin = time.perf_counter()
            meta = self.backup_dir / "training_metadata.json"
            if not (meta.exists() and self.state_file.exists()):
                return
            done = int(json.loads(meta.read_text())["epoch"])
            st = json.loads(self.state_file.read_text())
            self.history = {k: v[:done] for k, v in st["history"].items()}
            self.resumed_from = done
            self.prior_s = float(st.get("elapsed_s", 0.0))
            if self.throughput is not None:  # images/s over the whole run, not only the epochs after the resume
                self.throughput.times[:0] = list(st.get("step_s", []))[:done]
            es = st.get("early") or {}
            self.early.best, self.early.wait, self.early.best_epoch = es.get("best"), es.get("wait", 0), es.get("best_epoch", 0)
            best = self.dir / "best_weights.npz"
            if es.get("best") is not None and best.exists():
                self.early.best_weights = load_weights_npz(best)[0]
                self._best_saved = self.early.best_epoch
            if self.plateau is not None and st.get("plateau"):
                for k, v in st["plateau"].items():
                    setattr(self.plateau, k, v)
            print(f"resuming from checkpoint {self.dir}: {done} epoch(s) done", file=sys.stderr)

        def on_epoch_end(self, epoch, logs=None):
            for k, v in (logs or {}).items():
                self.history.setdefault(k, []).append(float(v))
            self.dir.mkdir(parents=True, exist_ok=True)
            if self.early.best_weights is not None and self._best_saved != self.early.best_epoch:
                save_weights_npz(self.dir / "best_weights.npz", self.early.best_weights)
                self._best_saved = self.early.best_epoch
            st = {"epoch": epoch + 1, "history": self.history,
                  "elapsed_s": self.prior_s + time.perf_counter() - self._begin,
                  "early": {"best": None if self.early.best is None else float(self.early.best),
                            "wait": int(self.early.wait), "best_epoch": int(self.early.best_epoch)},
                  # set by EarlyStopping / TimeBudget, which run before this callback
                  "stopped": bool(getattr(self.model, "stop_training", False))}
            if self.throughput is not None:
                st["step_s"] = [float(t) for t in self.throughput.times]
            if self.plateau is not None:
                st["plateau"] = {"best": float(self.plateau.best), "wait": int(self.plateau.wait),
                                 "cooldown_counter": int(self.plateau.cooldown_counter)}
            write_atomic(self.state_file, json.dumps(st))

    class MlflowEpochLogger(keras.callbacks.Callback):
        """Log per-epoch loss/accuracy/val_*/lr to the active MLflow run as `epoch_<key>` (step = 1-based epoch).

        The prefix keeps the curves apart from the final `val_accuracy` of the best-epoch model.
        """

        def __init__(self, prefix: str = "epoch_"):
            super().__init__()
            self.prefix = prefix

        def on_epoch_end(self, epoch, logs=None):
            import mlflow

            vals = {f"{self.prefix}{k}": float(v) for k, v in (logs or {}).items() if np.isscalar(v) or np.ndim(v) == 0}
            if vals:
                mlflow.log_metrics(vals, step=epoch + 1)

    _CALLBACKS = {"EmaValidation": EmaValidation, "LowResEpochs": LowResEpochs, "LrLogger": LrLogger, "Throughput": Throughput,
                  "SwaAverage": SwaAverage, "TimeBudget": TimeBudget, "TrainState": TrainState, "MlflowEpochLogger": MlflowEpochLogger}
    return _CALLBACKS


_CALLBACKS: dict[str, Any] | None = None


def MlflowEpochLogger(prefix: str = "epoch_") -> Any:  # noqa: N802 — reads like the class it returns
    """A Keras callback logging per-epoch train/val loss, accuracy and lr to the active MLflow run."""
    return _callbacks()["MlflowEpochLogger"](prefix)


def train_keras(train: FerData, val: FerData, cfg: dict[str, Any], *, seed: int, extra_callbacks: list | None = None,
                checkpoint_dir: Path | None = None, verbose: int = 1, max_epochs: int | None = None,
                keep_checkpoint: bool = False, digest: str | None = None) -> TrainResult:
    """Build `cfg["arch"]`, train on `train` with early stopping on val accuracy, return the best-epoch model.

    With `checkpoint_dir`, every finished epoch is checkpointed (weights, optimizer, epoch, history,
    early-stopping state) and a killed run resumes at the next epoch; the checkpoint is removed on success —
    unless `keep_checkpoint`, where the caller removes it once its own work after training is done (a kill in
    between then resumes with no epoch to train). `digest`: the caller's `data_digest(train, val)`, for the
    checkpoint's identity (computed here when not given: ~0.1 s on FER2013, once per training is enough).
    """
    import keras

    from ferops.metrics import classification_metrics
    from ferops.models.zoo import build_model, crop_size, inference_model, progressive_config

    check_config(cfg)
    train, val = _labeled(train, "train"), _labeled(val, "validation")
    set_seeds(seed)
    precision = choose_precision(cfg.get("precision", "auto"))
    # clear_session first: it resets Keras' global state, the dtype policy included (set the other way round, every
    # model trained in float32 while its reports said mixed_bfloat16, until session 48)
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(precision)
    set_seeds(seed)  # clear_session resets the layer-name counters; seed again so builds are identical

    epochs = int(cfg.get("epochs", 10))
    if max_epochs is not None:
        epochs = min(epochs, int(max_epochs))
    batch = int(cfg.get("batch_size", 128))
    steps = math.ceil(len(train) / batch)
    y_train = train.emotion.astype(int)
    sw = class_weight_vector(y_train)[y_train] if cfg.get("class_weights") else None
    ds_train = make_dataset(train.pixels, y_train, batch, shuffle=True, seed=seed, sample_weight=sw,
                            mix=train_mix(cfg))
    ds_val = make_dataset(val.pixels, val.emotion.astype(int), max(batch, 256))

    dist = data_parallel(cfg.get("data_parallel", "auto"))
    scope = dist.scope if dist is not None else contextlib.nullcontext
    with scope():  # variables must be created under the distribution they train with
        model = build_model(cfg, seed=seed)
        schedule = lr_schedule(cfg, steps, epochs)
        model.compile(optimizer=make_optimizer(cfg, schedule),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=float(cfg.get("label_smoothing", 0.0))),
                      metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                      # several steps per traced call: Keras' per-step Python overhead is ~10 % of a 2-core epoch
                      steps_per_execution=steps_per_execution(cfg))

    cbs = _callbacks()
    throughput = cbs["Throughput"](len(train))
    full = crop_size(model) or IMG_SIZE
    low = progressive_config(cfg, full)
    # Val is scored at full size: small-image epochs score low there, so early stopping starts after them.
    early = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", restore_best_weights=True,
                                          patience=int(cfg.get("early_stopping_patience", 8)),
                                          start_from_epoch=low["epochs"] if low else 0)
    plateau = None
    callbacks: list = [cbs["LrLogger"](), throughput, early]
    ema = ema_decay(cfg) is not None
    if ema:
        callbacks.append(cbs["EmaValidation"]())  # after `early`: see its docstring
    if low:
        callbacks.insert(0, cbs["LowResEpochs"](model.get_layer("low_res"), low["epochs"], full))
    if cfg.get("schedule", "plateau") == "plateau":
        plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_accuracy", mode="max", factor=0.5,
                                                    patience=int(cfg.get("plateau_patience", 3)), min_lr=1e-6)
        callbacks.insert(0, plateau)  # first, so LrLogger sees the rate this epoch used
    state = None
    if checkpoint_dir is not None:
        ckpt = Path(checkpoint_dir)
        _guard_checkpoint(ckpt, {**cfg, "epochs": epochs, "seed": seed, "data": digest or data_digest(train, val)})
        backup = ckpt / "backup"
        _align_backup(ckpt, backup)
        state = cbs["TrainState"](ckpt, backup, early, plateau, throughput)
        # delete_checkpoint=False: Keras deletes the backup at the end of `fit`, and a kill after that (SWA's statistics
        # pass, the inference copy, the stage's MLflow logging) retrained from epoch 1; the rmtree below removes it.
        # double_checkpoint: the weights file is written in place, so a kill in mid-write left one that no resume could
        # open (OSError on every rerun); Keras then falls back to the previous epoch's copy
        callbacks += [keras.callbacks.BackupAndRestore(str(backup), double_checkpoint=True, delete_checkpoint=False),
                      state]
    budget = time_budget_s(cfg)
    if budget is not None:  # before TrainState's epoch end, which saves the logs it adds
        callbacks.insert(callbacks.index(state) if state is not None else len(callbacks),
                         cbs["TimeBudget"](budget, steps, epochs, None if isinstance(schedule, float) else schedule, state,
                                           low, full))
    swa = swa_config(cfg)
    averager = None
    if (ignored := swa_ignored_ratio(cfg)) is not None:
        print(f"warning: {ignored}", file=sys.stderr)
    if swa is not None:  # after TimeBudget (it reads planned_epochs), before TrainState (which saves the logs)
        averager = cbs["SwaAverage"](swa["start"], epochs, Path(checkpoint_dir) if checkpoint_dir is not None else None)
        callbacks.insert(callbacks.index(state) if state is not None else len(callbacks), averager)
    callbacks += list(extra_callbacks or [])
    if verbose == 1 and not sys.stdout.isatty():
        verbose = 2  # one line per epoch in logs and CI instead of a redrawn bar

    # A run killed after early stopping or the budget had ended it (before the cleanup below) runs no further epoch:
    # fit restores the checkpoint and early stopping's best weights, and returns.
    stopped = _stopped_at(Path(checkpoint_dir)) if checkpoint_dir is not None else None
    t0 = time.perf_counter()
    with scope():
        fit = model.fit(ds_train, validation_data=ds_val, epochs=stopped or epochs, callbacks=callbacks, verbose=verbose,
                        shuffle=False)

    history = state.history if state is not None else {k: [float(v) for v in vs] for k, vs in fit.history.items()}
    if not history.get("val_accuracy"):
        raise DataError("training ran no epoch (epochs=0 or the run had already finished); nothing to return.")
    # The epoch whose weights early stopping kept: never one of progressive's low-resolution epochs, which it skips.
    skip = int(low["epochs"]) if low and len(history["val_accuracy"]) > int(low["epochs"]) else 0
    best_epoch = skip + int(np.argmax(history["val_accuracy"][skip:])) + 1
    swa_val, swa_kept = None, False
    if averager is not None and averager.count >= 2:
        with scope():
            swa_val, swa_kept = choose_swa(model, averager, train.pixels, ds_val,
                                           history["val_accuracy"][best_epoch - 1], best_epoch,
                                           batch_size=max(batch, 256))
    ema_val, ema_kept = None, False
    if ema and not swa_kept and batchnorm_layers(model):
        # The moving average's BN statistics are those tracked under the raw weights: give it its own, if val agrees
        with scope():
            ema_val, ema_kept = choose_recalibrated(
                model, train.pixels, ds_val, history["val_accuracy"][best_epoch - 1], best_epoch,
                what=f"EMA: epoch {best_epoch}'s weight average with BN statistics recomputed on train",
                batch_size=max(batch, 256))
    # The statistics passes and val checks count as training time, and so do the epochs before a resume.
    wall = time.perf_counter() - t0 + (state.prior_s if state is not None else 0.0)
    if checkpoint_dir is not None and not keep_checkpoint:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # finished: a rerun must start fresh

    clean = inference_model(model, cfg)
    proba = _predict(clean, val.pixels)
    m = classification_metrics(val.emotion.astype(int), proba.argmax(1), prefix="val_")
    return TrainResult(model=clean, train_model=model, history=history, best_epoch=best_epoch, epochs_run=len(history["val_accuracy"]),
                       val_accuracy=m["val_accuracy"], val_macro_f1=m["val_macro_f1"], wall_s=wall,
                       images_per_s=throughput.images_per_s(), precision=precision, val_proba=proba,
                       swa_val_accuracy=swa_val, swa_epochs=averager.epochs if averager is not None and swa_val is not None else [],
                       swa_used=swa_kept, ema_bn_val_accuracy=ema_val, ema_bn_used=ema_kept)


def choose_swa(model: Any, averager: Any, train_pixels: np.ndarray, ds_val: Any, best_val: float, best_epoch: int, *,
               batch_size: int = 256) -> tuple[float, bool]:
    """The weight average of `swa` against the best epoch, which `model` holds on entry (`choose_recalibrated`)."""
    first, last = averager.epochs[0], averager.epochs[-1]
    return choose_recalibrated(model, train_pixels, ds_val, best_val, best_epoch, put=averager.assign,
                               what=f"SWA: mean of {averager.count} epochs ({first}-{last})", batch_size=batch_size)


def choose_recalibrated(model: Any, train_pixels: np.ndarray, ds_val: Any, best_val: float, best_epoch: int, *,
                        what: str, put: Callable[[], None] | None = None, batch_size: int = 256) -> tuple[float, bool]:
    """Score a candidate on val, its BN statistics recomputed on the train images: the weights `put` puts into
    `model` (None: the weights it holds, under their old statistics). Keep it only if it beats the best epoch's
    `best_val` — `model` holds that epoch on entry — else put the epoch back, statistics included. Returns the
    candidate's val accuracy and whether it was kept. Selection on val only, like early stopping."""
    best = model.get_weights()
    if put is not None:
        put()
    recompute_bn_stats(model, train_pixels, batch_size)
    acc = float(model.evaluate(ds_val, verbose=0, return_dict=True)["accuracy"])
    keep = acc > best_val
    if not keep:
        model.set_weights(best)
    print(f"{what}: val {acc:.4f} against epoch {best_epoch}'s {best_val:.4f}: keeping "
          f"{'the average' if keep else f'epoch {best_epoch}'}", file=sys.stderr)
    return acc, keep


def _align_backup(ckpt: Path, backup: Path) -> None:
    """Make the weights backup agree with TrainState's state.json. A kill between the two epoch-end saves (the backup
    is saved first) leaves the state an epoch behind, and the resume went on from the backup: that epoch's row was
    missing from the history, every later row one epoch off (best_epoch, epochs_run, the curves). A kill inside the
    backup's save after the weights were written (its metadata missing or half-written) broke every rerun (Keras
    reads the metadata without a fallback). Either way, roll the backup back to its previous copy
    (`double_checkpoint`), or — at epoch 1, with no state yet — drop it, so the epoch whose logs were lost is trained
    again. (A kill while the weights are written, the metadata still the epoch before, is Keras' own fallback.)"""
    meta, prev = backup / "training_metadata.json", backup / "training_metadata.json.bkp"
    at, done = _saved_epoch(meta), _saved_epoch(ckpt / "state.json") or 0
    if (at is not None and at <= done) or (at is None and not (backup / "latest.weights.h5").exists()):
        return
    behind = _saved_epoch(prev) == done and (backup / "latest.weights.h5.bkp").exists()
    if behind:
        shutil.copy(backup / "latest.weights.h5.bkp", backup / "latest.weights.h5")
        shutil.copy(prev, meta)
    else:
        shutil.rmtree(backup, ignore_errors=True)
    print(f"checkpoint {ckpt}: the run was killed while saving epoch {at or done + 1}; resuming after epoch "
          f"{done if behind else 0}", file=sys.stderr)


def _stopped_at(ckpt: Path) -> int | None:
    """The epoch count of a checkpointed run that had decided to stop there, or None (no such checkpoint). Only when
    the weights' backup is at that same epoch: a kill between the two saves leaves the state one epoch behind."""
    try:
        st = json.loads((ckpt / "state.json").read_text())
    except (OSError, ValueError):
        return None
    done = int(st.get("epoch", 0))
    return done if st.get("stopped") and done > 0 and _saved_epoch(ckpt / "backup" / "training_metadata.json") == done else None


def _saved_epoch(path: Path) -> int | None:
    """The `epoch` a checkpoint file (state.json, Keras' training_metadata.json[.bkp]) records; None when the file is
    missing or unreadable (a kill can leave either)."""
    try:
        return int(json.loads(path.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _guard_checkpoint(ckpt: Path, identity: dict[str, Any], file: str = "config.json", strict: bool = False) -> bool:
    """Keep a checkpoint only if its `file` records the same identity (config, seed, data digest); otherwise start
    fresh (say so). `strict`: files without that record are of unknown origin and go too. True when the record was
    there and the same: a resume."""
    f = ckpt / file
    text = json.dumps(identity, sort_keys=True, default=str)
    same = f.exists() and f.read_text() == text
    if (f.exists() and not same) or (strict and not f.exists() and ckpt.is_dir() and any(ckpt.iterdir())):
        print(f"checkpoint {ckpt} was made with another config, data or training code: starting fresh", file=sys.stderr)
        shutil.rmtree(ckpt, ignore_errors=True)
    ckpt.mkdir(parents=True, exist_ok=True)
    write_atomic(f, text)
    return same


def _predict(model: Any, pixels: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Class probabilities [N,7] (float32) of one plain pass, for val scoring in training. Test-time views live in
    ferops.tta, which training does not import: a TTA change re-runs evaluate, not every training stage."""
    x = np.asarray(pixels, dtype=np.float32).reshape(-1, IMG_SIZE, IMG_SIZE, 1)
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float64).astype(np.float32)


# --- the train_deep stage: config resolution, MLflow logging, model directory -------------------------------

HISTORY_COLUMNS = ("epoch", "accuracy", "val_accuracy", "loss", "val_loss", "lr")


def apply_tuned(cfg: dict[str, Any], best_params: dict[str, Any]) -> dict[str, Any]:
    """Tuned params over a model config (`hparams.apply_params`, the mapping the tune stage sampled with)."""
    from ferops.hparams import apply_params

    return apply_params(cfg, best_params) if best_params else cfg


def history_table(history: dict[str, list[float]]) -> Any:
    """Per-epoch history as a DataFrame: epoch (1-based), accuracy, val_accuracy, loss, val_loss, lr, then the rest."""
    import pandas as pd

    n = len(next(iter(history.values()), []))
    df = pd.DataFrame({"epoch": np.arange(1, n + 1), **{k: list(v) for k, v in history.items()}})
    return df[[c for c in HISTORY_COLUMNS if c in df] + [c for c in df if c not in HISTORY_COLUMNS]]


def model_signature() -> Any:
    """MLflow signature: raw pixels float32 [-1,48,48,1] → probabilities float32 [-1,7]."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, IMG_SIZE, IMG_SIZE, 1))]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, NUM_CLASSES))]))


def ensemble_seeds(cfg: dict[str, Any], seed: int) -> list[int]:
    """Seeds of the members to train: `ensemble_seeds` (one member per seed, same recipe, their probabilities
    averaged into one saved model) or just `seed` (one model, the default)."""
    seeds = cfg.get("ensemble_seeds")
    if seeds is None or seeds == []:
        return [int(seed)]
    ok = isinstance(seeds, (list, tuple)) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    if not ok or len(set(seeds)) != len(seeds):
        raise ConfigError(f"ensemble_seeds={seeds!r}: give a list of distinct integer seeds, e.g. [42, 7] "
                          "(null = one model with the global seed).")
    return [int(s) for s in seeds]


def _member_key(cfg: dict[str, Any], seed: int, data: str | None) -> str:
    return json.dumps({**cfg, "seed": seed, "data": data}, sort_keys=True, default=str)


def save_member(res: TrainResult, folder: Path, key: str) -> None:
    """Keep a finished ensemble member (inference model + numbers) so a killed stage does not train it again."""
    folder.mkdir(parents=True, exist_ok=True)
    res.model.save(folder / "model.keras")
    fields = ("history", "best_epoch", "epochs_run", "val_accuracy", "val_macro_f1", "wall_s", "images_per_s", "precision",
              "swa_val_accuracy", "swa_epochs", "swa_used", "ema_bn_val_accuracy", "ema_bn_used")
    write_atomic(folder / "result.json", json.dumps({"key": key, **{f: getattr(res, f) for f in fields}}))


def load_member(folder: Path, key: str) -> TrainResult | None:
    """A member kept by `save_member` with the same config, seed and data size; None otherwise."""
    f = folder / "result.json"
    try:
        saved = json.loads(f.read_text())
    except (OSError, ValueError):  # missing, or half-written by a version without write_atomic: train it again
        return None
    if saved.pop("key", None) != key:
        print(f"finished member in {folder} was made with another config: training it again", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    import keras

    from ferops.models.zoo import custom_objects

    model = keras.models.load_model(folder / "model.keras", custom_objects=custom_objects(), compile=False)
    return TrainResult(model=model, **saved)


def train_members(cfg: dict[str, Any], train: FerData, val: FerData, seeds: list[int], *,
                  checkpoint_dir: Path | None = None, verbose: int = 1, max_epochs: int | None = None,
                  callbacks_for: Callable[[str], list] = lambda prefix: [],
                  keep_checkpoint: bool = False, digest: str | None = None) -> list[TrainResult]:
    """Train one model per seed, one after another (`callbacks_for(prefix)`: extra callbacks per member, prefix
    `m<i>_` for ensembles, "" for one model). Each member checkpoints on its own, and a finished member is kept
    until the stage ends, so a killed ensemble resumes at the member and epoch it had reached. `digest`: as
    train_keras'."""
    if len(seeds) == 1:
        return [train_keras(train, val, cfg, seed=seeds[0], extra_callbacks=callbacks_for(""),
                            checkpoint_dir=checkpoint_dir, verbose=verbose, max_epochs=max_epochs,
                            keep_checkpoint=keep_checkpoint, digest=digest)]
    results = []
    if checkpoint_dir is not None:  # only checkpoints record the data
        digest = digest or data_digest(train, val)
    for i, s in enumerate(seeds, start=1):
        done = checkpoint_dir / f"member_{i}_done" if checkpoint_dir is not None else None
        key = _member_key(cfg, s, digest)
        res = load_member(done, key) if done is not None else None
        member_ckpt = checkpoint_dir / f"member_{i}" if checkpoint_dir is not None else None
        if res is None:
            print(f"ensemble member {i}/{len(seeds)}: seed {s}", file=sys.stderr)
            # keep_checkpoint: the member's checkpoint stays until it is saved below — a kill in between (its inference
            # copy, val scoring, save_member) otherwise retrained it from epoch 1
            res = train_keras(train, val, cfg, seed=s, extra_callbacks=callbacks_for(f"m{i}_"),
                              checkpoint_dir=member_ckpt, verbose=verbose, max_epochs=max_epochs,
                              keep_checkpoint=True, digest=digest)
            if done is not None:
                save_member(res, done, key)
        if member_ckpt is not None:
            shutil.rmtree(member_ckpt, ignore_errors=True)  # kept: a rerun loads it from `done`
        results.append(res)
    return results


def ensemble_history(histories: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Members' histories one after another (the stage's timeline: `epoch` counts on across members), with
    `member` (1-based) and `member_epoch` columns."""
    keys = list(dict.fromkeys(k for h in histories for k in h))
    out: dict[str, list[float]] = {k: [] for k in keys + ["member", "member_epoch"]}
    for i, h in enumerate(histories, start=1):
        n = len(next(iter(h.values()), []))
        for k in keys:
            out[k] += list(h.get(k, [float("nan")] * n))
        out["member"] += [i] * n
        out["member_epoch"] += list(range(1, n + 1))
    return out


@dataclass
class FitResult:
    """A deep model config trained: one model, or an ensemble's members joined into one (`ensemble_seeds`)."""

    model: Any                       # what to save and serve: the member, or the flat ensemble of all members
    members: list[TrainResult]
    seeds: list[int]
    val_proba: np.ndarray = field(repr=False)   # of `model`, on the labeled val rows
    history: dict[str, list[float]] = field(repr=False)  # the member's, or `ensemble_history` of all members

    @property
    def wall_s(self) -> float:
        return sum(r.wall_s for r in self.members)

    @property
    def images_per_s(self) -> float:
        return sum(r.images_per_s * r.wall_s for r in self.members) / max(self.wall_s, 1e-9)

    @property
    def epochs_run(self) -> int:
        return sum(r.epochs_run for r in self.members)


def fit_deep(cfg: dict[str, Any], train: FerData, val: FerData, seed: int, *, checkpoint_dir: Path | None = None,
             verbose: int = 1, max_epochs: int | None = None, name: str = "ensemble",
             callbacks_for: Callable[[str], list] = lambda prefix: [], keep_checkpoint: bool = False,
             digest: str | None = None) -> FitResult:
    """Train `cfg` with `seed` — or, with `ensemble_seeds`, one member per seed joined into one averaging model.
    `keep_checkpoint`: a single model's checkpoint stays for the caller to remove; `digest`: see `train_keras`."""
    seeds = ensemble_seeds(cfg, seed)
    members = train_members({k: v for k, v in cfg.items() if k != "ensemble_seeds"}, train, val, seeds,
                            checkpoint_dir=checkpoint_dir, verbose=verbose, max_epochs=max_epochs,
                            callbacks_for=callbacks_for, keep_checkpoint=keep_checkpoint, digest=digest)
    if len(members) == 1:
        assert members[0].val_proba is not None  # one seed: train_keras trained it just now (load_member leaves None)
        return FitResult(members[0].model, members, seeds, members[0].val_proba, members[0].history)
    from ferops.models.zoo import ensemble_model

    model = ensemble_model([r.model for r in members], name=name)
    proba = _predict(model, _labeled(val, "validation").pixels)
    return FitResult(model, members, seeds, proba, ensemble_history([r.history for r in members]))


# every key average_metrics can return (benchmarks/train.py reads them back from metrics.json)
AVERAGE_METRICS = ("swa_val_accuracy", "swa_epochs", "swa_used", "ema_bn_val_accuracy", "ema_bn_used")


def average_metrics(res: TrainResult) -> dict[str, float | int]:
    """The weight averages' numbers: `swa`'s val accuracy, how many epochs it averaged and whether it was kept;
    `ema`'s val accuracy with its own BN statistics and whether those were kept. Empty when neither ran."""
    out: dict[str, float | int] = {}
    if res.swa_val_accuracy is not None:
        out.update({"swa_val_accuracy": float(res.swa_val_accuracy), "swa_epochs": len(res.swa_epochs),
                    "swa_used": int(res.swa_used)})
    if res.ema_bn_val_accuracy is not None:
        out.update({"ema_bn_val_accuracy": float(res.ema_bn_val_accuracy), "ema_bn_used": int(res.ema_bn_used)})
    return out


def training_code() -> str:
    """Fingerprint of this module and every ferops module it reaches (the model zoo, the data pipeline, tracking)."""
    from ferops.codebase import code_fingerprint

    return code_fingerprint(Path(__file__).resolve())


def train_deep_model(name: str, cfg: dict[str, Any], train: FerData, val: FerData, *, seed: int,
                     ingest_report: dict[str, Any], out_dir: str | Path, checkpoint_dir: str | Path | None = None,
                     curves_csv: str | Path | None = None, max_epochs: int | None = None, verbose: int = 1,
                     tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Train one deep model inside its MLflow run (`tags` added to ferops' own) and write the model directory;
    returns metrics.json's content."""
    import keras
    import mlflow

    from ferops.data.io import write_json
    from ferops.metrics import classification_metrics, confusion
    from ferops.plots import confusion_matrix_plot, training_curves
    from ferops.tracking import RUN_ID_FILE, dataset_tags, end_killed_run, init_tracking, model_run, read_run_id

    out = Path(out_dir)
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    out.mkdir(parents=True, exist_ok=True)
    # A killed run resumes its MLflow run too (DVC empties `out` before a stage runs; the checkpoint keeps the id) —
    # but only a run of this very config and data. One check decides for the whole checkpoint tree (members
    # included) before the id is copied: after a change the training starts fresh, and so must its run, or the old
    # run's params would describe the new model and its curves hold two epoch 1s.
    digest = data_digest(train, val)  # once: the members' and the epochs' checkpoints record it too
    # the training code too: DVC re-runs this stage after a code change, and a checkpoint of the old code resumed
    # under the new one made a model of neither
    identity = {"cfg": cfg, "seed": seed, "data": digest, "max_epochs": max_epochs, "code": training_code()}
    killed = read_run_id(ckpt) if ckpt is not None else None
    resume = ckpt is not None and _guard_checkpoint(ckpt, identity, RUN_CONFIG_FILE, strict=True)
    if resume and ckpt is not None and (ckpt / RUN_ID_FILE).exists() and not (out / RUN_ID_FILE).exists():
        shutil.copy(ckpt / RUN_ID_FILE, out / RUN_ID_FILE)
    elif not resume:  # a fresh training is a new run, also where nothing emptied `out` (the script run by hand)
        (out / RUN_ID_FILE).unlink(missing_ok=True)
    init_tracking()
    if killed and not resume:  # the killed run is not resumed: it would show RUNNING in the MLflow UI for good
        end_killed_run(killed)
    extra = tags or {}
    tags = {**dataset_tags(ingest_report), "arch": str(cfg.get("arch")), **extra}
    with model_run(stage="train_deep", model=name, params=cfg, tags=tags, run_dir=out) as run:
        if ckpt is not None:
            (ckpt / RUN_ID_FILE).write_text(run.info.run_id + "\n")
        mlflow.log_params({"n_train": len(train), "n_val": len(val), "max_epochs": max_epochs, "seed": seed})
        fit = fit_deep(cfg, train, val, seed, checkpoint_dir=ckpt, verbose=verbose, max_epochs=max_epochs, name=name,
                       callbacks_for=lambda prefix: [MlflowEpochLogger(prefix + "epoch_")], digest=digest,
                       # removed below, after the model and its MLflow logging: a kill in that logging (a single
                       # model's checkpoint is the whole of `ckpt`, run id included) retrained it into a new run
                       keep_checkpoint=True)
        model, members, res = fit.model, fit.members, fit.members[0]
        labels = val.subset(val.labeled).emotion.astype(int)
        metrics: dict[str, Any] = {}
        if len(members) > 1:
            for i, r in enumerate(members, start=1):
                metrics.update({f"m{i}_val_accuracy": r.val_accuracy, f"m{i}_epochs_run": r.epochs_run,
                                f"m{i}_best_epoch": r.best_epoch, f"m{i}_train_wall_s": round(r.wall_s, 2)})
            mlflow.set_tag("ensemble_seeds", ",".join(map(str, fit.seeds)))
        metrics.update(classification_metrics(labels, fit.val_proba.argmax(1), prefix="val_"))
        metrics.update({"epochs_run": fit.epochs_run, "train_wall_s": round(fit.wall_s, 2),
                        "images_per_s": round(fit.images_per_s, 1), "n_params": int(model.count_params())})
        metrics.update({"best_epoch": res.best_epoch} if len(members) == 1 else {"n_members": len(members)})
        if len(members) == 1:
            metrics.update(average_metrics(res))
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.set_tag("precision", res.precision)

        hist = history_table(fit.history)
        hist.to_csv(out / "history.csv", index=False)
        if curves_csv:
            Path(curves_csv).parent.mkdir(parents=True, exist_ok=True)
            keep = [*HISTORY_COLUMNS, "member", "member_epoch"]
            hist[[c for c in keep if c in hist]].to_csv(curves_csv, index=False)
        what = f"ensemble of {len(members)} ({cfg.get('arch')}, seeds {', '.join(map(str, fit.seeds))})" \
            if len(members) > 1 else str(cfg.get("arch"))
        training_curves(fit.history, out / "curves.png", title=f"{name} ({what})")
        confusion_matrix_plot(confusion(labels, fit.val_proba.argmax(1)), out / "confusion_val.png",
                              title=f"{name} — validation")
        model.save(out / "model.keras")
        write_json({**cfg, "name": name, "seed": seed, "precision": res.precision, "max_epochs": max_epochs},
                   out / "config.json")
        for f in ("history.csv", "curves.png", "confusion_val.png", "config.json"):
            mlflow.log_artifact(str(out / f))
        from importlib.metadata import version

        backend = keras.backend.backend()  # the serving environment needs the backend the model was saved with
        info = mlflow.keras.log_model(model, name="model", signature=model_signature(),
                                      pip_requirements=[f"{backend}=={version(backend)}", f"keras=={keras.__version__}"])
        summary = {"model": name, "kind": "deep", "arch": cfg.get("arch"), **metrics, "precision": res.precision,
                   "mlflow_run_id": run.info.run_id, "mlflow_model_uri": info.model_uri}
        write_json(summary, out / "metrics.json")
        mlflow.log_artifact(str(out / "metrics.json"))
    if ckpt is not None:
        shutil.rmtree(ckpt, ignore_errors=True)
    return summary
