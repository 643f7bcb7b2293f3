"""Using the champion: the MLflow pyfunc model, face detection and `ferops predict` on photos.

Every path ends in the preprocessing of training data: a grey image, centre-cropped to a square and
resized to 48x48 like ingest's image reader, fed as raw 0..255 pixels to the Keras model (which scales
them itself). Photos are first cut to the square around each detected face.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import os
import re
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ferops.constants import EMOTIONS, FACE_MODES, IMG_SIZE, N_PIXELS, NUM_CLASSES, TTA_SETTINGS, TTA_VIEW_MODES
from ferops.data.formats import image_suffixes, opencv_reads_gif, resize_to_model
from ferops.errors import ConfigError, DataError, FerError

log = logging.getLogger("ferops.inference")

KERAS_ARTIFACT = "keras_model"
PROB_COLUMNS: tuple[str, ...] = tuple(f"prob_{name}" for name in EMOTIONS)
OUTPUT_COLUMNS: tuple[str, ...] = ("label", "label_name", *PROB_COLUMNS, "model")
# Set by `ferops serve` for the `mlflow models serve` it starts: {"model": "models:/<name>/<N>", "run_id": ...}, the
# registered version it resolved; FerPyfunc answers as that version when it was logged from that run (served_model).
SERVED_MODEL_ENV = "FEROPS_SERVED_MODEL"
BATCH_SIZE = 512
# Test-time augmentation at prediction: ferops.tta's view modes, plus `auto` = the mode `evaluate` chose on
# val for the registered model (recorded in its pyfunc model_config at registration; none when unknown).
FACE_MARGIN = 0.1          # grow detector boxes by 10 % a side: FER2013 crops include brow and chin
MIN_FACE_PX = 24           # smallest face searched for, in pixels of the (downscaled) detection image
# Long side of the detection image per backend: the cascades' cost grows with its area; at these sizes a
# textured 512x512 photo takes ≈110 ms (Haar) / ≈120 ms (LBP) of CPU here, and faces down to 6 % / 9 % of
# the long side are found.
DETECT_MAX_SIDE = {"opencv-haar": 400, "skimage-lbp": 256}
ANNOTATED_MAX_SIDE = 1920  # annotated copies of huge photos are downscaled to this (for viewing)
ANNOTATED_MIN_SIDE = 256   # and small images (face crops) enlarged to this
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".webp", ".tif", ".tiff")  # and .gif where OpenCV reads it
COLOUR_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s != ".pgm")  # an annotated copy of a grey-only format is a PNG
OTHER_IMAGE_SUFFIXES = (".gif", ".heic", ".heif", ".avif")  # photos OpenCV may not read: named when a folder walk skips them
# `ferops predict --faces`: detect faces, take the whole image as one face, or auto = whole for a small near-square
# image (a face crop, e.g. FER2013's own 48-px files) and detection otherwise. On the 67 PublicTest (val) crops of
# the image-folder sample the cascade finds a face in only 12: the champion scores 58 % whole, 7 % with detection
# (benchmarks/face_modes.py; benchmarks/RESULTS.md, "Inference").
FACE_CROP_MAX_SIDE = 128
LOAD_FIX = "run `make run` (or `dvc repro`) to train and register the champion, or pass --model path/to/model.keras"
MODEL_HINT = "pass a .keras file, a model directory (models/deep/<m>) or a models:/name@alias URI"
PHOTO_GROUP = 64           # photos read and classified together: one model call per group, not per photo
MAX_LISTED_ERRORS = 5
# what to try next, after the list of photos a note names (the note itself stays a plain fact in the JSON)
NOTE_FIXES = {"no face found": "--faces whole classifies each photo whole, as one face"}

Box = tuple[int, int, int, int]  # x, y, w, h in pixels of the original image
_DETECT_LOCK = threading.Lock()  # one cascade object is shared; OpenCV's is not safe for concurrent calls (serving)


class InputError(DataError, ValueError):
    """Bad model input rows: a ValueError for Python callers, a FerError for the CLI."""


# ---- preprocessing (pure) ----------------------------------------------------------------------------------

def _error_summary(errors: list[str], what: str) -> str:
    head = "; ".join(errors[:MAX_LISTED_ERRORS])
    more = f"; … and {len(errors) - MAX_LISTED_ERRORS} more" if len(errors) > MAX_LISTED_ERRORS else ""
    return f"{len(errors)} bad {what}: {head}{more}"


def _parse_rows(values: Sequence[Any]) -> tuple[np.ndarray, dict[int, str]]:
    """`pixels` values → uint8[N,48,48] + {position: reason} for bad rows (ingest's parser: one C pass)."""
    from ferops.data.formats import parse_pixel_strings as parse

    values = list(values)
    not_text = {i: f"expected a string of {N_PIXELS} space-separated grey levels, got {type(v).__name__}"
                for i, v in enumerate(values) if not isinstance(v, str)}
    faces, bad = parse([v if isinstance(v, str) else "" for v in values])
    return faces, {**bad, **not_text}


def parse_pixel_strings(values: Sequence[Any]) -> np.ndarray:
    """FER2013 `pixels` strings → uint8[N,48,48]; InputError names every bad row and why."""
    faces, bad = _parse_rows(values)
    if bad:
        raise InputError(_error_summary([f"row {i}: {why}" for i, why in sorted(bad.items())], "`pixels` row(s)"))
    return faces


def decode_image(data: str | bytes) -> np.ndarray:
    """Base64 text (a `data:image/...;base64,` prefix is allowed) or raw bytes → grey uint8 image; ValueError why not."""
    import cv2

    if isinstance(data, str):
        text = "".join(data.split())  # line-wrapped base64 is fine
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not valid base64 (send the image file's bytes base64-encoded)") from None
    elif isinstance(data, (bytes, bytearray)):
        raw = bytes(data)
    else:
        raise ValueError(f"expected base64 text, got {type(data).__name__}")
    if not raw:
        raise ValueError("empty image")
    gray = _imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_GRAYSCALE)
    if gray is None:
        raise ValueError(known_format_problem(raw)
                         or f"not a decodable image ({len(raw)} bytes; use PNG, JPEG, BMP, WebP or TIFF)")
    return gray


MAX_PIXELS_ENV = "FEROPS_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 1 << 27  # 134 Mpx (11,585 px square): a phone's 50-Mpx photo decodes; a 1-Gpx bomb does not


def max_image_pixels() -> int:
    """The most pixels an image may declare before it is decoded (FEROPS_MAX_IMAGE_PIXELS, else 2^27); ConfigError
    for a value that is no whole number above 0 (it was ignored unsaid)."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    if not value.isascii() or not value.isdigit() or int(value) == 0:  # "²".isdigit(), but int("²") fails
        raise ConfigError(f"{MAX_PIXELS_ENV}={value!r}: give the most pixels an image may have as a whole number "
                          f"above 0 (default {DEFAULT_MAX_PIXELS}), or unset it.")
    return int(value)


def declared_pixels(buf: np.ndarray | bytes) -> int | None:
    """Width × height from an image's header, read without decoding it (Pillow), or None where Pillow does not
    know the format: a 1-MB PNG can declare 32,000 × 32,000 pixels, which OpenCV (its limit is 2^30) decoded in full —
    3 GB and 8 s for one REST request."""
    import io
    import warnings

    try:
        from PIL import Image
    except ImportError:  # Pillow comes with matplotlib and scikit-image; without it, OpenCV's own limit stands
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(buf if isinstance(buf, bytes) else buf.tobytes())) as im:
                return int(im.width) * int(im.height)
    except Image.DecompressionBombError as exc:  # over twice Pillow's own limit: the size is in its message
        m = re.search(r"\((\d+) pixels\)", str(exc))
        return int(m.group(1)) if m else None
    except Exception:  # not an image Pillow reads: OpenCV decides
        return None


def _imdecode(buf: np.ndarray, flags: int) -> np.ndarray | None:
    """cv2.imdecode: the image, or None when `buf` does not decode; ValueError when OpenCV refuses the image outright,
    as it does one over its pixel limit with cv2.error (uncaught: MLflow's generic "unexpected error" reply to a REST
    request, a traceback ending a photo folder's run)."""
    import cv2

    declared, most = declared_pixels(buf), max_image_pixels()
    if declared is not None and declared > most:
        raise ValueError(f"too large to decode: {declared:,} pixels declared, over the {most:,} ferops decodes "
                         f"({MAX_PIXELS_ENV}; a decompression bomb looks like this) — downscale it")
    try:
        return cv2.imdecode(buf, flags)
    except cv2.error as exc:
        if "CV_IO_MAX_IMAGE_PIXELS" in str(exc):
            limit = os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", "")
            limit = f"{int(limit):,}" if limit.isdigit() else f"{1 << 30:,}"
            raise ValueError(f"too large to decode: more than {limit} pixels, OpenCV's limit "
                             "(OPENCV_IO_MAX_IMAGE_PIXELS) — downscale it") from None
        raise ValueError(f"OpenCV cannot decode it ({str(exc).strip().splitlines()[-1]})") from None


# File signatures of formats people send: a file that starts like one but does not decode is damaged, not the
# wrong kind of file, and HEIC (phones) and GIF are formats OpenCV does not read at all.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"), (0, b"\x89PNG\r\n\x1a\n", "PNG"), (0, b"BM", "BMP"), (8, b"WEBP", "WebP"),
    (0, b"II*\x00", "TIFF"), (0, b"MM\x00*", "TIFF"), (0, b"GIF8", "GIF"), (4, b"ftypheic", "HEIC"),
    (4, b"ftypheix", "HEIC"), (4, b"ftypmif1", "HEIF"))


def known_format_problem(data: bytes | np.ndarray) -> str | None:
    """Why OpenCV could not decode the image file `data` as 8-bit grey or colour, when its first bytes name a
    format; None when they do not (then it is simply not an image)."""
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else np.asarray(data, np.uint8)
    head = buf[:16].tobytes()
    kind = next((name for at, sig, name in _SIGNATURES if head[at:at + len(sig)] == sig), None)
    if kind in ("HEIC", "HEIF") or (kind == "GIF" and not opencv_reads_gif()):
        return f"a {kind} image, which OpenCV cannot read — convert it to JPEG or PNG"
    if kind:
        samples = _wide_samples(buf)
        if samples:  # e.g. a scientific TIFF: intact, but no grey levels to map its values to
            return f"a {kind} image with {samples} samples, which ferops does not read — save it as 8-bit PNG or JPEG"
        return f"a damaged or cut-short {kind} file ({buf.size} bytes) — re-export or re-download it"
    return None


def _wide_samples(buf: np.ndarray) -> str | None:
    """`32-bit floating-point` (…) when `buf` decodes only as is, with samples wider than 16-bit: OpenCV does not
    convert those to 8-bit grey or colour (a TIFF of floats or 32-bit integers); None otherwise."""
    import cv2

    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype.itemsize <= 2:
        return None
    return f"{8 * img.dtype.itemsize}-bit {'floating-point' if img.dtype.kind == 'f' else 'integer'}"


def frame_to_faces(df: pd.DataFrame, crop_face: bool = False) -> np.ndarray:
    """Model input rows → uint8[N,48,48]: `pixels` strings, else base64 `image`s (if crop_face: the largest face,
    unless the image is itself a face crop, see is_face_crop)."""
    has_pixels, has_image = "pixels" in df.columns, "image" in df.columns
    if not (has_pixels or has_image):
        # MLflow's signature enforcement drops unknown columns before predict() sees them, so over REST `df` is
        # often empty: say which names are expected rather than "input has columns []".
        got = f"input has columns {list(map(str, df.columns))}" if len(df.columns) else \
            "input has no `pixels` or `image` column (other columns are ignored)"
        raise InputError(f"{got}; it needs a `pixels` column (FER2013: {N_PIXELS} space-separated grey levels) or "
                         f"an `image` column (base64-encoded image bytes).")
    n = len(df)
    def present(col: str) -> np.ndarray:  # an empty string is no value either (a client's blank field)
        if col not in df.columns:
            return np.zeros(n, bool)
        return (df[col].notna() & (df[col].astype(str).str.strip() != "")).to_numpy()

    given_pixels, given_image = present("pixels"), present("image")
    use_pixels, use_image = given_pixels & ~given_image, given_image & ~given_pixels
    errors = [f"row {i}: neither `pixels` nor `image` is given" for i in np.flatnonzero(~(given_pixels | given_image))]
    # both: which one the caller meant is unknown (an invalid `image` was ignored unsaid)
    errors += [f"row {i}: both `pixels` and `image` are given; send one"
               for i in np.flatnonzero(given_pixels & given_image)]
    faces = np.zeros((n, IMG_SIZE, IMG_SIZE), dtype=np.uint8)
    if use_pixels.any():
        idx = np.flatnonzero(use_pixels)
        faces[idx], bad = _parse_rows(df["pixels"].to_numpy()[idx])
        errors += [f"row {idx[k]}: `pixels` {why}" for k, why in bad.items()]
    for i in np.flatnonzero(use_image):
        try:
            gray = decode_image(df["image"].iat[i])
        except ValueError as exc:
            errors.append(f"row {i}: `image` {exc}")
            continue
        if crop_face:  # as `ferops predict --faces auto`: a small near-square image is already a face crop
            boxes, source = face_regions(gray, "auto")
            if boxes and source == "detected":
                gray = crop_square(gray, max(boxes, key=lambda b: b[2] * b[3]))
        faces[i] = resize_to_model(gray)
    if errors:
        raise InputError(_error_summary(sorted(errors, key=lambda e: int(e.split()[1].rstrip(":"))), "input row(s)"))
    return faces


def probabilities_frame(proba: np.ndarray, index: pd.Index | None = None) -> pd.DataFrame:
    """Probabilities [N,7] → DataFrame(label, label_name, prob_Angry … prob_Neutral)."""
    proba = np.asarray(proba, dtype=np.float64).reshape(-1, NUM_CLASSES)
    labels = proba.argmax(axis=1) if len(proba) else np.zeros(0, dtype=np.int64)
    df = pd.DataFrame({"label": labels.astype(np.int64), "label_name": np.asarray(EMOTIONS, dtype=object)[labels]},
                      index=index)
    for j, col in enumerate(PROB_COLUMNS):
        df[col] = proba[:, j]
    return df


# ---- the model call ----------------------------------------------------------------------------------------

def check_tta(tta: str, allowed: Sequence[str] = TTA_SETTINGS) -> str:
    """`tta` if it is one of `allowed`, else ConfigError naming them."""
    if tta not in allowed:
        raise ConfigError(f"tta={tta!r}: use one of {', '.join(allowed)}.")
    return tta


def predict_proba(model: Any, faces: np.ndarray, batch_size: int = BATCH_SIZE, tta: str = "none") -> np.ndarray:
    """uint8/float faces [N,48,48(,1)] → probabilities [N,7] via `predict_on_batch` per chunk.

    `predict_on_batch` runs the compiled graph without `model.predict`'s per-call dataset set-up (≈80 ms),
    so one photo's faces take milliseconds; a plain callable (e.g. a wrapped pyfunc) is called per chunk.
    `tta` other than none averages the views `evaluate` scores (`ferops.tta.tta_views`), all views of a
    chunk in one call: ten-crop costs ~10x the images, but one face's 10 views still run as one small batch.
    """
    check_tta(tta, TTA_VIEW_MODES)
    x = np.asarray(faces, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if len(x) == 0:
        return np.zeros((0, NUM_CLASSES), dtype=np.float32)
    call = model.predict_on_batch if hasattr(model, "predict_on_batch") else model
    if tta == "none":
        return np.concatenate([np.asarray(call(x[i:i + batch_size]), dtype=np.float32)
                               for i in range(0, len(x), batch_size)])
    from ferops.tta import tta_views

    crop = 0
    if tta in ("tencrop", "shift"):
        if not hasattr(model, "layers"):
            raise ConfigError(f"tta={tta!r} needs the Keras model (its crop size); this model only takes flip or none.")
        from ferops.models.zoo import crop_size

        crop = crop_size(model)
    n_views = len(tta_views(x[:1], tta, crop))
    step = max(1, batch_size // n_views)
    parts = []
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        views = np.concatenate(tta_views(chunk, tta, crop))  # view-major: [n_views * len(chunk), 48, 48, 1]
        parts.append(np.asarray(call(views), np.float32).reshape(n_views, len(chunk), -1).mean(axis=0))
    return np.concatenate(parts)


def load_keras(path: str | Path, fold: bool = True) -> Any:
    """A saved `.keras` model (ferops custom layers registered first), without its training config; `fold`:
    with its BatchNormalization layers folded into the convolutions before them (`fold_batchnorm`: the same
    predictions to float rounding, faster on CPU)."""
    from ferops.runner import start_tensorflow

    start_tensorflow()  # `mlflow models serve` workers start here: oneDNN on if TF is not imported yet
    import keras

    from ferops.models.zoo import custom_objects, fold_batchnorm

    model = keras.models.load_model(str(path), custom_objects=custom_objects(), compile=False)
    return fold_batchnorm(model) if fold else model


# ---- MLflow pyfunc -----------------------------------------------------------------------------------------

@functools.cache
def _pyfunc_class() -> type:
    """Build FerPyfunc on first use, so importing this module does not import MLflow (≈2 s)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    from mlflow.pyfunc import PythonModel

    class ServingInputError(MlflowException, ValueError):
        """Bad rows: a ValueError in Python, an HTTP 400 with this message from `mlflow models serve`."""

        def __init__(self, message: str):
            super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    class FerPyfunc(PythonModel):
        """FER2013 expression classifier: `pixels` strings or base64 `image`s in, label + 7 probabilities + model out."""

        def load_context(self, context: Any) -> None:
            """Load the Keras model from the `keras_model` artifact, the TTA mode recorded with it and the name it
            answers as (served_model)."""
            max_image_pixels()  # a bad FEROPS_MAX_IMAGE_PIXELS stops the server at start, not each request as a 400
            self.model = load_keras(context.artifacts[KERAS_ARTIFACT])
            self.tta = recorded_tta(context.model_config)
            self.temperatures = recorded_temperatures(context.model_config)
            self.served_as = served_model(context.artifacts[KERAS_ARTIFACT])

        def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
            """One row per image → label, label_name, prob_<class>, model (the URI of the model answering); params:
            crop_face (bool, for photos), tta (none | flip | tencrop | shift | auto = the mode chosen on val at
            evaluation)."""
            df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
            params = params or {}
            crop = bool(params.get("crop_face", False))
            try:
                tta = check_tta(str(params.get("tta") or "none"))
                faces = frame_to_faces(df, crop_face=crop)
            except (InputError, ConfigError) as exc:
                raise ServingInputError(str(exc)) from None
            mode = self.tta if tta == "auto" else tta
            probs = apply_temperature(predict_proba(self.model, faces, tta=mode), self.temperatures.get(mode, 1.0))
            out = probabilities_frame(probs, index=df.index)
            out["model"] = self.served_as
            return out

    FerPyfunc.__module__ = __name__
    FerPyfunc.__qualname__ = "FerPyfunc"  # ferops.inference.FerPyfunc, as pyfunc_code.py (and older pickles) name it
    return FerPyfunc


def __getattr__(name: str) -> Any:
    """`ferops.inference.FerPyfunc` is created lazily (see _pyfunc_class)."""
    if name == "FerPyfunc":
        return _pyfunc_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def recorded_tta(model_config: dict[str, Any] | None) -> str:
    """The TTA mode stored in a FerPyfunc's model_config (`tta`), `none` when absent or not a view mode."""
    mode = str((model_config or {}).get("tta") or "none")
    return mode if mode in TTA_VIEW_MODES else "none"


def recorded_temperatures(model_config: dict[str, Any] | None) -> dict[str, float]:
    """The calibration temperature per TTA mode stored in a FerPyfunc's model_config (`temperature`, fitted on val by
    evaluate); {} when absent (a version registered before ferops calibrated: its probabilities are served raw)."""
    temps = (model_config or {}).get("temperature") or {}
    if not isinstance(temps, dict):
        return {}
    out = {}
    for mode, t in temps.items():
        try:
            t = float(t)
        except (TypeError, ValueError):
            continue
        if mode in TTA_VIEW_MODES and 1e-3 <= t <= 1e3:  # evaluate fits within 0.05-20; beyond, a hand-set tag
            out[str(mode)] = t
    return out


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities softmax(log p / T): T > 1 softens them, T < 1 sharpens; each row's most probable class stays the
    same (float64: two classes one float32 step apart stay apart). T = 1 returns `probs` unchanged."""
    if temperature == 1.0 or len(probs) == 0:
        return probs
    z = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def served_model(artifact: str | Path) -> str | None:
    """The URI a FerPyfunc answers as: `models:/<name>/<N>` when `ferops serve` resolved that registered version and
    named it in $FEROPS_SERVED_MODEL with the run this model was logged from, else the logged model's own
    `models:/<model_id>` (both read from the MLmodel file above `artifact`: plain `mlflow models serve`, or a variable
    left over for another model); None when neither is known."""
    meta: dict[str, Any] = {}
    for folder in Path(artifact).parents:
        if (folder / "MLmodel").is_file():
            import yaml

            meta = yaml.safe_load((folder / "MLmodel").read_text()) or {}
            break
    try:
        told = json.loads(os.environ.get(SERVED_MODEL_ENV) or "{}")
    except ValueError:
        told = {"unreadable": os.environ.get(SERVED_MODEL_ENV)}
    own = f"models:/{meta['model_id']}" if meta.get("model_id") else None
    if isinstance(told, dict) and told.get("model") and meta.get("run_id") and told.get("run_id") == meta["run_id"]:
        return str(told["model"])
    if told:
        log.warning("$%s is not about this model (MLflow run %s): %s — answering as %s", SERVED_MODEL_ENV,
                    meta.get("run_id"), told, own)
    return own


def model_signature() -> Any:
    """Input: optional string columns `pixels` / `image`; output: label, label_name, prob_*, model; params crop_face,
    tta."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "pixels", required=False), ColSpec("string", "image", required=False)])
    outputs = Schema([ColSpec("long", "label"), ColSpec("string", "label_name"),
                      *(ColSpec("double", c) for c in PROB_COLUMNS), ColSpec("string", "model", required=False)])
    params = ParamSchema([ParamSpec("crop_face", "boolean", False), ParamSpec("tta", "string", "none")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def pip_requirements() -> list[str]:
    """Pinned versions of what FerPyfunc and the ferops code bundled with it import (explicit, so MLflow does not
    load the model to infer them). ferops itself travels inside the model (`code_paths`), so the model also loads
    where ferops is not installed: a Docker image from `mlflow models build-docker`, another machine."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", "tensorflow", "keras", "numpy", "pandas", "opencv-python-headless", "scikit-image",
                "pyyaml"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            pass
    return reqs


def log_pyfunc_model(keras_model_path: Path, name: str = "pyfunc_model", tta: str = "none",
                     temperatures: dict[str, float] | None = None) -> str:
    """Log FerPyfunc wrapping `keras_model_path` into the active MLflow run; returns the model URI. `tta` is
    recorded as the mode a request's `tta: auto` uses (the register stage passes the one evaluate chose on val),
    `temperatures` as the calibration of each TTA mode's probabilities (evaluate's, fitted on val; none: raw)."""
    import mlflow

    path = Path(keras_model_path)
    if not path.is_file():
        raise DataError(f"{path}: Keras model file not found (train it with `dvc repro train_deep`).")
    if mlflow.active_run() is None:
        raise ConfigError("log_pyfunc_model needs an active MLflow run (call it inside mlflow.start_run()).")
    # A second pyfunc of the same run (register, after evaluate chose another TTA mode) cannot re-log the run param
    # `tta`; MLflow warns and carries on, and the mode is in the model's own config, which is what serving reads.
    quiet = logging.getLogger("mlflow.models.model")
    drop = _DropMessage("Failed to log model config as params")
    quiet.addFilter(drop)
    try:
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("pyfunc_code.py")),  # models from code: no pickle
            # the ferops package, copied into the model: it loads and serves with the preprocessing and TTA code it
            # was registered with, also where ferops is not installed (a process that already imported ferops,
            # e.g. `ferops predict`, keeps its own copy)
            code_paths=[str(Path(__file__).parent)],
            artifacts={KERAS_ARTIFACT: str(path)},
            signature=model_signature(),
            model_config={"tta": check_tta(tta, TTA_VIEW_MODES),
                          "temperature": recorded_temperatures({"temperature": temperatures})},
            # A mid-grey face as the example: MLflow stores it (and a REST payload) beside the model.
            input_example=pd.DataFrame({"pixels": [" ".join(["128"] * N_PIXELS)]}),
            pip_requirements=pip_requirements(),
        )
    finally:
        quiet.removeFilter(drop)
    log.info("logged pyfunc model %s (%s)", info.model_uri, path)
    return info.model_uri


class _DropMessage(logging.Filter):
    """A logging filter that drops records whose message starts with `prefix`."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


# ---- face detection ----------------------------------------------------------------------------------------

@functools.cache
def face_detector() -> tuple[str, Any]:
    """(backend name, detector): OpenCV's Haar cascade when cv2 ships it, else scikit-image's LBP cascade.

    opencv-python 5.x moved CascadeClassifier and its XML files out of the wheel (to contrib, without
    data); scikit-image ships OpenCV's LBP frontal-face cascade, so detection works offline either way.
    """
    import cv2

    data = getattr(cv2, "data", None)
    xml = Path(getattr(data, "haarcascades", "")) / "haarcascade_frontalface_default.xml"
    if hasattr(cv2, "CascadeClassifier") and xml.is_file():
        cascade = cv2.CascadeClassifier(str(xml))
        if not cascade.empty():
            return "opencv-haar", cascade
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    return "skimage-lbp", Cascade(lbp_frontal_face_cascade_filename())


def _merge_overlaps(boxes: list[Box], overlap: float = 0.5) -> list[Box]:
    """Drop boxes that mostly lie inside a larger one (multi-scale detectors fire twice on one face)."""
    kept: list[Box] = []
    for b in sorted(boxes, key=lambda b: -b[2] * b[3]):
        for k in kept:
            iw = min(b[0] + b[2], k[0] + k[2]) - max(b[0], k[0])
            ih = min(b[1] + b[3], k[1] + k[3]) - max(b[1], k[1])
            if iw > 0 and ih > 0 and iw * ih > overlap * b[2] * b[3]:
                break
        else:
            kept.append(b)
    return kept


def shrink(img: np.ndarray, max_side: int, exact: bool = True) -> np.ndarray:
    """Downscale so the long side is ≤ max_side (= max_side when `exact`), area-averaged.

    An integer-factor INTER_AREA resize hits OpenCV's fast path (≈8 ms instead of ≈45 ms for a 12 MP
    photo); only the small remainder, if `exact`, goes through the general resize.
    """
    import cv2

    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    k = max(h, w) // max_side if exact else -(-max(h, w) // max_side)
    if k >= 2 and 2 * min(h, w) <= k:  # a thin strip (a 4000x1 banner): fx would round its short side to 0 px
        img = cv2.resize(img, (max(1, round(w / k)), max(1, round(h / k))), interpolation=cv2.INTER_AREA)
    elif k >= 2:
        img = cv2.resize(img, None, fx=1 / k, fy=1 / k, interpolation=cv2.INTER_AREA)
    if exact and max(img.shape[:2]) > max_side:
        f = max_side / max(h, w)
        img = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return img


def detect_faces(gray: np.ndarray, max_side: int | None = None, min_face: int = MIN_FACE_PX) -> list[Box]:
    """Frontal faces in a grey image as (x, y, w, h), left to right.

    Large images are downscaled to `max_side` for detection (default DETECT_MAX_SIDE of the backend)
    and the boxes mapped back to original pixels.
    """
    import cv2

    gray = np.asarray(gray)
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_BGR2GRAY)
    if gray.ndim != 2 or min(gray.shape) < min_face:
        return []
    gray = gray.astype(np.uint8, copy=False)
    backend, det = face_detector()
    max_side = max_side or DETECT_MAX_SIDE[backend]
    small = shrink(gray, max_side)
    sx, sy = small.shape[1] / gray.shape[1], small.shape[0] / gray.shape[0]
    if min(small.shape) < min_face:
        return []
    with _DETECT_LOCK:
        raw = _run_cascade(backend, det, small, min_face)
    h, w = gray.shape
    boxes = []
    for x, y, bw, bh in raw:
        x0, y0 = max(0, round(x / sx)), max(0, round(y / sy))
        boxes.append((x0, y0, min(w - x0, round(bw / sx)), min(h - y0, round(bh / sy))))
    return sorted(_merge_overlaps(boxes), key=lambda b: (b[0], b[1]))


def _run_cascade(backend: str, det: Any, small: np.ndarray, min_face: int) -> list[Box]:
    """Raw (x, y, w, h) detections of one backend on the detection-size image."""
    if backend == "opencv-haar":
        # No histogram equalisation: it amplifies noise on flat backgrounds into false negatives.
        found = det.detectMultiScale(small, scaleFactor=1.1, minNeighbors=5, minSize=(min_face, min_face))
        return [(int(x), int(y), int(w), int(h)) for x, y, w, h in found]
    # Finer scale/position steps than the defaults: coarser ones miss ~1 face in 8 on our test photos.
    found = det.detect_multi_scale(img=small.astype(np.float32) / 255.0, scale_factor=1.15, step_ratio=1.1,
                                   min_size=(min_face, min_face), max_size=(small.shape[1], small.shape[0]),
                                   min_neighbor_number=4)
    return [(d["c"], d["r"], d["width"], d["height"]) for d in found]


def crop_square(gray: np.ndarray, box: Box, margin: float = FACE_MARGIN) -> np.ndarray:
    """The square around a face box grown by `margin` a side; edges beyond the image are replicated."""
    import cv2

    x, y, w, h = box
    side = max(1, round(max(w, h) * (1 + 2 * margin)))
    x0, y0 = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
    H, W = gray.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - W, y0 + side - H)
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    return gray[y0:y0 + side, x0:x0 + side]


# ---- photos: `ferops predict` ------------------------------------------------------------------------------

def _champion_uri(params_path: str | Path | None) -> str:
    """models:/<register.model_name>@<register.champion_alias> from `params_path` (None: the project's params.yaml;
    defaults outside a project)."""
    from ferops.config import project_params, registry_names

    name, alias = registry_names(project_params(params_path))
    return f"models:/{name}@{alias}"


@dataclass(frozen=True)
class Classifier:
    """A model to classify faces with, the TTA mode recorded with it (`none` when nothing was recorded) and what it
    was loaded from (`models:/<name>/<N>` for a registered version, else the URI or path given)."""

    model: Any   # a Keras model, or a probabilities function over a generic pyfunc
    tta: str = "none"
    source: str | None = None
    temperatures: dict[str, float] = field(default_factory=dict)  # per TTA mode, recorded with a registered version

    def resolve(self, tta: str) -> str:
        """A requested mode, with `auto` replaced by the recorded one."""
        return self.tta if check_tta(tta) == "auto" else tta

    def temperature(self, mode: str) -> float:
        """The calibration temperature of view mode `mode` (1.0: probabilities as the network gives them)."""
        return self.temperatures.get(mode, 1.0)


def store_missing_error(store: str, fix: str) -> str:
    """Why a reading command found no sqlite store at `store`, and the cure: outside a ferops project (with no
    MLFLOW_TRACKING_URI) it is the project folder; inside one nothing has been trained yet, so `fix`."""
    from ferops.config import in_project, not_in_project

    if not os.environ.get("MLFLOW_TRACKING_URI") and not in_project():
        return (f"no MLflow store at {store}: "
                f"{not_in_project('MLFLOW_TRACKING_URI', 'its store (sqlite:////path/to/project/mlflow.db)')}.")
    return f"no MLflow store at {store}: nothing is registered there yet — {fix}."


def cli_serve(args: Any) -> None:
    """`ferops serve`: check the model is registered (one line, not MLflow's traceback), then become
    `mlflow models serve` on it, with this project's store and the host/port asked for (loopback by default)."""
    uri = args.model or _champion_uri(args.params)
    _check_servable(uri)
    store, version = check_registered(uri, "run `make run` first, or name one with --model")
    moved = _moved_project(version)
    if moved is not None:  # else `mlflow models serve` dies with "No such artifact: 'MLmodel'" and a traceback
        raise FerError(f"cannot serve {uri} (version {version.version}) from {store}: {moved}.")
    from ferops.runner import ensure_port_free

    ensure_port_free(args.host, args.port, "ferops serve")
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", _pinned(uri, version), "--env-manager", "local",
           "--host", str(args.host), "--port", str(args.port)]
    log.info("serving %s on http://%s:%s/invocations (Ctrl-C stops it)", uri, args.host, args.port)
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    env.pop(SERVED_MODEL_ENV, None)
    if version is not None:  # each answer names the version (FerPyfunc.predict's `model`), not the alias that moves
        env[SERVED_MODEL_ENV] = json.dumps({"model": _pinned(uri, version), "run_id": version.run_id})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)


def _check_servable(uri: str) -> None:
    """FerError unless `uri` is something `mlflow models serve` takes: a models:/ or runs:/ URI, or a folder with an
    MLmodel file — not a .keras file or a model folder without MLmodel, which `ferops predict --model` also takes
    (else `mlflow models serve` dies with "No such artifact: 'MLmodel'" and a traceback)."""
    path = Path(uri)
    if (":/" in uri and not path.exists()) or (path / "MLmodel").is_file():
        return
    what = ("no such file or folder" if not path.exists() else "a Keras file" if path.is_file()
            else "a folder with no MLmodel file in it")
    raise FerError(f"cannot serve --model {uri}: {what}. ferops serve takes a registered model (models:/<name>@<alias> "
                   f"or models:/<name>/<N>: `ferops registry` lists them), a runs:/ URI or an MLflow model folder; "
                   f"`ferops predict --model` takes .keras files and model folders.")


def _moved_project(version: Any) -> str | None:
    """Why registered `version` cannot load and the cure, when the local folder the store names for its files is not
    there (MLflow stores absolute paths: a moved project breaks); None when it is, or the version is None or remote."""
    import mlflow

    if version is None:
        return None
    where = mlflow.MlflowClient().get_model_version_download_uri(version.name, version.version)
    path = Path(where[len("file://"):]) if where.startswith("file://") else None
    if path is None or path.exists():
        return None
    return (f"its files are not at {path}, where the store says they are: MLflow records absolute paths, so a copied "
            "or moved project still points at the original's mlartifacts/ — keep the project where it was trained, "
            "or re-run `make run` in the new place")


def _alias_ref(uri: str) -> tuple[str, str] | None:
    """(name, alias) of a `models:/<name>@<alias>` URI, else None."""
    if uri.startswith("models:/") and "@" in uri:
        name, alias = uri[len("models:/"):].split("@", 1)
        return name, alias
    return None


def _version_ref(uri: str) -> tuple[str, str] | None:
    """(name, number or `latest`) of a `models:/<name>/<N>` or `models:/<name>/latest` URI, else None."""
    if uri.startswith("models:/") and "@" not in uri:
        parts = uri[len("models:/"):].split("/")
        if len(parts) == 2 and parts[0] and (parts[1].isdigit() or parts[1] == "latest"):
            return parts[0], parts[1]
    return None


def _registered_version(client: Any, store: str, name: str, number: str, fix: str) -> Any:
    """Version `number` (or the newest, for `latest`) of `name`, else FerError naming the versions there are."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        raise FerError(f"the registry at {store} has no model {name!r}: {fix}.") from None
    try:
        if number != "latest":
            return client.get_model_version(name, number)
    except MlflowException:
        pass
    from ferops.tracking import model_versions

    versions = model_versions(client, name)
    if number == "latest" and versions:
        return max(versions, key=lambda v: int(v.version))
    have = ", ".join(str(n) for n in sorted(int(v.version) for v in versions)) or "none"
    raise FerError(f"the registry at {store} has model {name!r} but no version {number}; its versions: {have} "
                   "(`ferops registry` lists them).")


def check_registered(uri: str, fix: str = LOAD_FIX) -> tuple[str, Any]:
    """Point MLflow at the ferops store and make sure `uri` (models:/name@alias, models:/name/<N> or /latest) is
    there, else FerError with `fix`; log the version it resolves to, and warn when it was trained on the synthetic
    demo set. Returns (store URI, that ModelVersion, or None for other URIs). (`ferops serve` calls it first, so a missing champion is one line,
    not MLflow's traceback.)"""
    import mlflow
    from mlflow.exceptions import MlflowException

    from ferops.tracking import store_missing, tracking_uri

    store = tracking_uri()
    if store_missing(store):
        raise FerError(store_missing_error(store, fix))
    mlflow.set_tracking_uri(store)
    mlflow.set_registry_uri(store)
    ref = _alias_ref(uri)
    version = None
    if ref is not None:
        name, alias = ref
        client = mlflow.MlflowClient()
        try:
            version = client.get_model_version_by_alias(name, alias)
        except MlflowException:
            try:  # the model exists and only the alias is wrong: name the ones there are, not a retrain
                have = client.get_registered_model(name).aliases or {}
            except MlflowException:
                have = None
            if have is not None:
                listed = ", ".join(f"@{a} (v{v})" for a, v in sorted(have.items())) or "none"
                raise FerError(f"the registry at {store} has model {name!r} but no alias @{alias}; its aliases: "
                               f"{listed} (`ferops registry` lists its versions).") from None
            raise FerError(f"the registry at {store} has no model {name!r} with alias @{alias}: {fix}.") from None
    elif (vref := _version_ref(uri)) is not None:  # a missing version: one line, not `mlflow models serve`'s traceback
        version = _registered_version(mlflow.MlflowClient(), store, *vref, fix)
    if version is not None:
        # which version the alias points at now: a promotion between two runs changes the answer
        log.info("%s is version %s (MLflow run %s)", uri, version.version, version.run_id)
        if (version.tags or {}).get("dataset") == "synthetic":
            log.warning("%s (version %s) was trained on the synthetic demo faces, not on FER2013: its answers on real "
                        "photos mean little. Put FER2013 in data/raw/ and `make run`.", uri, version.version)
    return store, version


def _pinned(uri: str, version: Any) -> str:
    """models:/<name>/<N> for the version an alias resolved to (and was logged as), else `uri`: loading the alias
    again would let a promotion in between swap the model unsaid."""
    return f"models:/{version.name}/{version.version}" if version is not None else uri


def _load_registered(uri: str) -> Classifier:
    """Load a models:/ or runs:/ URI from the ferops tracking store, with the fix when it is not there."""
    import mlflow
    from mlflow.exceptions import MlflowException

    store, version = check_registered(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(_pinned(uri, version))
    except (MlflowException, OSError) as exc:
        first = (getattr(exc, "message", None) or str(exc)).splitlines()[0]
        raise FerError(f"cannot load {uri} from {store}: {first} — {_moved_project(version) or LOAD_FIX}.") from None
    return replace(_from_pyfunc(pyfunc, uri), source=_pinned(uri, version))


def load_classifier(model: str | Path | None = None, params_path: str | Path | None = None) -> Classifier:
    """A model to classify faces with: a .keras file, a model dir, or an MLflow URI (default: the champion)."""
    ref = str(model) if model else _champion_uri(params_path)
    if ":/" in ref and not Path(ref).exists():
        return _load_registered(ref)
    path = Path(ref)
    if path.is_dir():
        if (path / "MLmodel").exists():
            import mlflow

            return replace(_from_pyfunc(mlflow.pyfunc.load_model(str(path)), ref), source=ref)
        if not (path / "model.keras").is_file():
            sk = " (a scikit-learn baseline's: ferops predict takes Keras models)" if (path / "model.joblib").exists() else ""
            raise ConfigError(f"--model {ref}: a folder with no model.keras or MLmodel in it{sk} — {MODEL_HINT}.")
        path = path / "model.keras"
    if not path.is_file():
        raise ConfigError(f"--model {ref}: no such file — {MODEL_HINT}.")
    try:
        model = load_keras(path)
    except Exception as exc:  # keras raises several types for a file that is not a model
        raise ConfigError(f"--model {path}: not a loadable Keras model ({type(exc).__name__}: "
                          f"{first_line(str(exc))}).") from None
    return Classifier(check_contract(model, path), source=str(path))


def first_line(message: str, width: int = 240) -> str:
    """A library message's first line for a one-line error, shortened at a word (`[:200]` cut one mid-word)."""
    import textwrap

    return textwrap.shorten((message.strip().splitlines() or [""])[0], width=width, placeholder=" …")


def check_contract(model: Any, path: str | Path) -> Any:
    """`model` if it takes [N,48,48,1] grey faces and returns 7 class probabilities (every ferops model), else
    ConfigError: another Keras model would fail mid-run with Keras' shape traceback, or index past EMOTIONS."""
    try:
        inp, out = tuple(model.input_shape), tuple(model.output_shape)
    except (AttributeError, ValueError):  # several inputs or outputs: not a ferops model either
        inp, out = None, None
    if (inp is None or out is None  # both None, or neither
            or inp[1:] not in ((IMG_SIZE, IMG_SIZE, 1), (IMG_SIZE, IMG_SIZE)) or out[1:] != (NUM_CLASSES,)):
        have = f"input {inp}, output {out}" if inp is not None else "several inputs or outputs"
        raise ConfigError(f"--model {path}: not a ferops expression model ({have}; expected input "
                          f"(None, {IMG_SIZE}, {IMG_SIZE}, 1) and output (None, {NUM_CLASSES})) — {MODEL_HINT}.")
    return model


def _from_pyfunc(pyfunc: Any, ref: str) -> Classifier:
    """The Keras model inside a FerPyfunc (called directly: no DataFrame round trip per photo) with its recorded
    TTA mode; the Keras model of a keras-flavour model (what each training run logs as `model`, whose tensor input
    takes no `pixels` strings); else a probabilities function over the generic pyfunc `predict` with `pixels`."""
    try:
        inner = pyfunc.unwrap_python_model()
    except Exception:  # not a PythonModel (e.g. a keras-flavour model)
        inner = None
    if inner is not None and hasattr(inner, "model"):
        return Classifier(inner.model, getattr(inner, "tta", "none"), temperatures=getattr(inner, "temperatures", {}))
    try:
        raw = pyfunc.get_raw_model()
    except Exception:  # a flavour without it
        raw = None
    if hasattr(raw, "layers") and hasattr(raw, "predict_on_batch"):
        from ferops.models.zoo import fold_batchnorm

        return Classifier(fold_batchnorm(check_contract(raw, ref)))  # as load_keras serves a .keras file

    def call(x: np.ndarray) -> np.ndarray:
        from mlflow.exceptions import MlflowException

        flat = np.asarray(x, np.float32).reshape(len(x), -1).round().astype(np.uint8)
        try:
            out = pd.DataFrame(pyfunc.predict(pd.DataFrame({"pixels": [" ".join(map(str, r)) for r in flat]})))
        except MlflowException as exc:
            raise ConfigError(f"--model {ref}: its predict does not take a `pixels` column "
                              f"({first_line(exc.message)}) — {MODEL_HINT}.") from None
        if not set(PROB_COLUMNS) <= set(out.columns):
            raise ConfigError(f"--model {ref}: its predict returns no {', '.join(PROB_COLUMNS[:2])}, … columns — "
                              f"{MODEL_HINT}.")
        return out[list(PROB_COLUMNS)].to_numpy()

    return Classifier(call)


def _is_annotated_copy(f: Path, out_dir: Path) -> bool:
    """`f` is an annotated copy `_annotated_path` writes: named <stem>_pred[k].<ext>, directly in `out_dir`. Only
    those: `--out-dir` may be the photos' own folder (copies beside the originals), whose photos are still read."""
    return f.parent.resolve() == out_dir and re.search(r"_pred\d*$", f.stem) is not None


def list_photos(paths: Sequence[str | Path], skip: str | Path | None = None) -> list[Path]:
    """Command-line inputs → photo paths: a folder expands to the image files under it (recursively, sorted by
    path), except hidden ones (a name or folder starting with `.`, as ingest skips them: macOS's `._<name>.jpg`
    companions are no images) and the annotated copies in `skip` (predict's own --out-dir: not photos to classify);
    anything else stays as given, so a missing or unreadable file is reported on its own line."""
    readable = image_suffixes(IMAGE_SUFFIXES)
    out: list[Path] = []
    below = Path(skip).resolve() if skip is not None else None
    for p in map(Path, paths):
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
        shown = [f for f in files if not any(part.startswith(".") for part in f.relative_to(p).parts)]
        if len(shown) < len(files):
            log.info("%s: not reading %d hidden file(s) (a name or folder starting with '.', e.g. macOS's ._<name> "
                     "companions)", p, len(files) - len(shown))
            files = shown
        if below is not None and files:
            kept = [f for f in files if not _is_annotated_copy(f, below)]
            if len(kept) < len(files):
                log.info("%s: not reading %d annotated cop(ies) in %s (<name>_pred.<ext>: written by this command)", p,
                         len(files) - len(kept), skip)
            files = kept
        found = [f for f in files if f.suffix.lower() in readable]
        other = [f for f in files if f.suffix.lower() in OTHER_IMAGE_SUFFIXES and f.suffix.lower() not in readable]
        if other:  # a phone's HEIC photos would otherwise vanish without a word
            log.warning("%s: skipped %d image(s) OpenCV cannot read (%s, e.g. %s) — convert them to JPEG or PNG", p,
                        len(other), ", ".join(sorted({f.suffix.lower() for f in other})), other[0].name)
        out.extend(found or [p])  # an empty folder stays, to be reported
    return out


def _read_photo(path: Path) -> np.ndarray:
    """A photo as a BGR image (EXIF orientation applied); DataError saying why it cannot be read."""
    import cv2

    if not path.exists():
        raise DataError("file not found")
    if path.is_dir():
        raise DataError(f"a folder with no image files ({', '.join(IMAGE_SUFFIXES)}) under it")
    if not path.is_file():
        raise DataError("not a file")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:  # no read permission, an I/O error: this photo fails, the others are still classified
        raise DataError(f"cannot read it ({exc.strerror or exc})") from None
    if data.size == 0:
        raise DataError("empty file")
    try:
        img = _imdecode(data, cv2.IMREAD_COLOR)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    if img is None:
        raise DataError(known_format_problem(data)
                        or "not an image OpenCV can read (use JPEG, PNG, BMP, WebP or TIFF)")
    return img


def is_face_crop(shape: Sequence[int]) -> bool:
    """A small near-square image (long side ≤ FACE_CROP_MAX_SIDE, sides within 5:4): taken to be a face crop."""
    h, w = shape[:2]
    return max(h, w) <= FACE_CROP_MAX_SIDE and 0.8 <= w / max(h, 1) <= 1.25


def check_faces(faces: str) -> str:
    """`faces` if it is one of FACE_MODES, else ConfigError naming them."""
    if faces not in FACE_MODES:
        raise ConfigError(f"faces={faces!r}: use one of {', '.join(FACE_MODES)}.")
    return faces


def face_regions(gray: np.ndarray, faces: str = "auto") -> tuple[list[Box], str]:
    """The boxes to classify in a grey image and where they came from: `detected` (the cascade), or `whole image`
    (the centre square, as training images are read) for `faces="whole"` and, with `auto`, for a face crop."""
    h, w = gray.shape[:2]
    if check_faces(faces) == "whole" or (faces == "auto" and is_face_crop(gray.shape)):
        side = min(h, w)
        return [((w - side) // 2, (h - side) // 2, side, side)], "whole image"
    return detect_faces(gray), "detected"


def _annotate(img: np.ndarray, faces: list[dict[str, Any]], width: int | None = None) -> np.ndarray:
    """A copy with one box and `Label 87%` per face (downscaled first when huge); `width`: of the photo the boxes
    are in, when `img` is already a downscaled copy of it (`predict_photos` keeps only that)."""
    import cv2

    out = shrink(img, ANNOTATED_MAX_SIDE, exact=False)
    if max(out.shape[:2]) < ANNOTATED_MIN_SIDE:  # a 48-px face crop: enlarged, so the label is legible
        f = ANNOTATED_MIN_SIDE / max(out.shape[:2])
        out = cv2.resize(out, (round(out.shape[1] * f), round(out.shape[0] * f)), interpolation=cv2.INTER_CUBIC)
    out = out.copy() if out is img else out
    scale = out.shape[1] / (width or img.shape[1])
    thick = max(1, round(max(out.shape[:2]) / 400))
    font = 0.4 + max(out.shape[:2]) / 1600
    if not faces:
        cv2.putText(out, "no face found", (8, 8 + round(22 * font)), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 255),
                    thick, cv2.LINE_AA)
    for f in faces:
        x, y, w, h = (round(v * scale) for v in f["box"])
        cv2.rectangle(out, (x, y), (x + w, y + h), (0, 255, 0), thick, cv2.LINE_AA)
        text = f"{f['label_name']} {f['probabilities'][f['label_name']]:.0%}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font, thick)
        if y - th - base - 4 >= 0:                                # above the box,
            ty = y - 4
        elif y + h + th + base + 4 <= out.shape[0]:               # else below it,
            ty = y + h + th + 4
        else:                                                     # else inside its top (a whole-image box)
            ty = y + th + 4
        tx = max(0, min(x, out.shape[1] - tw))                     # keep the label inside the picture
        cv2.rectangle(out, (tx, ty - th - base), (tx + tw, ty + base), (0, 255, 0), -1)
        cv2.putText(out, text, (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), thick, cv2.LINE_AA)
    return out


def _annotated_path(out_dir: Path, src: Path, used: set[Path]) -> Path:
    """out_dir/<stem>_pred<suffix>, numbered when two inputs share a name."""
    suffix = src.suffix.lower() if src.suffix.lower() in COLOUR_SUFFIXES else ".png"
    p, k = out_dir / f"{src.stem}_pred{suffix}", 1
    while p in used:
        k += 1
        p = out_dir / f"{src.stem}_pred{k}{suffix}"
    used.add(p)
    return p


def _face_crops(res: dict[str, Any], img: np.ndarray, faces: str) -> list[tuple[np.ndarray, Box]]:
    """The 48x48 crops of one photo's faces and their boxes; fills its `faces_from` and `note`."""
    import cv2

    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    boxes, res["faces_from"] = face_regions(gray, faces)
    whole = res["faces_from"] == "whole image"
    if not boxes:
        res["note"] = "no face found"
    elif whole and int(gray.min()) == int(gray.max()):  # blank, or a fully transparent PNG: still answered
        res["note"] = "blank image (one grey level, no face in it): the answer means nothing"
    elif whole and min(gray.shape) < MIN_FACE_PX:  # still answered, but a few pixels hold no expression
        res["note"] = f"image under {MIN_FACE_PX} px a side, enlarged to {IMG_SIZE}: the answer means little"
    return [(resize_to_model(gray if whole else crop_square(gray, b)), b) for b in boxes]


def _classify_group(items: list[tuple[dict[str, Any], list[tuple[np.ndarray, Box]]]], model: Any, tta: str,
                    temperature: float = 1.0) -> None:
    """Fill each photo's `faces` from its crops (`_face_crops`), all faces of the group in one model call."""
    owners = [(res, b) for res, crops in items for _, b in crops]
    if not owners:
        return
    proba = apply_temperature(predict_proba(model, np.stack([c for _, crops in items for c, _ in crops]), tta=tta),
                              temperature)
    for (res, b), pr in zip(owners, proba):
        k = int(pr.argmax())
        res["faces"].append({"box": [int(v) for v in b], "label": k, "label_name": EMOTIONS[k],
                             "probabilities": {n: round(float(v), 4) for n, v in zip(EMOTIONS, pr)}})


def predict_photos(paths: Sequence[str | Path], model: Any, out_dir: str | Path | None = "predictions",
                   tta: str = "none", faces: str = "auto", progress: bool = False, skip: str | Path | None = None,
                   temperature: float = 1.0) -> list[dict[str, Any]]:
    """Find and classify every face in each photo (folders: every image under them); one result dict per photo.

    `tta`: a view mode (see predict_proba); `temperature` calibrates its probabilities (apply_temperature). `faces`: detect | whole | auto (see face_regions). Annotated copies
    go to `out_dir` (None: none written); those in `skip` (default `out_dir`) are not read. A result holds `file`, `image_size` [w,h], `faces` (box [x,y,w,h],
    label, label_name, probabilities; left to right), `faces_from` (detected | whole image), `annotated` (path
    or None), `note` ("no face found") and `error` (why the file was not read, else None).
    """
    from tqdm.auto import tqdm

    check_faces(faces)
    out = Path(out_dir) if out_dir is not None else None
    used: set[Path] = set()
    photos = list_photos(paths, skip=skip if skip is not None else out_dir)
    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(photos), desc="predict", unit="photo", disable=None if progress else True)
    for g in range(0, len(photos), PHOTO_GROUP):
        # A group keeps each photo's face crops and its copy to annotate (≤ ANNOTATED_MAX_SIDE), never the decoded
        # photo: 64 phone photos of 12 MP held at once took 3 GB.
        items: list[tuple[dict[str, Any], list[tuple[np.ndarray, Box]]]] = []
        views: list[np.ndarray | None] = []
        for p in photos[g:g + PHOTO_GROUP]:
            res: dict[str, Any] = {"file": str(p), "image_size": None, "faces": [], "faces_from": None,
                                   "annotated": None, "note": None, "error": None}
            try:
                img = _read_photo(p)
            except DataError as exc:
                res["error"] = str(exc)
                items.append((res, []))
                views.append(None)
                continue
            res["image_size"] = [int(img.shape[1]), int(img.shape[0])]
            items.append((res, _face_crops(res, img, faces)))
            views.append(shrink(img, ANNOTATED_MAX_SIDE, exact=False) if out is not None else None)
            del img
        _classify_group(items, model, tta, temperature)
        for (res, _), view in zip(items, views):
            if view is not None and out is not None:
                try:
                    res["annotated"] = str(_write_annotated(out, Path(res["file"]), view, res["faces"], used,
                                                            res["image_size"][0]))
                except ConfigError as exc:  # a name too long, a full disk: this photo's copy, not the whole run
                    res["error"] = f"classified, but no annotated copy: {exc}"
            results.append(res)
        bar.update(len(items))
    bar.close()
    return results


def _write_annotated(out: Path, src: Path, img: np.ndarray, faces: list[dict[str, Any]], used: set[Path],
                     width: int | None = None) -> Path:
    """Write the annotated copy of one photo (`img`, maybe downscaled from `width` px) into `out`; ConfigError when
    the folder cannot take it."""
    import cv2

    dest = _annotated_path(out, src, used)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # encoded here, written by Python: cv2.imwrite segfaults on a file name that is not UTF-8 (surrogates)
        written, data = cv2.imencode(dest.suffix, _annotate(img, faces, width))
        if written:
            dest.write_bytes(data.tobytes())
    except (OSError, cv2.error) as exc:
        raise ConfigError(f"--out-dir {out}: cannot write {dest.name} there ({exc}).") from None
    if not written:
        raise ConfigError(f"--out-dir {out}: cannot write {dest.name} there.")
    return dest


def results_table(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """predict_photos results → one row per face (a photo with no face or an error: one row saying so)."""
    rows = []
    for r in results:
        base = {"file": r["file"], "faces_from": r.get("faces_from"), "note": r.get("note"), "error": r.get("error"),
                "model": r.get("model")}
        for i, f in enumerate(r["faces"]):
            x, y, w, h = f["box"]
            rows.append({**base, "face": i, "x": x, "y": y, "w": w, "h": h, "label": f["label"],
                         "label_name": f["label_name"], **{f"prob_{n}": v for n, v in f["probabilities"].items()}})
        if not r["faces"]:
            rows.append(base)
    cols = ["file", "face", "x", "y", "w", "h", "label", "label_name", *PROB_COLUMNS, "faces_from", "note", "error",
            "model"]
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "file"} for r in rows], columns=cols[1:])
    # `file` as Python strings: a name that is not UTF-8 holds surrogates, which pandas' Arrow-backed strings refuse
    table.insert(0, "file", pd.Series([r["file"] for r in rows], dtype=object))
    return table.astype({c: "Int64" for c in ("face", "x", "y", "w", "h", "label")})


def check_output(path: str | Path, flag: str, folder: bool = False) -> None:
    """ConfigError unless `path` (a file, or with `folder` a folder) can be written: checked before the model loads,
    so a bad --csv or --out-dir fails in a second, not after a long folder was classified."""
    import tempfile

    p = Path(path)
    where = p if folder else p.parent
    if not folder and p.is_dir():
        raise ConfigError(f"{flag} {p}: is a folder — give a file name, e.g. {p / 'faces.csv'}.")
    have = next(a for a in (where.absolute(), *where.absolute().parents) if a.exists())  # nothing is created here
    if not have.is_dir():
        raise ConfigError(f"{flag} {p}: {have} is a file, not a folder.")
    try:
        with tempfile.TemporaryFile(dir=have):  # a real write: os.access says yes to root even on read-only mounts
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {p}: cannot write in {have} ({exc.strerror or exc}).") from None


def cli_predict(args: Any) -> None:
    """`ferops predict PHOTO|FOLDER... [--model] [--tta] [--faces] [--out-dir | --no-annotate] [--csv] [--params]`:
    JSON per photo on stdout; exit 2 if any failed."""
    asked = check_tta(getattr(args, "tta", "auto"))  # before the model loads (seconds)
    faces = check_faces(getattr(args, "faces", "auto"))
    # folders walked without the annotated copies of an earlier run; predict_photos walks again, with the same skip,
    # a folder left in the list (one whose only images were such copies: reported, not classified)
    photos = list_photos(args.photos, skip=args.out_dir)
    unreadable: list[str] = []
    for p in photos:  # up to the first photo that reads: when none does, say so before the model loads (seconds)
        try:
            _read_photo(p)
            break
        except DataError as exc:
            unreadable.append(f"{p}: {exc}")
    else:
        raise DataError(_error_summary(unreadable, "file(s)"))
    out_dir = None if getattr(args, "no_annotate", False) else args.out_dir
    csv_path = getattr(args, "csv", None)
    if out_dir is not None:
        check_output(out_dir, "--out-dir", folder=True)
    if csv_path:
        check_output(csv_path, "--csv")
    max_image_pixels()  # a bad FEROPS_MAX_IMAGE_PIXELS: one line before the model loads, not at the first photo
    clf = load_classifier(args.model, getattr(args, "params", None))
    tta = clf.resolve(asked)
    why = " (auto: the mode recorded when the model was registered; none for a .keras file)" if asked == "auto" else ""
    t = clf.temperature(tta)
    calibrated = f"; probabilities calibrated on val (temperature {t:g})" if t != 1.0 else ""
    log.info("test-time augmentation: %s%s%s", tta, why, calibrated)
    results = predict_photos(photos, clf.model, out_dir, tta=tta, faces=faces, progress=True, skip=args.out_dir,
                             temperature=t)
    for r in results:  # which model answered, as `ferops serve` names it in each REST answer
        r["model"] = clf.source
    # A JSON array with one photo per line: valid JSON for tools, readable for people. Printed before the CSV is
    # written, so the results are not lost if that still fails (e.g. a full disk).
    text = "[\n" + ",\n".join("  " + json.dumps(r) for r in results) + "\n]\n"
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `ferops predict … | head`: the reader left, nothing to report
        sys.stdout = open(os.devnull, "w")
    if csv_path:
        try:
            Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
            # surrogateescape: a file name that is not UTF-8 goes out as its own bytes, as ingest's quarantine writes it
            results_table(results).to_csv(csv_path, index=False, errors="surrogateescape")
        except OSError as exc:
            raise ConfigError(f"--csv {csv_path}: cannot write it ({exc.strerror}).") from None
        log.info("wrote %s (one row per face)", csv_path)
    if faces == "auto":
        crops = sum(r["faces_from"] == "whole image" for r in results)
        if crops:
            log.info("%d small face crop(s) (≤ %d px, near-square) classified whole; --faces detect searches them "
                     "for faces instead", crops, FACE_CROP_MAX_SIDE)
    notes: dict[str, list[str]] = {}
    for r in results:
        if r["note"]:
            notes.setdefault(r["note"], []).append(r["file"])
    for note, files in notes.items():  # one line per kind of note, not one per photo of a big folder
        more = f", … and {len(files) - MAX_LISTED_ERRORS} more" if len(files) > MAX_LISTED_ERRORS else ""
        fix = f"; {NOTE_FIXES[note]}" if note in NOTE_FIXES else ""
        log.warning("%d of %d photo(s): %s (%s%s)%s", len(files), len(results), note,
                    ", ".join(files[:MAX_LISTED_ERRORS]), more, fix)
    failed = [r for r in results if r["error"]]
    if failed:
        raise DataError(_error_summary([f"{r['file']}: {r['error']}" for r in failed], "file(s)"))
