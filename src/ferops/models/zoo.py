"""Keras 3 model builders (dnn, cnn, vgg, resnet, mini_xception) that take RAW 0..255 pixels.

Every model starts with the online augmentation layers (active only in training) and its own
scaling, so a saved `.keras` file takes raw pixels [N,48,48,1] and predicts deterministically.
Custom layers are registered (no Lambda) so `keras.models.load_model` works in safe mode.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ferops.constants import IMG_SIZE, NUM_CLASSES
from ferops.errors import ConfigError
from ferops.hparams import AUG_LIMITS

ARCHS = ("dnn", "cnn", "vgg", "resnet", "mini_xception")
# PyTorch's default (Keras' 0.99 needs thousands of steps before the moving statistics fit: short/demo runs fail).
BN_MOMENTUM = 0.9

Norm = Callable[..., Any]  # (layer name, zero_init=False) → a BatchNormalization layer (see _norm_factory)

# Defaults of the online augmentation block (merged under cfg["online_aug"]).
AUG_DEFAULTS: dict[str, Any] = {"hflip": True, "rotate_deg": 0.0, "translate": 0.0, "zoom": 0.0, "contrast": 0.0,
                                "crop": 0, "erasing": 0.0, "warp": "auto"}


def _layers():
    """Build the custom layer classes lazily (keras import is heavy) and register them once."""
    global _CUSTOM
    if _CUSTOM is not None:
        return _CUSTOM
    import keras
    from keras import ops

    def random_crop(images, s: int, generator):
        """A random `s`x`s` window of each image (its own offset per image), static output shape."""
        h, w, c = images.shape[1], images.shape[2], images.shape[3]
        b = ops.shape(images)[0]
        oy = ops.cast(keras.random.uniform((b,), 0, h - s + 1, seed=generator), "int32")
        ox = ops.cast(keras.random.uniform((b,), 0, w - s + 1, seed=generator), "int32")
        oy, ox = ops.minimum(oy, h - s), ops.minimum(ox, w - s)
        rows = oy[:, None] + ops.arange(s, dtype="int32")[None, :]          # (B,s)
        cols = ox[:, None] + ops.arange(s, dtype="int32")[None, :]          # (B,s)
        x = ops.take_along_axis(images, ops.broadcast_to(rows[:, :, None, None], (b, s, w, c)), axis=1)
        return ops.take_along_axis(x, ops.broadcast_to(cols[:, None, :, None], (b, s, s, c)), axis=2)

    @keras.saving.register_keras_serializable(package="ferops")
    class RandomCropOrCenter(keras.layers.Layer):
        """Per-image random `size`x`size` crop in training, the centre crop at inference."""

        def __init__(self, size: int, seed: int | None = None, **kwargs):
            super().__init__(**kwargs)
            self.size = int(size)
            self.seed = seed
            self.generator = keras.random.SeedGenerator(seed)

        def call(self, images, training=None):
            h, w = images.shape[1], images.shape[2]
            s = self.size
            if not training:
                top, left = (h - s) // 2, (w - s) // 2
                return images[:, top:top + s, left:left + s, :]
            return random_crop(images, s, self.generator)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], self.size, self.size, input_shape[3])

        def get_config(self):
            return {**super().get_config(), "size": self.size, "seed": self.seed}

    @keras.saving.register_keras_serializable(package="ferops")
    class RandomErasing(keras.layers.Layer):
        """With probability `p` per image, replace a random rectangle (2–25 % of the area) by noise; training only."""

        def __init__(self, p: float, min_area: float = 0.02, max_area: float = 0.25, max_value: float = 255.0,
                     seed: int | None = None, **kwargs):
            super().__init__(**kwargs)
            self.p, self.min_area, self.max_area, self.max_value = float(p), float(min_area), float(max_area), float(max_value)
            self.seed = seed
            self.generator = keras.random.SeedGenerator(seed)

        def call(self, images, training=None):
            if not training or self.p <= 0:
                return images
            h, w = images.shape[1], images.shape[2]
            b = ops.shape(images)[0]
            u = lambda lo, hi: keras.random.uniform((b,), lo, hi, seed=self.generator)  # noqa: E731
            area = u(self.min_area, self.max_area) * (h * w)
            log_r = u(-1.2, 1.2)                                   # aspect ratio in ~[0.3, 3.3]
            eh = ops.clip(ops.sqrt(area * ops.exp(log_r)), 1.0, float(h))
            ew = ops.clip(ops.sqrt(area / ops.exp(log_r)), 1.0, float(w))
            y0 = u(0.0, 1.0) * (h - eh)
            x0 = u(0.0, 1.0) * (w - ew)
            apply = ops.cast(u(0.0, 1.0) < self.p, images.dtype)
            ys = ops.arange(h, dtype="float32")[None, :]
            xs = ops.arange(w, dtype="float32")[None, :]
            in_y = ops.logical_and(ys >= y0[:, None], ys < (y0 + eh)[:, None])  # (B,h)
            in_x = ops.logical_and(xs >= x0[:, None], xs < (x0 + ew)[:, None])  # (B,w)
            mask = ops.cast(ops.logical_and(in_y[:, :, None], in_x[:, None, :]), images.dtype)[..., None]
            mask = mask * apply[:, None, None, None]
            noise = ops.cast(keras.random.uniform(ops.shape(images), 0.0, self.max_value, seed=self.generator), images.dtype)
            return images * (1 - mask) + noise * mask

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "p": self.p, "min_area": self.min_area, "max_area": self.max_area,
                    "max_value": self.max_value, "seed": self.seed}

    @keras.saving.register_keras_serializable(package="ferops")
    class RandomAffine(keras.layers.Layer):
        """Per-image random rotation (±`rotate_deg`), shift (±`translate` of the size) and zoom (±`zoom`) as one
        bilinear warp, edge pixels extended (like fill_mode="nearest"); training only.

        Used instead of RandomRotation/RandomTranslation/RandomZoom on non-TensorFlow backends: on JAX their
        map_coordinates warp made a ResNet-18 step on an H100 ~100x slower (786 vs 8 ms, benchmarks/RESULTS.md).
        """

        def __init__(self, rotate_deg: float = 0.0, translate: float = 0.0, zoom: float = 0.0, seed: int | None = None,
                     **kwargs):
            super().__init__(**kwargs)
            self.rotate_deg, self.translate, self.zoom = float(rotate_deg), float(translate), float(zoom)
            self.seed = seed
            self.generator = keras.random.SeedGenerator(seed)

        def call(self, images, training=None):
            if not training:
                return images
            h, w, c = images.shape[1], images.shape[2], images.shape[3]
            b = ops.shape(images)[0]
            u = lambda: keras.random.uniform((b, 1, 1), -1.0, 1.0, seed=self.generator)  # noqa: E731
            theta = u() * (self.rotate_deg * math.pi / 180.0)
            scale = 1.0 + u() * self.zoom
            tx, ty = u() * (self.translate * w), u() * (self.translate * h)
            cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
            yy = ops.reshape(ops.arange(h, dtype="float32") - cy, (1, h, 1))
            xx = ops.reshape(ops.arange(w, dtype="float32") - cx, (1, 1, w))
            cos, sin = ops.cos(theta), ops.sin(theta)
            # Source coordinates of every output pixel (inverse map), clamped to the border.
            sx = ops.clip(scale * (cos * xx - sin * yy) + cx + tx, 0.0, w - 1.0)
            sy = ops.clip(scale * (sin * xx + cos * yy) + cy + ty, 0.0, h - 1.0)
            x0, y0 = ops.floor(sx), ops.floor(sy)
            wx, wy = ops.reshape(sx - x0, (b, h * w, 1)), ops.reshape(sy - y0, (b, h * w, 1))
            x1, y1 = ops.minimum(x0 + 1.0, w - 1.0), ops.minimum(y0 + 1.0, h - 1.0)
            flat = ops.reshape(images, (b, h * w, c))

            def at(y, x):
                idx = ops.reshape(ops.cast(y * w + x, "int32"), (b, h * w, 1))
                return ops.take_along_axis(flat, ops.broadcast_to(idx, (b, h * w, c)), axis=1)

            top = at(y0, x0) * (1.0 - wx) + at(y0, x1) * wx
            bottom = at(y1, x0) * (1.0 - wx) + at(y1, x1) * wx
            return ops.reshape(top * (1.0 - wy) + bottom * wy, (b, h, w, c))

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "rotate_deg": self.rotate_deg, "translate": self.translate,
                    "zoom": self.zoom, "seed": self.seed}

    @keras.saving.register_keras_serializable(package="ferops")
    class LowResPhase(keras.layers.Layer):
        """Progressive resizing: while `enabled` (set per epoch by training's LowResEpochs callback, which re-traces
        the train step), training images are `size`x`size` — the crop shrunk (`mode: resize`) or a random window
        of it at the native scale (`mode: crop`, so the faces' scale never changes) — and those epochs cost
        ~(size/crop)² of a full one. A Python flag, not a tensor: each traced step keeps static shapes, which oneDNN
        needs to be fast (a tf.cond between the two sizes ran the small phase at ×2.0 the full size's speed where a
        static 32-px model ran ×3.5; docs/DESIGN.md). Identity at inference and when disabled.
        """

        def __init__(self, size: int, mode: str = "resize", seed: int | None = None, **kwargs):
            super().__init__(**kwargs)
            self.size, self.mode, self.seed = int(size), str(mode), seed
            # only crop draws offsets: resize keeps the layer stateless, as it was before `mode` existed
            self.generator = keras.random.SeedGenerator(seed) if self.mode == "crop" else None
            self.enabled = False

        def call(self, images, training=None):
            if not (training and self.enabled):
                return images
            if self.mode == "crop":
                return random_crop(images, self.size, self.generator)
            return ops.image.resize(images, (self.size, self.size), antialias=True)

        def compute_output_shape(self, input_shape):
            return (input_shape[0], None, None, input_shape[3])

        def get_config(self):
            return {**super().get_config(), "size": self.size, "mode": self.mode, "seed": self.seed}

    @keras.saving.register_keras_serializable(package="ferops")
    class FusedBatchNormalization(keras.layers.BatchNormalization):
        """BatchNormalization whose training step runs TF's fused kernel (FusedBatchNormV3, oneDNN on CPU).

        Keras 3's TF backend builds training-mode BN from moments + elementwise ops: ~6 passes over each
        activation forward and more backward. The fused op makes one: the ResNet's train step runs ×1.13
        faster on 2 CPU cores, paired (benchmarks/RESULTS.md). Same variables and maths as the built-in layer (the
        moving variance gets Bessel's correction, as in Keras 2), so `inference_model` copies the weights
        into a built-in BatchNormalization. Training builds on the TF backend only (`build_model`).
        """

        def call(self, inputs, training=None, mask=None):
            if not (training and self.trainable and mask is None and not self.renorm and len(inputs.shape) == 4
                    and self.axis in (-1, 3)):
                return super().call(inputs, training=training, mask=mask)
            import tensorflow as tf

            y, mean, var = tf.compat.v1.nn.fused_batch_norm(
                tf.cast(inputs, "float32"), tf.cast(self.gamma, "float32"), tf.cast(self.beta, "float32"),
                epsilon=self.epsilon, data_format="NHWC", is_training=True)
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + tf.stop_gradient(mean) * (1.0 - m))
            self.moving_variance.assign(self.moving_variance * m + tf.stop_gradient(var) * (1.0 - m))
            return tf.cast(y, self.compute_dtype)

    _CUSTOM = {"RandomCropOrCenter": RandomCropOrCenter, "RandomErasing": RandomErasing, "RandomAffine": RandomAffine,
               "LowResPhase": LowResPhase, "FusedBatchNormalization": FusedBatchNormalization}
    return _CUSTOM


_CUSTOM: dict[str, Any] | None = None


def custom_objects() -> dict[str, Any]:
    """The registered ferops layers (for code that loads models outside the registry)."""
    return dict(_layers())


def _check_online_aug(given: Any) -> None:
    """ConfigError `online_aug.<key>=value: why` for a block the layers cannot use. An unknown key (`rotate: 15`)
    would be dropped by the merge with the defaults — that augmentation silently off — and a value such as
    `rotate_deg: ten` would end in a raw ValueError; `check_config` reaches this through `progressive_on`."""
    from ferops.config import did_you_mean, number_problem

    if not isinstance(given, dict):
        raise ConfigError(f"online_aug={given!r}: give a mapping, e.g. {{hflip: true, rotate_deg: 10, crop: 44}}.")
    for key, value in given.items():
        if key not in AUG_DEFAULTS:
            raise ConfigError(f"online_aug.{key}={value!r}: unknown augmentation key"
                              + did_you_mean(key, AUG_DEFAULTS, f"; use {', '.join(AUG_DEFAULTS)}."))
        if key == "hflip" and not isinstance(value, bool) and value is not None:
            raise ConfigError(f"online_aug.hflip={value!r}: use true | false.")  # "no" (a string) would be true
        if key not in ("hflip", "warp") and value is not None:
            problem = number_problem(value, whole=key == "crop", low=0, high=AUG_LIMITS.get(key))
            if problem:
                raise ConfigError(f"online_aug.{key}={value!r}: give {problem}.")


def aug_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Online-augmentation settings with defaults, magnitudes scaled by `aug_strength` (tuning knob)."""
    given = cfg.get("online_aug") or {}
    _check_online_aug(given)
    aug = {**AUG_DEFAULTS, **given}
    k = 1.0 if cfg.get("aug_strength") is None else float(cfg["aug_strength"])  # null is the default, not 0 (off)
    for key, limit in AUG_LIMITS.items():  # scaled up, capped where the layers' range ends
        aug[key] = min(limit, float(aug[key] or 0.0) * k)
    aug["crop"] = int(aug["crop"] or 0)
    if aug["crop"] and not 8 <= aug["crop"] <= IMG_SIZE:
        raise ConfigError(f"online_aug.crop={aug['crop']}: must be 0 (off) or between 8 and {IMG_SIZE}.")
    if aug["warp"] not in ("auto", "builtin", "affine"):
        raise ConfigError(f"online_aug.warp={aug['warp']!r}: use auto | builtin | affine.")
    return aug


def input_block(cfg: dict[str, Any], seed: int | None = None, inference: bool = False) -> Any:
    """Input (48,48,1) raw 0..255 → online augmentation (training only) → scaling. Returns (inputs, x).

    `inference=True` leaves the augmentation out and crops with the built-in CenterCrop, so the
    exported model holds built-in layers only (loads anywhere, also in MLflow serving).
    """
    import keras
    from keras import layers

    L = _layers()
    aug = aug_config(cfg)
    inputs = keras.Input((IMG_SIZE, IMG_SIZE, 1), name="pixels")
    # Augmentation runs in float32 on raw pixels (cheap; avoids low-precision interpolation artefacts).
    x = inputs
    f32 = {"dtype": "float32"}
    crop = aug["crop"] if aug["crop"] and aug["crop"] < IMG_SIZE else 0
    if inference:
        if crop:
            x = layers.CenterCrop(crop, crop, name="crop", **f32)(x)
        return inputs, _normalize(x, cfg)
    if aug["hflip"]:
        x = layers.RandomFlip("horizontal", seed=seed, name="aug_hflip", **f32)(x)
    # warp: builtin = Keras' Random{Rotation,Translation,Zoom}; affine = our one-pass warp; auto = builtin on TF only.
    warp = aug["warp"]
    if warp == "auto":
        warp = "builtin" if keras.backend.backend() == "tensorflow" else "affine"
    if warp == "affine":
        if aug["rotate_deg"] or aug["translate"] or aug["zoom"]:
            x = L["RandomAffine"](aug["rotate_deg"], aug["translate"], aug["zoom"], seed=seed, name="aug_affine", **f32)(x)
    else:
        if aug["rotate_deg"] > 0:
            x = layers.RandomRotation(aug["rotate_deg"] / 360.0, fill_mode="nearest", seed=seed, name="aug_rotate",
                                      **f32)(x)
        if aug["translate"] > 0:
            x = layers.RandomTranslation(aug["translate"], aug["translate"], fill_mode="nearest", seed=seed,
                                         name="aug_translate", **f32)(x)
        if aug["zoom"] > 0:
            x = layers.RandomZoom(aug["zoom"], fill_mode="nearest", seed=seed, name="aug_zoom", **f32)(x)
    if aug["contrast"] > 0:
        x = layers.RandomContrast(aug["contrast"], value_range=(0, 255), seed=seed, name="aug_contrast", **f32)(x)
    if crop:
        x = L["RandomCropOrCenter"](crop, seed=seed, name="crop", **f32)(x)
    if aug["erasing"] > 0:
        x = L["RandomErasing"](aug["erasing"], seed=seed, name="aug_erasing", **f32)(x)
    low = progressive_config(cfg, crop or IMG_SIZE)
    if low:
        # its own seed: the crop layer's stream, reused, would tie the window's offset to the crop's
        x = L["LowResPhase"](low["size"], low["mode"], seed=None if seed is None else seed + 1, name="low_res", **f32)(x)
    return inputs, _normalize(x, cfg)


def progressive_config(cfg: dict[str, Any], full: int = IMG_SIZE) -> dict[str, Any] | None:
    """`progressive: {size, epochs, mode}` checked: the first `epochs` epochs train on `size` px images — the crop
    shrunk (`mode: resize`, the default) or a random `size`-px window of it at the same scale (`crop`). None = off."""
    prog = cfg.get("progressive")
    if not prog:
        return None
    usage = (f"progressive={prog!r}: give {{size: <px>, epochs: <n>, mode: resize|crop}}, e.g. {{size: 32, epochs: 12}} "
             "(null = off).")
    if not isinstance(prog, dict) or set(prog) - {"size", "epochs", "mode"}:  # a typo (`epoch: 12`) was silently off
        raise ConfigError(usage)
    try:
        if not int(prog.get("epochs", 0) or 0):
            return None
        size, epochs, mode = int(prog["size"]), int(prog["epochs"]), str(prog.get("mode", "resize"))
    except (KeyError, TypeError, ValueError):
        raise ConfigError(usage) from None
    if not 16 <= size < full or epochs < 0:
        raise ConfigError(f"progressive.size={size}: must be between 16 and the training crop ({full} px) - 1; "
                          f"epochs={epochs} must be >= 0.")
    if mode not in ("resize", "crop"):
        raise ConfigError(f"progressive.mode={mode!r}: use resize (shrink the crop) | crop (a random window of it).")
    return {"size": size, "epochs": epochs, "mode": mode}


def _normalize(x, cfg: dict[str, Any]):
    """Pixels 0..255 → 0..1; `input_norm: image` then standardises each image (zero mean, unit variance),
    which takes lighting and contrast out of what the first layers must learn. Built-in layers only."""
    from keras import layers

    norm = cfg.get("input_norm", "scale")
    if norm not in ("scale", "image"):
        raise ConfigError(f"input_norm={norm!r}: use scale (pixels / 255) | image (per-image standardisation).")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    if norm == "image":
        x = layers.LayerNormalization(axis=[1, 2, 3], center=False, scale=False, epsilon=1e-4, dtype="float32",
                                      name="image_norm")(x)
    return x


def _head(x, cfg: dict[str, Any]):
    """Final float32 softmax (float32 keeps mixed-precision outputs stable)."""
    from keras import layers

    return layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name="probs")(x)


def _act(name: str):
    from keras import layers

    if name not in ("relu", "elu", "gelu", "swish"):
        raise ConfigError(f"activation={name!r}: use relu | elu | gelu | swish.")
    return layers.Activation(name)


def _conv_bn(x, filters: int, kernel: int = 3, stride: int = 1, act: str | None = "relu", name: str = "", *,
             norm: Norm, zero_init: bool = False):
    from keras import layers

    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, kernel_initializer="he_normal",
                      name=f"{name}_conv")(x)
    x = norm(f"{name}_bn", zero_init=zero_init)(x)
    return _act(act)(x) if act else x


def build_dnn(cfg: dict[str, Any], x: Any, *, norm: Norm) -> Any:
    """Report 1's fully connected net: hidden [500,300,100], each Dense → BN → ReLU → Dropout."""
    from keras import layers

    x = layers.Flatten()(x)
    for i, h in enumerate(cfg.get("hidden", [500, 300, 100])):
        x = layers.Dense(int(h), use_bias=False, name=f"fc{i}")(x)
        x = norm(f"fc{i}_bn")(x)
        x = layers.Activation("relu")(x)
        x = layers.Dropout(float(cfg.get("dropout", 0.3)))(x)
    return x


def build_cnn(cfg: dict[str, Any], x: Any, *, norm: Norm) -> Any:
    """Report 1's CNN: conv/pool per filter count, dropout, dense (no batch norm: `norm` is unused)."""
    from keras import layers

    for i, f in enumerate(cfg.get("filters", [32, 64])):
        x = layers.Conv2D(int(f), 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Dropout(float(cfg.get("dropout", 0.2)))(x)
    x = layers.Flatten()(x)
    x = layers.Dense(int(cfg.get("dense", 128)), activation="relu", name="fc")(x)
    return layers.Dropout(float(cfg.get("dropout", 0.2)))(x)


def build_vgg(cfg: dict[str, Any], x: Any, *, norm: Norm) -> Any:
    """VGG-style blocks of 3x3 conv+BN+ReLU, max-pool and dropout per block, then a dense layer."""
    from keras import layers

    drop = float(cfg.get("dropout", 0.4))
    for b, block in enumerate(cfg.get("blocks", [[32, 32], [64, 64], [128, 128]])):
        for j, w in enumerate(block):
            x = _conv_bn(x, int(w), name=f"b{b}_{j}", norm=norm)
        x = layers.MaxPooling2D(2, name=f"b{b}_pool")(x)
        x = layers.Dropout(drop / 2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(int(cfg.get("dense", 256)), use_bias=False, name="fc")(x)
    x = norm("fc_bn")(x)
    x = layers.Activation("relu")(x)
    return layers.Dropout(drop)(x)


def resnet_widths(cfg: dict[str, Any]) -> list[int]:
    """Stage widths: `widths`, or `base_width` doubled per stage (the tuning knob)."""
    stages = list(cfg.get("stages", [2, 2, 2, 2]))
    if cfg.get("base_width"):
        return [int(cfg["base_width"]) * 2 ** i for i in range(len(stages))]
    widths = list(cfg.get("widths", [32, 64, 128, 256]))
    if len(widths) != len(stages):
        raise ConfigError(f"resnet: widths {widths} and stages {stages} must have the same length.")
    return [int(w) for w in widths]


def _squeeze_excite(y, hidden: int, act: str, name: str):
    """Channel gates from the branch's global average: y × sigmoid(W2 act(W1 mean(y)))."""
    from keras import layers

    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(y)
    s = layers.Dense(hidden, activation=act, name=f"{name}_reduce")(s)
    s = layers.Dense(y.shape[-1], activation="sigmoid", name=f"{name}_gate")(s)
    return layers.Multiply(name=f"{name}_scale")([y, s])


def build_resnet(cfg: dict[str, Any], x: Any, *, norm: Norm) -> Any:
    """BN ResNet: stem conv (stride `stem_stride`, optional max-pool), basic (or bottleneck) residual
    blocks, `stages` blocks per stage, stride 2 at the first block of every stage after the first."""
    from keras import layers

    act = cfg.get("activation", "relu")
    stages = [int(n) for n in cfg.get("stages", [2, 2, 2, 2])]
    widths = resnet_widths(cfg)
    bottleneck = bool(cfg.get("bottleneck", False))
    # Goyal et al. 2017: the residual branch's last BN starts at gamma = 0, so every block starts as the identity
    zero = bool(cfg.get("zero_init_residual", False))
    se = int(cfg.get("se") or 0)  # squeeze-and-excitation reduction ratio (Hu et al. 2018); 0 = off
    if se < 0:
        raise ConfigError(f"resnet: se={se}: use a reduction ratio such as 16 (0 or null = off).")
    x = _conv_bn(x, widths[0] if not bottleneck else max(16, widths[0] // 4 * 2), 3, int(cfg.get("stem_stride", 1)),
                 act, name="stem", norm=norm)
    if cfg.get("stem_pool", True):
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for s, (n, w) in enumerate(zip(stages, widths)):
        for b in range(n):
            stride = 2 if (b == 0 and s > 0) else 1
            name = f"s{s}b{b}"
            shortcut = x
            if bottleneck:
                mid = max(8, w // 4)
                y = _conv_bn(x, mid, 1, 1, act, name=f"{name}_a", norm=norm)
                y = _conv_bn(y, mid, 3, stride, act, name=f"{name}_b", norm=norm)
                y = _conv_bn(y, w, 1, 1, None, name=f"{name}_c", norm=norm, zero_init=zero)
            else:
                y = _conv_bn(x, w, 3, stride, act, name=f"{name}_a", norm=norm)
                y = _conv_bn(y, w, 3, 1, None, name=f"{name}_b", norm=norm, zero_init=zero)
            if se:
                y = _squeeze_excite(y, max(4, w // se), act, name=f"{name}_se")
            if stride != 1 or x.shape[-1] != w:
                shortcut = _conv_bn(x, w, 1, stride, None, name=f"{name}_proj", norm=norm)
            x = layers.Add(name=f"{name}_add")([y, shortcut])
            x = _act(act)(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return layers.Dropout(float(cfg.get("dropout", 0.2)))(x)


def build_mini_xception(cfg: dict[str, Any], x: Any, *, norm: Norm) -> Any:
    """Mini-Xception (Arriaga et al. 2017): 2 plain convs, 4 depthwise-separable residual modules, GAP (~60k params)."""
    from keras import layers

    base = int(cfg.get("base_filters", 8))
    x = _conv_bn(x, base, name="stem0", norm=norm)
    x = _conv_bn(x, base, name="stem1", norm=norm)
    for i, w in enumerate(cfg.get("module_widths", [16, 32, 64, 128])):
        res = layers.Conv2D(int(w), 1, strides=2, padding="same", use_bias=False, name=f"m{i}_res")(x)
        res = norm(f"m{i}_res_bn")(res)
        y = layers.SeparableConv2D(int(w), 3, padding="same", use_bias=False, name=f"m{i}_sep0")(x)
        y = norm(f"m{i}_bn0")(y)
        y = layers.Activation("relu")(y)
        y = layers.SeparableConv2D(int(w), 3, padding="same", use_bias=False, name=f"m{i}_sep1")(y)
        y = norm(f"m{i}_bn1")(y)
        y = layers.MaxPooling2D(3, strides=2, padding="same", name=f"m{i}_pool")(y)
        x = layers.Add(name=f"m{i}_add")([y, res])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return layers.Dropout(float(cfg.get("dropout", 0.0)))(x)


BUILDERS: dict[str, Callable[..., Any]] = {
    "dnn": build_dnn, "cnn": build_cnn, "vgg": build_vgg, "resnet": build_resnet, "mini_xception": build_mini_xception,
}


def _norm_factory(cfg: dict[str, Any], inference: bool) -> Norm:
    """BatchNormalization layers by name: the fused-kernel subclass in TF training builds (`fused_batchnorm`,
    default on), the built-in layer otherwise — exported models hold built-in layers only."""
    import keras

    cls = keras.layers.BatchNormalization
    if not inference and cfg.get("fused_batchnorm", True) and keras.backend.backend() == "tensorflow":
        cls = _layers()["FusedBatchNormalization"]
    return lambda name, zero_init=False: cls(momentum=BN_MOMENTUM, name=name,
                                             gamma_initializer="zeros" if zero_init else "ones")


def check_arch(arch: Any) -> str:
    """`arch` if it names a builder, else ConfigError listing them (Keras-free: config checks call it early)."""
    if arch not in ARCHS:
        raise ConfigError(f"arch={arch!r}: unknown model architecture; use one of {', '.join(ARCHS)}.")
    return arch


# Layer-size lists a builder iterates (whole numbers >= 1): a scalar or a word there ended in a raw TypeError/ValueError.
SIZE_LISTS = ("stages", "widths", "hidden", "filters", "module_widths")


def check_arch_config(cfg: dict[str, Any]) -> None:
    """ConfigError `key=value: why` for a layer-size setting the builders cannot use (`stages: 2`, `widths: [32, x]`,
    `blocks: [32, 64]`), or for more 2x2 poolings than the cnn's/vgg's input has pixels; Keras-free."""
    from ferops.config import number_problem

    def sizes_problem(value: Any) -> bool:
        return not isinstance(value, list) or any(number_problem(v, whole=True, low=1) for v in value)

    for key in SIZE_LISTS:
        if cfg.get(key) is not None and sizes_problem(cfg[key]):
            example = "[2, 2, 2, 2]" if key == "stages" else "[32, 64]"
            raise ConfigError(f"{key}={cfg[key]!r}: give a list of whole numbers >= 1, e.g. {example}.")
    blocks = cfg.get("blocks")
    if blocks is not None and (not isinstance(blocks, list) or any(sizes_problem(b) or not b for b in blocks)):
        raise ConfigError(f"blocks={blocks!r}: give one list of conv widths per block, e.g. [[32, 32], [64, 64]].")
    for key, low in (("base_width", 1), ("se", 0)):
        if cfg.get(key) is not None and number_problem(cfg[key], whole=True, low=low):
            raise ConfigError(f"{key}={cfg[key]!r}: give a whole number >= {low}.")
    n_pools = {"cnn": len(cfg.get("filters") or [32, 64]), "vgg": len(blocks or [[32, 32], [64, 64], [128, 128]])}
    if cfg.get("arch") in n_pools:  # each block ends in a valid 2x2 max-pool: the map must keep >= 1 pixel
        side = aug_config(cfg)["crop"] or IMG_SIZE
        n = n_pools[cfg["arch"]]
        if side >> n < 1:
            raise ConfigError(f"{'filters' if cfg['arch'] == 'cnn' else 'blocks'}: {n} blocks each halve the "
                              f"{side}-px input, down to nothing; use at most {side.bit_length() - 1}.")


def build_model(cfg: dict[str, Any], seed: int | None = None, inference: bool = False) -> Any:
    """A keras.Model for `cfg["arch"]`: raw pixels (N,48,48,1) in 0..255 → softmax (N,7).

    The training model carries the online augmentation (active only when training=True);
    `inference=True` builds the same network without it (see `inference_model`).
    """
    import keras

    arch = check_arch(cfg.get("arch"))
    check_arch_config(cfg)
    inputs, x = input_block(cfg, seed=seed, inference=inference)
    x = BUILDERS[arch](cfg, x, norm=_norm_factory(cfg, inference))
    return keras.Model(inputs, _head(x, cfg), name=str(cfg.get("name", arch)))


def inference_model(model: Any, cfg: dict[str, Any]) -> Any:
    """A float32 copy of a trained model without augmentation layers (built-in layers only), for saving/serving."""
    import keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")  # the exported model runs fast on any CPU
    try:
        clean = build_model(cfg, inference=True)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    for layer in clean.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return clean


def _foldable_pairs(model) -> dict[str, str]:
    """{layer name: BN name} for each Conv2D/SeparableConv2D/Dense with a linear activation whose output goes
    to one BatchNormalization (last axis) and nowhere else — the pairs `fold_batchnorm` can merge. Only
    functional models whose layers are each called once (ferops' own); {} for any other model."""
    import keras

    if isinstance(model, keras.Sequential):  # clone_model takes no call_function for these
        return {}
    consumers: dict[int, list] = {}
    try:
        for layer in model.layers:
            if not isinstance(layer, keras.layers.InputLayer):
                for t in keras.tree.flatten(layer.input):
                    consumers.setdefault(id(t), []).append(layer)
        outputs = {id(t) for t in model.outputs}
    except (AttributeError, ValueError):  # a subclassed model, or a layer called more than once
        return {}
    kinds = (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.Dense)
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, kinds) or layer.get_config().get("activation") != "linear":
            continue
        users = consumers.get(id(layer.output), [])
        if (len(users) == 1 and id(layer.output) not in outputs
                and isinstance(users[0], keras.layers.BatchNormalization) and users[0].axis in (-1, len(layer.output.shape) - 1)):
            pairs[layer.name] = users[0].name
    return pairs


def fold_batchnorm(model: Any) -> Any:
    """A copy of a trained functional model with every BatchNormalization that directly follows a linear
    Conv2D/SeparableConv2D/Dense folded into that layer (kernel × γ/√(σ²+ε), bias β − μγ/√(σ²+ε)).

    Same predictions to float rounding; at inference the BN's multiply and add per activation are gone and
    oneDNN runs conv + bias + ReLU as one fused op. The model is returned unchanged if nothing folds."""
    import keras
    import numpy as np

    pairs = _foldable_pairs(model)
    if not pairs:
        return model
    folded_bns = set(pairs.values())

    def clone(layer):
        cfg = layer.get_config()
        return layer.__class__.from_config({**cfg, "use_bias": True} if layer.name in pairs else cfg)

    def call(layer, *args, **kwargs):  # a folded BN is skipped: its input goes straight on
        return args[0] if layer.name in folded_bns else layer(*args, **kwargs)

    new = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in model.layers:
        weights = layer.get_weights()
        if layer.name in folded_bns or not weights:
            continue
        if layer.name not in pairs:
            new.get_layer(layer.name).set_weights(weights)
            continue
        bn = model.get_layer(pairs[layer.name])
        mean, var = (np.asarray(v, np.float64) for v in (bn.moving_mean, bn.moving_variance))
        gamma = np.asarray(bn.gamma, np.float64) if bn.gamma is not None else np.ones_like(mean)
        beta = np.asarray(bn.beta, np.float64) if bn.beta is not None else np.zeros_like(mean)
        scale = gamma / np.sqrt(var + bn.epsilon)
        kernels = list(weights[:-1] if layer.use_bias else weights)
        bias = np.asarray(weights[-1], np.float64) if layer.use_bias else 0.0
        kernels[-1] = kernels[-1] * scale  # the last kernel (pointwise for separable) maps to the output channels
        bias = beta + (bias - mean) * scale
        dtype = weights[0].dtype
        new.get_layer(layer.name).set_weights([k.astype(dtype) for k in kernels] + [bias.astype(dtype)])
    return new


def ensemble_model(members: list, name: str = "ensemble") -> Any:
    """One flat functional model averaging the members' softmax outputs, on one shared input.

    Each member's layers are cloned with an `m<i>_` name prefix (names must be unique in one graph) and
    their weights copied; flat rather than nested, so `fold_batchnorm` and `crop_size` see the layers and
    everything downstream (evaluate's TTA, the pyfunc, serving) treats the ensemble as one model."""
    import keras

    if len(members) < 2:
        raise ConfigError(f"an ensemble needs at least two members; got {len(members)}.")
    inputs = keras.Input((IMG_SIZE, IMG_SIZE, 1), name="pixels")
    outputs = []
    for i, member in enumerate(members, start=1):
        def clone(layer, prefix=f"m{i}_"):
            return layer.__class__.from_config({**layer.get_config(), "name": prefix + layer.name})

        copy = keras.models.clone_model(member, input_tensors=inputs, clone_function=clone)
        for layer in member.layers:
            if layer.weights:
                copy.get_layer(f"m{i}_{layer.name}").set_weights(layer.get_weights())
        outputs.append(copy.output)
    return keras.Model(inputs, keras.layers.Average(name="ensemble_mean", dtype="float32")(outputs), name=name)


def crop_size(model: Any) -> int:
    """The inference crop of a built/loaded model (0 when it has no crop layer)."""
    import keras

    cls = _layers()["RandomCropOrCenter"]
    for layer in model.layers:
        if isinstance(layer, cls):
            return int(layer.size)
        if isinstance(layer, keras.layers.CenterCrop):
            return int(layer.height)
    return 0
