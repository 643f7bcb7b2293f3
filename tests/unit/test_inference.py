"""ferops.inference: pyfunc parity with Keras, input errors, face detection, `ferops predict` on photos."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from ferops import inference as inf
from ferops.constants import EMOTIONS, IMG_SIZE, N_PIXELS
from ferops.errors import ConfigError, FerError

REPO = Path(__file__).resolve().parents[2]
SKIN = np.array((150, 175, 225), np.float32)  # BGR


def draw_face_photo(w: int = 640, h: int = 480, faces: tuple[tuple[int, int, int], ...] = ((320, 240, 160),),
                    seed: int = 0) -> np.ndarray:
    """A colour 'photo' of drawn frontal faces (cx, cy, face width): shaded skin, eye sockets, brows,
    a bright nose bridge, nostrils and a mouth — the light/dark pattern face cascades look for."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[:] = (200, 210, 220)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for cx, cy, fw in faces:
        fh = fw * 1.3
        r = ((xx - cx) / (fw / 2)) ** 2 + ((yy - cy) / (fh / 2)) ** 2
        img = np.where((r <= 1)[..., None], SKIN * np.clip(1.05 - 0.35 * r, 0, 1)[..., None], img)
    img = img.astype(np.uint8)
    for cx, cy, fw in faces:
        fh = fw * 1.3
        p = lambda v: int(round(v))  # noqa: E731
        cv2.ellipse(img, (cx, p(cy - fh * 0.38)), (fw // 2 + 6, p(fh * 0.22)), 0, 180, 360, (30, 35, 50), -1, cv2.LINE_AA)
        ey = p(cy - fh * 0.08)
        for s in (-1, 1):
            c = (p(cx + s * fw * 0.2), ey)
            cv2.ellipse(img, c, (p(fw * 0.14), p(fw * 0.08)), 0, 0, 360, tuple(int(v) for v in SKIN * 0.55), -1,
                        cv2.LINE_AA)
            cv2.ellipse(img, c, (p(fw * 0.09), p(fw * 0.04)), 0, 0, 360, (235, 235, 235), -1, cv2.LINE_AA)
            cv2.circle(img, c, max(2, p(fw * 0.035)), (30, 25, 20), -1, cv2.LINE_AA)
            cv2.ellipse(img, (c[0], p(ey - fw * 0.13)), (p(fw * 0.13), p(fw * 0.035)), 0, 180, 360, (35, 40, 55),
                        max(2, fw // 25), cv2.LINE_AA)
        cv2.line(img, (cx, ey), (cx, p(cy + fh * 0.1)), (175, 200, 245), max(2, fw // 14), cv2.LINE_AA)
        for s in (-1, 1):
            cv2.ellipse(img, (p(cx + s * fw * 0.05), p(cy + fh * 0.12)), (p(fw * 0.03), p(fw * 0.018)), 0, 0, 360,
                        (70, 80, 120), -1, cv2.LINE_AA)
        cv2.ellipse(img, (cx, p(cy + fh * 0.26)), (p(fw * 0.17), p(fw * 0.035)), 0, 0, 360, (70, 70, 150), -1,
                    cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (0, 0), 2.0)
    return np.clip(img.astype(np.int16) + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def pixel_strings(pixels: np.ndarray) -> list[str]:
    return [" ".join(map(str, p.ravel())) for p in pixels]


def b64(img: np.ndarray, ext: str) -> str:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return base64.b64encode(buf.tobytes()).decode()


def expected_48(encoded: str) -> np.ndarray:
    """Independent reference preprocessing (ingest's image reader): grey, centre square, INTER_AREA resize."""
    gray = cv2.imdecode(np.frombuffer(base64.b64decode(encoded), np.uint8), cv2.IMREAD_GRAYSCALE)
    h, w = gray.shape
    s = min(h, w)
    gray = gray[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return cv2.resize(gray, (IMG_SIZE, IMG_SIZE), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def keras_path(tmp_path_factory) -> Path:
    """A tiny saved Keras model with the project contract: raw 0..255 [N,48,48,1] → softmax [N,7]; a 44-px centre
    crop like the ResNet's, so ten-crop/shift views differ."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((IMG_SIZE, IMG_SIZE, 1)),
        keras.layers.CenterCrop(44, 44),
        keras.layers.Rescaling(1.0 / 255),
        keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(len(EMOTIONS), activation="softmax"),
    ])
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def keras_model(keras_path):
    return inf.load_keras(keras_path)


@pytest.fixture(scope="module")
def registered(keras_path, tmp_path_factory):
    """FerPyfunc logged into a real sqlite store, registered as fer-test@champion; yields (store URI, loaded pyfunc)."""
    import mlflow

    from ferops.tracking import init_tracking

    store = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store)
        mp.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # logged as code: loads without unpickling
        init_tracking()
        with mlflow.start_run():
            uri = inf.log_pyfunc_model(keras_path, tta="tencrop")  # as if evaluate had chosen ten-crop on val
        mv = mlflow.register_model(uri, "fer-test")
        mlflow.MlflowClient().set_registered_model_alias("fer-test", "champion", mv.version)
        yield store, mlflow.pyfunc.load_model(uri)


def test_parse_pixel_strings_roundtrip():
    pixels = np.random.default_rng(0).integers(0, 256, (5, IMG_SIZE, IMG_SIZE), dtype=np.uint8)
    strings = pixel_strings(pixels)
    strings[1] = "  " + strings[1].replace(" ", "  ") + "\n"  # extra whitespace is fine
    np.testing.assert_array_equal(inf.parse_pixel_strings(strings), pixels)


def test_bad_pixel_rows_are_named():
    good = " ".join(["7"] * N_PIXELS)
    rows = [good, " ".join(["7"] * (N_PIXELS - 1)), good.replace("7", "x", 1), good.replace("7", "300", 1), None]
    with pytest.raises(ValueError) as err:
        inf.parse_pixel_strings(rows)
    msg = str(err.value)
    assert "4 bad" in msg
    assert f"row 1: expected {N_PIXELS} pixel values, found {N_PIXELS - 1}" in msg
    assert "row 2: non-numeric pixel value 'x' at position 1" in msg
    assert "row 3: pixel value 300 at position 1 outside 0..255" in msg
    assert "row 4: expected a string" in msg
    assert "row 0" not in msg


def test_pyfunc_pixels_match_keras(registered, keras_model):
    pixels = np.random.default_rng(1).integers(0, 256, (6, IMG_SIZE, IMG_SIZE), dtype=np.uint8)
    out = registered[1].predict(pd.DataFrame({"pixels": pixel_strings(pixels)}))
    want = keras_model.predict_on_batch(pixels[..., None].astype(np.float32))
    assert list(out.columns) == list(inf.OUTPUT_COLUMNS)
    np.testing.assert_allclose(out[list(inf.PROB_COLUMNS)].to_numpy(), want, atol=1e-6)
    np.testing.assert_array_equal(out["label"].to_numpy(), want.argmax(1))
    assert list(out["label_name"]) == [EMOTIONS[k] for k in want.argmax(1)]
    np.testing.assert_allclose(out[list(inf.PROB_COLUMNS)].sum(axis=1), 1.0, atol=1e-5)


def test_pyfunc_base64_images_match_keras(registered, keras_model):
    rng = np.random.default_rng(2)
    grey48 = rng.integers(0, 256, (IMG_SIZE, IMG_SIZE), dtype=np.uint8)
    big_colour = cv2.resize(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), (1200, 900))  # large, colour
    images = [b64(grey48, ".png"), b64(big_colour, ".png"), "data:image/jpeg;base64," + b64(big_colour, ".jpg")]
    out = registered[1].predict(pd.DataFrame({"image": images}))
    ref = np.stack([grey48, expected_48(images[1]), expected_48(images[2].split(",", 1)[1])])
    want = keras_model.predict_on_batch(ref[..., None].astype(np.float32))
    np.testing.assert_allclose(out[list(inf.PROB_COLUMNS)].to_numpy(), want, atol=1e-6)


def test_pyfunc_crop_face_param(registered, keras_model):
    photo = b64(draw_face_photo(), ".png")
    gray = cv2.imdecode(np.frombuffer(base64.b64decode(photo), np.uint8), cv2.IMREAD_GRAYSCALE)
    (box,) = inf.detect_faces(gray)
    out = registered[1].predict(pd.DataFrame({"image": [photo]}), params={"crop_face": True})
    face = cv2.resize(inf.crop_square(gray, box), (IMG_SIZE, IMG_SIZE), interpolation=cv2.INTER_AREA)
    want = keras_model.predict_on_batch(face[None, ..., None].astype(np.float32))
    np.testing.assert_allclose(out[list(inf.PROB_COLUMNS)].to_numpy(), want, atol=1e-6)
    crop = draw_face_photo(96, 96, faces=((48, 48, 56),))   # a face crop: classified whole, not cut again
    assert inf.detect_faces(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY))  # the cascade would cut it again
    out = registered[1].predict(pd.DataFrame({"image": [b64(crop, ".png")]}), params={"crop_face": True})
    want = keras_model.predict_on_batch(expected_48(b64(crop, ".png"))[None, ..., None].astype(np.float32))
    np.testing.assert_allclose(out[list(inf.PROB_COLUMNS)].to_numpy(), want, atol=1e-6)


def test_predict_proba_tta_matches_evaluate(keras_model):
    """Serving's TTA (all views of a chunk in one call) gives evaluate's probabilities (one predict per view)."""
    from ferops import tta
    from ferops.errors import ConfigError

    x = np.random.default_rng(4).integers(0, 256, (9, IMG_SIZE, IMG_SIZE), dtype=np.uint8)
    by_mode = {}
    for mode in tta.TTA_VIEW_MODES:
        by_mode[mode] = inf.predict_proba(keras_model, x, batch_size=25, tta=mode)  # 25 rows: chunks of 1–12 faces
        np.testing.assert_allclose(by_mode[mode], tta.predict_proba(keras_model, x, tta=mode), atol=1e-5)
    assert not np.allclose(by_mode["tencrop"], by_mode["flip"], atol=1e-4)  # the corner crops are really used
    with pytest.raises(ConfigError, match="tta='tencorp': use one of none, flip, tencrop, shift"):
        inf.predict_proba(keras_model, x, tta="tencorp")
    plain = lambda v: keras_model.predict_on_batch(v)  # noqa: E731 — a bare callable: no crop size to shift by
    np.testing.assert_allclose(inf.predict_proba(plain, x, tta="flip"), by_mode["flip"], atol=1e-6)
    with pytest.raises(ConfigError, match="needs the Keras model"):
        inf.predict_proba(plain, x, tta="shift")


def test_pyfunc_tta_param(registered, keras_model):
    pixels = np.random.default_rng(5).integers(0, 256, (3, IMG_SIZE, IMG_SIZE), dtype=np.uint8)
    df = pd.DataFrame({"pixels": pixel_strings(pixels)})
    probs = lambda out: out[list(inf.PROB_COLUMNS)].to_numpy()  # noqa: E731
    np.testing.assert_allclose(probs(registered[1].predict(df)), inf.predict_proba(keras_model, pixels), atol=1e-6)
    for asked, mode in (("auto", "tencrop"), ("shift", "shift"), ("none", "none")):  # auto = the recorded mode
        np.testing.assert_allclose(probs(registered[1].predict(df, params={"tta": asked})),
                                   inf.predict_proba(keras_model, pixels, tta=mode), atol=1e-6)
    with pytest.raises(ValueError, match="tta='best': use one of none, flip, tencrop, shift, auto"):
        registered[1].predict(df, params={"tta": "best"})


def test_a_calibrated_pyfunc_serves_each_modes_probabilities_at_its_temperature(keras_path, keras_model, tmp_path,
                                                                              monkeypatch):
    """The temperatures register records (evaluate's, fitted on val) apply to the mode a request gets, in REST
    answers and in `ferops predict`; a mode without one is served raw, and no label changes."""
    import cv2
    import mlflow

    from ferops.tracking import init_tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    init_tracking()
    temps = {"none": 2.0, "tencrop": 0.5}
    with mlflow.start_run():
        # an unknown mode and an absurd value (a hand-set tag; evaluate fits within 0.05-20) are left out, not served
        uri = inf.log_pyfunc_model(keras_path, tta="tencrop", temperatures={**temps, "bogus": 3.0, "flip": 1e-310})
    served = mlflow.pyfunc.load_model(uri)
    pixels = np.random.default_rng(6).integers(0, 256, (4, IMG_SIZE, IMG_SIZE), dtype=np.uint8)
    df = pd.DataFrame({"pixels": pixel_strings(pixels)})
    probs = lambda out: out[list(inf.PROB_COLUMNS)].to_numpy()  # noqa: E731
    for asked, mode in ((None, "none"), ("auto", "tencrop"), ("flip", "flip")):
        raw = inf.predict_proba(keras_model, pixels, tta=mode)
        out = served.predict(df, params={"tta": asked} if asked else None)
        np.testing.assert_allclose(probs(out), inf.apply_temperature(raw, temps.get(mode, 1.0)), atol=1e-5)
        assert list(out["label"]) == raw.argmax(1).tolist()
    assert not np.allclose(inf.apply_temperature(raw, 2.0), raw)  # the temperatures above did change something

    clf = inf.load_classifier(uri)  # what `ferops predict --model <uri>` uses
    assert clf.temperatures == temps and clf.temperature("shift") == 1.0
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), pixels[0])
    got = inf.predict_photos([photo], clf.model, None, tta="tencrop", temperature=clf.temperature("tencrop"))
    want = inf.apply_temperature(inf.predict_proba(keras_model, pixels[:1], tta="tencrop"), 0.5)[0]
    np.testing.assert_allclose(list(got[0]["faces"][0]["probabilities"].values()), want, atol=1e-4)


def test_pyfunc_answers_name_the_model_that_gave_them(registered, monkeypatch, caplog):
    """Each row names its model: the registered version `ferops serve` resolved (it sets $FEROPS_SERVED_MODEL for
    `mlflow models serve`), else the logged model's own `models:/<model_id>` (plain `mlflow models serve`)."""
    import mlflow

    df = pd.DataFrame({"pixels": [" ".join(["128"] * N_PIXELS)] * 2})
    own = registered[1].metadata.model_id
    assert own and list(registered[1].predict(df)["model"]) == [f"models:/{own}"] * 2  # no variable: its own id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered[0])
    run = registered[1].metadata.run_id
    monkeypatch.setenv(inf.SERVED_MODEL_ENV, json.dumps({"model": "models:/fer-test/1", "run_id": run}))
    served = mlflow.pyfunc.load_model("models:/fer-test/1")
    out = served.predict(df)
    assert list(out["model"]) == ["models:/fer-test/1"] * 2
    assert list(out.columns[:-1]) == list(inf.OUTPUT_COLUMNS[:-1])  # the earlier columns, as before
    # a variable left over for another model (an exported shell variable) is not believed
    artifact = Path(mlflow.artifacts.download_artifacts("models:/fer-test/1")) / "artifacts" / "model.keras"
    monkeypatch.setenv(inf.SERVED_MODEL_ENV, json.dumps({"model": "models:/other/7", "run_id": "another-run"}))
    with caplog.at_level(logging.WARNING, logger="ferops.inference"):
        assert inf.served_model(artifact) == f"models:/{own}"
    assert f"is not about this model (MLflow run {run})" in caplog.text
    assert inf.served_model(Path("/nowhere/artifacts/model.keras")) is None  # no MLmodel above it: no name made up

def test_image_preprocessing_matches_ingest(tmp_path):
    """Serving must see images exactly as training did: compare with ingest's image-folder reader."""
    from ferops.data import formats
    rng = np.random.default_rng(4)
    for i, shape in enumerate([(900, 1200, 3), (30, 20), (IMG_SIZE, IMG_SIZE), (200, 120, 3)]):
        f = tmp_path / f"img{i}.jpg"
        cv2.imwrite(str(f), cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), shape[1::-1])
                    if len(shape) == 3 else rng.integers(0, 256, shape, dtype=np.uint8))
        np.testing.assert_array_equal(formats.resize_to_model(inf.decode_image(f.read_bytes())),
                                      formats._load_image(f, cv2))


def test_pyfunc_bad_rows_give_clear_errors(registered):
    model = registered[1]
    with pytest.raises(Exception) as err:
        model.predict(pd.DataFrame({"image": [b64(np.zeros((60, 60), np.uint8), ".png"), "bm90IGFuIGltYWdl", "%%%"]}))
    assert isinstance(err.value, ValueError)
    msg = str(err.value)
    assert "row 1: `image` not a decodable image" in msg and "row 2: `image` not valid base64" in msg
    with pytest.raises(ValueError, match="row 0: `pixels` expected 2304 pixel values, found 3"):
        model.predict(pd.DataFrame({"pixels": ["1 2 3"]}))
    with pytest.raises(ValueError, match=r"input has columns \['text'\]; it needs a `pixels` column"):
        inf.frame_to_faces(pd.DataFrame({"text": ["a"]}))
    with pytest.raises(ValueError, match=r"no `pixels` or `image` column \(other columns are ignored\); it needs"):
        inf.frame_to_faces(pd.DataFrame(index=[0]))  # what REST hands over after MLflow drops unknown columns
    # a row with both: `pixels` won and an invalid `image` went unsaid; which one was meant is unknown
    pixels = " ".join(["90"] * 2304)
    with pytest.raises(ValueError, match=r"^1 bad input row\(s\): row 1: both `pixels` and `image` are given; send one"):
        model.predict(pd.DataFrame({"pixels": [pixels, pixels, None], "image": [None, "%%%", b64(np.zeros((9, 9), np.uint8), ".png")]}))
    assert len(model.predict(pd.DataFrame({"pixels": [pixels], "image": [""]}))) == 1  # a blank field is no value


def test_detect_faces_on_drawn_face_and_blank():
    photo = draw_face_photo()
    boxes = inf.detect_faces(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY))
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    assert abs(x + w / 2 - 320) < 40 and abs(y + h / 2 - 240) < 50 and 60 < w < 260
    assert inf.detect_faces(np.full((480, 640), 128, np.uint8)) == []
    assert inf.detect_faces(np.zeros((10, 10), np.uint8)) == []


def test_detect_faces_many_and_huge():
    two = draw_face_photo(faces=((460, 240, 150), (170, 250, 150)))
    boxes = inf.detect_faces(cv2.cvtColor(two, cv2.COLOR_BGR2GRAY))
    assert len(boxes) == 2 and boxes[0][0] < boxes[1][0]  # left to right
    huge = cv2.resize(draw_face_photo(), (4000, 3000), interpolation=cv2.INTER_LINEAR)
    (x, y, w, h), = inf.detect_faces(cv2.cvtColor(huge, cv2.COLOR_BGR2GRAY))
    assert abs(x + w / 2 - 2000) < 250 and abs(y + h / 2 - 1500) < 300  # mapped back to full-size pixels


def test_predict_photos_per_file_answers(tmp_path, keras_model):
    face, blank, junk = tmp_path / "face.jpg", tmp_path / "blank.png", tmp_path / "notes.jpg"
    cv2.imwrite(str(face), draw_face_photo())
    cv2.imwrite(str(blank), np.full((200, 300, 3), 90, np.uint8))
    junk.write_text("not an image")
    res = inf.predict_photos([face, blank, junk, tmp_path / "missing.png"], keras_model, tmp_path / "out")
    assert [r["error"] is None for r in res] == [True, True, False, False]
    (f,) = res[0]["faces"]
    assert f["label_name"] == EMOTIONS[f["label"]] and abs(sum(f["probabilities"].values()) - 1) < 1e-3
    ann = cv2.imread(res[0]["annotated"])
    assert ann is not None and ann.shape == (480, 640, 3)
    assert res[1]["faces"] == [] and res[1]["note"] == "no face found"
    assert "not an image" in res[2]["error"] and res[2]["annotated"] is None
    assert res[3]["error"] == "file not found"


def test_a_group_of_photos_holds_their_crops_not_the_decoded_photos(tmp_path, keras_model, monkeypatch):
    """While a group's faces are classified, no decoded photo is held (64 phone photos of 12 MP took 3 GB): only
    the crops and the copy to annotate, downscaled to ANNOTATED_MAX_SIDE, whose boxes still land on the face."""
    import weakref

    decoded, alive = [], []
    read = inf._read_photo
    monkeypatch.setattr(inf, "_read_photo", lambda p: decoded.append(weakref.ref(img := read(p))) or img)
    call = keras_model.predict_on_batch

    class Model:  # the Keras model, noting which decoded photos are still in memory when it is called
        layers = keras_model.layers

        def predict_on_batch(self, x):
            alive.append(sum(r() is not None for r in decoded))
            return call(x)

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"p{i}.png"), draw_face_photo(2400, 1800, ((1200, 900, 600),), seed=i))
    res = inf.predict_photos([tmp_path], Model(), tmp_path / "out")
    assert alive == [0] and all(len(r["faces"]) == 1 for r in res)
    ann = cv2.imread(res[0]["annotated"])
    assert ann.shape == (900, 1200, 3)                               # 2400 px wide, halved
    x, y, w, h = (v // 2 for v in res[0]["faces"][0]["box"])
    assert (np.abs(ann[y + h // 2, x].astype(int) - (0, 255, 0)).sum() < 120)  # the box's left edge, scaled


def test_damaged_and_unsupported_image_files_say_which(tmp_path, keras_model):
    """A JPEG cut short is damaged, not 'not an image'; HEIC (and GIF, where OpenCV lacks it) is named as a format
    OpenCV does not read; a photo too small to hold a face, or blank, is answered with a note."""
    ok, buf = cv2.imencode(".jpg", draw_face_photo(200, 200))
    files = {"cut.jpg": buf.tobytes()[:len(buf) // 2], "phone.heic": b"\x00\x00\x00\x18ftypheic" + bytes(64),
             "anim.gif": b"GIF89a" + bytes(32), "notes.jpg": b"just text"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    cv2.imwrite(str(tmp_path / "dot.png"), np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "clear.png"), np.zeros((48, 48, 4), np.uint8))  # fully transparent
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((48, 48), 128, np.uint8))
    res = inf.predict_photos([tmp_path / n for n in [*files, "dot.png", "clear.png", "grey.png"]], keras_model, None)
    errors = [r["error"] for r in res]
    assert errors[0] == f"a damaged or cut-short JPEG file ({len(buf) // 2} bytes) — re-export or re-download it"
    assert errors[1].startswith("a HEIC image, which OpenCV cannot read — convert it to JPEG or PNG")
    from ferops.data.formats import opencv_reads_gif

    gif_error = "a damaged or cut-short GIF file" if opencv_reads_gif() else "a GIF image, which OpenCV cannot read"
    assert errors[2].startswith(gif_error) and errors[3].startswith("not an image OpenCV can read")
    assert errors[4] is None and len(res[4]["faces"]) == 1 and res[4]["note"].startswith("image under 24 px a side")
    # answered (a 48-px crop is classified whole), with a note: a confident "Happy 73 %" for nothing came bare
    assert [(len(r["faces"]), r["note"].split(" (")[0]) for r in res[5:]] == [(1, "blank image")] * 2
    with pytest.raises(ValueError, match=r"^a damaged or cut-short JPEG file"):  # the REST `image` column alike
        inf.decode_image(base64.b64encode(buf.tobytes()[:300]).decode())


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, keras_model, monkeypatch):
    """A PNG declaring 16,000 × 16,000 pixels (under OpenCV's 2^30) was decoded in full: a 1-MB one of 1 Gpx took
    3 GB and 8 s per REST request. Now refused from the header, REST and `ferops predict` alike; the limit is
    settable."""
    bomb = _png_header(16_000, 16_000)
    with pytest.raises(ValueError, match=r"too large to decode: 256,000,000 pixels declared, over the 134,217,728"):
        inf.decode_image(base64.b64encode(bomb).decode())
    (tmp_path / "bomb.png").write_bytes(bomb)
    cv2.imwrite(str(tmp_path / "face.png"), draw_face_photo(200, 200))
    res = inf.predict_photos([tmp_path / "bomb.png", tmp_path / "face.png"], keras_model, None)
    assert res[0]["error"].startswith("too large to decode") and res[1]["error"] is None  # the rest still answered
    monkeypatch.setenv(inf.MAX_PIXELS_ENV, str(300_000_000))
    assert inf.declared_pixels(bomb) == 256_000_000 < inf.max_image_pixels()


def test_an_annotated_copy_that_cannot_be_written_costs_that_copy_not_the_run(tmp_path, keras_model):
    """A legal 254-byte photo name whose `_pred` copy's name is too long stopped a 2,000-photo run at that photo
    with a one-line error: nothing printed, no CSV, though every copy before it was written."""
    long_name = tmp_path / ("z" * 250 + ".jpg")  # 254 bytes: allowed; "<stem>_pred.jpg" (259) is not
    cv2.imwrite(str(long_name), draw_face_photo(200, 200))
    cv2.imwrite(str(tmp_path / "a.jpg"), draw_face_photo(200, 200, seed=1))
    res = inf.predict_photos([tmp_path / "a.jpg", long_name], keras_model, tmp_path / "out", faces="whole")
    assert res[0]["error"] is None and Path(res[0]["annotated"]).exists()
    assert res[1]["faces"] and res[1]["annotated"] is None  # classified all the same
    assert res[1]["error"].startswith("classified, but no annotated copy: --out-dir") and "too long" in res[1]["error"]


def test_a_tiff_of_32_bit_samples_is_named_as_such_not_as_damaged(tmp_path, keras_model):
    """An intact float or 32-bit-integer TIFF (OpenCV reads it only as is) is not 'damaged or cut-short'."""
    from PIL import Image

    grey = np.random.default_rng(0).integers(0, 256, (48, 48))
    Image.fromarray((grey / 255).astype(np.float32)).save(tmp_path / "float.tif")
    Image.fromarray(grey.astype(np.int32) * 100).save(tmp_path / "int.tif")
    res = inf.predict_photos([tmp_path / "float.tif", tmp_path / "int.tif"], keras_model, None)
    assert [r["error"] for r in res] == [
        f"a TIFF image with 32-bit {kind} samples, which ferops does not read — save it as 8-bit PNG or JPEG"
        for kind in ("floating-point", "integer")]
    with pytest.raises(ValueError, match="^a TIFF image with 32-bit floating-point samples"):  # REST alike
        inf.decode_image((tmp_path / "float.tif").read_bytes())


def _png_header(w: int, h: int) -> bytes:
    """A PNG that declares w x h grey pixels (its image data is a few bytes: only the header is read before OpenCV
    checks the size)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(10))) + chunk(b"IEND", b""))


def test_an_image_over_opencvs_pixel_limit_fails_alone_and_is_a_bad_rest_row(tmp_path, monkeypatch):
    """OpenCV refuses an image of more than 2**30 pixels with cv2.error, not None: it is that photo's error (the
    folder's other photos are classified) and a bad `image` row saying so, not a traceback or MLflow's "unexpected
    error" reply."""
    monkeypatch.setenv(inf.MAX_PIXELS_ENV, str(1 << 40))  # ferops' own limit (checked first) out of the way
    huge = _png_header(40_000, 40_000)
    (tmp_path / "huge.png").write_bytes(huge)
    cv2.imwrite(str(tmp_path / "ok.png"), np.full((48, 48), 90, np.uint8))
    uniform = lambda x: np.full((len(x), len(EMOTIONS)), 1 / len(EMOTIONS), np.float32)  # noqa: E731
    res = inf.predict_photos([tmp_path], uniform, None)
    assert [r["file"] for r in res] == [str(tmp_path / "huge.png"), str(tmp_path / "ok.png")]
    assert res[0]["error"].startswith("too large to decode: more than 1,073,741,824 pixels") and not res[0]["faces"]
    assert res[1]["error"] is None and len(res[1]["faces"]) == 1
    with pytest.raises(inf.InputError, match=r"row 1: `image` too large to decode: more than 1,073,741,824 pixels"):
        inf.frame_to_faces(pd.DataFrame({"image": [b64(np.full((48, 48), 90, np.uint8), ".png"),
                                                   base64.b64encode(huge).decode()]}))


def test_a_thin_strip_image_is_answered_and_annotated_not_a_resize_error(tmp_path):
    """A 4000x1 banner (web-page separators end up in scraped photo folders) downscaled for its annotated copy: its
    1-px side must stay 1 px, not round to 0, which OpenCV's resize refuses with cv2.error (ending the run)."""
    cv2.imwrite(str(tmp_path / "banner.png"), np.full((1, 4000, 3), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "tall.png"), np.full((5000, 1, 3), 200, np.uint8))
    uniform = lambda x: np.full((len(x), len(EMOTIONS)), 1 / len(EMOTIONS), np.float32)  # noqa: E731
    res = inf.predict_photos([tmp_path / "banner.png", tmp_path / "tall.png"], uniform, tmp_path / "out")
    assert [(r["error"], r["note"]) for r in res] == [(None, "no face found")] * 2
    assert [cv2.imread(r["annotated"]).shape[:2] for r in res] == [(1, 1333), (1667, 1)]
    assert inf.shrink(np.zeros((1, 4000), np.uint8), 400).shape == (1, 400)


def test_a_photo_that_cannot_be_read_fails_alone(tmp_path, keras_model, monkeypatch):
    """A file without read permission (or an I/O error) is that photo's error, not a traceback ending the run."""
    for name in ("ok.png", "secret.png"):
        cv2.imwrite(str(tmp_path / name), np.full((48, 48), 90, np.uint8))
    fromfile = np.fromfile

    def denied(path, *args, **kwargs):  # what a 000-mode file gives a user who is not root
        if str(path).endswith("secret.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return fromfile(path, *args, **kwargs)

    monkeypatch.setattr(np, "fromfile", denied)
    res = inf.predict_photos([tmp_path], keras_model, None)
    assert [r["error"] for r in res] == [None, "cannot read it (Permission denied)"] and len(res[0]["faces"]) == 1


def test_folder_walk_reads_gifs_and_skips_the_annotated_copies_it_writes(tmp_path):
    from ferops.data.formats import opencv_reads_gif

    (tmp_path / "predictions").mkdir()
    for name in ("a.jpg", "predictions/a_pred.jpg"):
        cv2.imwrite(str(tmp_path / name), draw_face_photo(100, 100))
    from PIL import Image  # Pillow (matplotlib's dependency) writes the GIF: OpenCV only reads them
    Image.fromarray(np.full((48, 48), 120, np.uint8)).save(tmp_path / "b.gif")
    found = inf.list_photos([tmp_path], skip=tmp_path / "predictions")
    assert [p.name for p in found] == ["a.jpg", "b.gif"] if opencv_reads_gif() else ["a.jpg"]
    assert [p.name for p in inf.list_photos([tmp_path])] == ["a.jpg", *(["b.gif"] if opencv_reads_gif() else []),
                                                             "a_pred.jpg"]


def test_a_pgm_is_read_as_ingest_reads_it_and_its_annotated_copy_is_a_png(tmp_path):
    """Ingest reads .pgm (FER2013 exports use it); a folder walk skipped it without a word."""
    cv2.imwrite(str(tmp_path / "face.pgm"), cv2.cvtColor(draw_face_photo(100, 100), cv2.COLOR_BGR2GRAY))
    assert [p.name for p in inf.list_photos([tmp_path])] == ["face.pgm"]
    uniform = lambda x: np.full((len(x), len(EMOTIONS)), 1 / len(EMOTIONS), np.float32)  # noqa: E731
    res = inf.predict_photos([tmp_path], uniform, tmp_path / "out")
    assert res[0]["error"] is None and Path(res[0]["annotated"]).name == "face_pred.png"  # coloured boxes: no PGM


def test_a_bad_max_image_pixels_setting_is_an_error_not_ignored(monkeypatch):
    png = cv2.imencode(".png", np.zeros((9, 9), np.uint8))[1].tobytes()
    for value in ("1e9", "0", "-5", "lots", "²"):
        monkeypatch.setenv(inf.MAX_PIXELS_ENV, value)
        with pytest.raises(ConfigError, match=f"^{inf.MAX_PIXELS_ENV}={value!r}: give the most pixels"):
            inf.decode_image(png)
    monkeypatch.setenv(inf.MAX_PIXELS_ENV, " 81 ")
    assert inf.max_image_pixels() == 81 and inf.decode_image(png).shape == (9, 9)


def test_a_bad_max_image_pixels_setting_stops_the_served_model_at_load(registered, monkeypatch):
    """Not a 400 for each client's `image` row, naming a server variable the client cannot set."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered[0])
    monkeypatch.setenv(inf.MAX_PIXELS_ENV, "lots")
    with pytest.raises(Exception, match=f"{inf.MAX_PIXELS_ENV}='lots'"):
        mlflow.pyfunc.load_model("models:/fer-test@champion")


def test_folder_walk_skips_hidden_files_and_folders_as_ingest_does(tmp_path, caplog):
    """A folder copied from a Mac holds an AppleDouble `._<name>.jpg` beside each photo (and `__MACOSX/` in a zip):
    not images, each would be a failed file (exit 2); a `.thumbnails/` folder's copies would be classified twice.
    A hidden file named on the command line is still read."""
    cv2.imwrite(str(tmp_path / "IMG_1.jpg"), draw_face_photo(100, 100))
    (tmp_path / ".thumbnails").mkdir()
    cv2.imwrite(str(tmp_path / ".thumbnails" / "IMG_1.jpg"), draw_face_photo(50, 50))
    (tmp_path / "__MACOSX").mkdir()
    for apple_double in (tmp_path / "._IMG_1.jpg", tmp_path / "__MACOSX" / "._IMG_1.jpg"):
        apple_double.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64))
    with caplog.at_level(logging.INFO, logger="ferops.inference"):
        found = inf.list_photos([tmp_path])
    assert found == [tmp_path / "IMG_1.jpg"]
    assert "not reading 3 hidden file(s)" in caplog.text
    assert inf.list_photos([tmp_path / ".thumbnails" / "IMG_1.jpg"]) == [tmp_path / ".thumbnails" / "IMG_1.jpg"]


def test_out_dir_that_is_the_photos_folder_still_reads_the_photos(tmp_path):
    """`--out-dir` the photos' own folder (copies beside the originals): the originals are read, the copies of an
    earlier run are not (they used to be skipped too, and the folder reported as holding no images)."""
    for name in ("a.jpg", "a_pred.jpg", "b_pred2.png", "sub/c_pred.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / name), draw_face_photo(100, 100))
    found = inf.list_photos([tmp_path], skip=tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.jpg", "sub/c_pred.jpg"]


def test_predict_photos_never_reads_back_its_annotated_copies(tmp_path, keras_model):
    """`ferops predict predictions/ a.png`: the folder of an earlier run's copies is reported, not classified (its
    copies used to be skipped by the command's walk, then read by predict_photos' own walk of the folder)."""
    out = tmp_path / "predictions"
    out.mkdir()
    for name in ("a.png", "predictions/x_pred.png"):
        cv2.imwrite(str(tmp_path / name), np.full((48, 48), 90, np.uint8))
    for kw in ({"out_dir": out}, {"out_dir": None, "skip": out}):  # annotating there, or --no-annotate
        res = inf.predict_photos([out, tmp_path / "a.png"], keras_model, **kw)
        assert [r["file"] for r in res] == [str(out), str(tmp_path / "a.png")]
        assert res[0]["error"].startswith("a folder with no image files") and len(res[1]["faces"]) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a_pred.png", "x_pred.png"]  # no x_pred_pred.png


def test_check_output_fails_before_anything_is_written(tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    with pytest.raises(FerError, match=r"--csv .*: is a folder — give a file name"):
        inf.check_output(tmp_path, "--csv")
    with pytest.raises(FerError, match=f"--csv {a_file}/sub/x.csv: {a_file} is a file, not a folder."):
        inf.check_output(a_file / "sub" / "x.csv", "--csv")
    with pytest.raises(FerError, match=f"--out-dir {a_file}: {a_file} is a file"):
        inf.check_output(a_file, "--out-dir", folder=True)
    inf.check_output(tmp_path / "new" / "deeper" / "x.csv", "--csv")  # a folder to be made is fine …
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]   # … and is not made by the check


def test_face_regions_whole_for_face_crops_detect_for_photos():
    crop = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    assert inf.face_regions(crop) == ([(0, 0, 48, 48)], "whole image")             # auto: a FER2013-sized crop
    assert inf.face_regions(crop, "detect") == ([], "detected")
    wide = np.zeros((100, 120), np.uint8)                                            # 6:5, still a crop
    assert inf.face_regions(wide) == ([(10, 0, 100, 100)], "whole image")          # the centre square
    assert inf.face_regions(np.zeros((40, 120), np.uint8))[1] == "detected"          # a strip is not a face crop
    photo = cv2.cvtColor(draw_face_photo(), cv2.COLOR_BGR2GRAY)
    boxes, source = inf.face_regions(photo)
    assert source == "detected" and len(boxes) == 1
    assert inf.face_regions(photo, "whole") == ([(80, 0, 480, 480)], "whole image")
    with pytest.raises(FerError, match="faces='all': use one of auto, detect, whole"):
        inf.face_regions(photo, "all")


def test_predict_photos_on_folders_of_crops(tmp_path, keras_model, caplog):
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (3, IMG_SIZE, IMG_SIZE), dtype=np.uint8)
    for i, (sub, name) in enumerate([("happy", "b.png"), ("happy", "a.jpg"), ("sad/deeper", "c.png")]):
        (tmp_path / "in" / sub).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "in" / sub / name), crops[i])
    (tmp_path / "in" / "notes.txt").write_text("not a photo: skipped in folders")
    (tmp_path / "in" / "IMG_1.HEIC").write_bytes(b"\0\0\0\x18ftypheic")  # skipped too, but named
    (tmp_path / "empty").mkdir()
    with caplog.at_level(logging.WARNING, logger="ferops.inference"):
        photos = inf.list_photos([tmp_path / "in", tmp_path / "empty"])
    assert "skipped 1 image(s) OpenCV cannot read (.heic, e.g. IMG_1.HEIC) — convert them to JPEG or PNG" in caplog.text
    assert "notes.txt" not in caplog.text
    assert [p.relative_to(tmp_path).as_posix() for p in photos] == [
        "in/happy/a.jpg", "in/happy/b.png", "in/sad/deeper/c.png", "empty"]

    res = inf.predict_photos([tmp_path / "in", tmp_path / "empty"], keras_model, None)
    assert [r["faces_from"] for r in res] == ["whole image"] * 3 + [None]
    assert all(r["annotated"] is None for r in res)                                # out_dir None: nothing written
    assert "a folder with no image files" in res[3]["error"]
    png = inf.predict_proba(keras_model, crops[2:3])[0]                              # lossless: same pixels as read
    assert res[2]["faces"][0]["box"] == [0, 0, 48, 48]
    assert res[2]["faces"][0]["probabilities"] == {n: round(float(v), 4) for n, v in zip(EMOTIONS, png)}

    per_photo = [inf.predict_photos([p], keras_model, None)[0] for p in photos[:3]]   # grouping changes nothing
    assert [r["faces"] for r in per_photo] == [r["faces"] for r in res[:3]]

    table = inf.results_table(res)
    assert list(table["face"].astype(object).where(table["face"].notna(), None)) == [0, 0, 0, None]
    assert table.loc[3, "error"] == res[3]["error"] and table.loc[0, "label_name"] == res[0]["faces"][0]["label_name"]
    assert np.allclose(table.loc[:2, list(inf.PROB_COLUMNS)].sum(axis=1), 1, atol=1e-3)

    out = inf.predict_photos([photos[0]], keras_model, tmp_path / "ann")
    ann = cv2.imread(out[0]["annotated"])
    assert ann.shape[:2] == (inf.ANNOTATED_MIN_SIDE, inf.ANNOTATED_MIN_SIDE)          # enlarged, label legible
    assert (np.abs(ann.astype(int) - (0, 255, 0)).sum(axis=2) < 60).any()            # the green label box is drawn


def test_load_classifier_champion_and_missing(registered, keras_model, tmp_path, monkeypatch, caplog):
    import mlflow

    from ferops.tracking import init_tracking

    params = tmp_path / "params.yaml"
    params.write_text("register:\n  model_name: fer-test\n  champion_alias: champion\n")
    x = np.random.default_rng(3).integers(0, 256, (2, IMG_SIZE, IMG_SIZE, 1)).astype(np.float32)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered[0])
    champ = inf.load_classifier(None, params)
    np.testing.assert_allclose(inf.predict_proba(champ.model, x), keras_model.predict_on_batch(x), atol=1e-6)
    assert (champ.tta, champ.resolve("auto"), champ.resolve("flip")) == ("tencrop", "tencrop", "flip")
    assert "synthetic" not in caplog.text
    client = mlflow.MlflowClient(registered[0])
    version = client.get_model_version_by_alias("fer-test", "champion").version
    assert champ.source == f"models:/fer-test/{version}"  # the version the alias resolved to, as served answers say
    client.set_model_version_tag("fer-test", version, "dataset", "synthetic")
    try:
        inf.load_classifier(None, params)
    finally:
        client.delete_model_version_tag("fer-test", version, "dataset")
    assert "was trained on the synthetic demo faces" in caplog.text

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'absent.db'}")
    with pytest.raises(FerError, match="make run"):
        inf.load_classifier(None, params)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    init_tracking()
    with pytest.raises(FerError, match=r"no model 'fer-test' with alias @champion: run `make run`"):
        inf.load_classifier(None, params)


def test_a_keras_model_of_another_shape_is_refused_at_load(tmp_path, keras_path):
    """--model with a Keras model that is not a 48x48-grey → 7-class one: one line naming the shapes at load, not
    Keras' shape traceback (or an IndexError past EMOTIONS) in the middle of the photos."""
    import keras

    for name, shape, classes in (("rgb", (64, 64, 3), 7), ("eight", (IMG_SIZE, IMG_SIZE, 1), 8)):
        keras.Sequential([keras.Input(shape), keras.layers.Flatten(),
                          keras.layers.Dense(classes, activation="softmax")]).save(tmp_path / f"{name}.keras")
        with pytest.raises(FerError, match=rf"--model .*{name}.keras: not a ferops expression model \(input "
                                           rf"\(None, {shape[0]}, {shape[1]}, {shape[2]}\), output \(None, {classes}\)"):
            inf.load_classifier(tmp_path / f"{name}.keras")
    assert inf.load_classifier(keras_path).model.output_shape == (None, len(EMOTIONS))


def test_a_file_that_is_no_model_is_one_line_shortened_at_a_word(tmp_path):
    """A photo passed as --model: Keras' long message was cut at 200 characters, mid-word ("…is not supporte")."""
    fake = tmp_path / "photo.jpg"
    fake.write_text("not a model")
    with pytest.raises(FerError, match=r"--model .*photo.jpg: not a loadable Keras model \(ValueError: File format") as exc:
        inf.load_classifier(fake)
    message = str(exc.value)
    assert "\n" not in message and message.endswith(" …).") and len(message) < 400
    assert inf.first_line("one two three four", width=12) == "one two …" and inf.first_line("a\nb") == "a"


def test_the_keras_model_a_training_run_logs_is_a_model_to_predict_with(mlflow_store, keras_path, keras_model):
    """--model runs:/<training run>/model (the keras-flavour model each training run logs, whose tensor input takes
    no `pixels` strings) predicts like the .keras file, instead of MLflow's schema-enforcement traceback."""
    import mlflow

    from ferops.tracking import init_tracking

    init_tracking()
    with mlflow.start_run() as run:
        mlflow.keras.log_model(inf.load_keras(keras_path, fold=False), name="model")
    clf = inf.load_classifier(f"runs:/{run.info.run_id}/model")
    x = np.random.default_rng(4).integers(0, 256, (3, IMG_SIZE, IMG_SIZE)).astype(np.float32)
    for tta in ("none", "tencrop"):  # ten-crop needs the Keras model's crop layer: it is the Keras model
        np.testing.assert_allclose(inf.predict_proba(clf.model, x, tta=tta), inf.predict_proba(keras_model, x, tta=tta),
                                   atol=1e-6)
    assert clf.tta == "none"


def test_params_of_the_project_from_any_subfolder_and_an_explicit_one_must_exist(tmp_path, monkeypatch):
    """`ferops predict/registry/promote` find the project's params.yaml from a subfolder (as they find its store);
    a --params path that does not exist is an error, not a silent fall-back to the default model name."""
    from argparse import Namespace

    from ferops.errors import ConfigError
    from ferops.registry import _names

    (tmp_path / "proj" / "src" / "deep").mkdir(parents=True)
    (tmp_path / "proj" / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "proj" / "params.yaml").write_text("register:\n  model_name: fer-x\n  champion_alias: best\n")
    monkeypatch.chdir(tmp_path / "proj" / "src" / "deep")
    assert inf._champion_uri(None) == "models:/fer-x@best"
    assert _names(Namespace(name=None, params=None)) == ("fer-x", "best")
    with pytest.raises(ConfigError, match="--params .*nosuch.yaml: file not found — check the path"):
        inf._champion_uri(tmp_path / "nosuch.yaml")
    with pytest.raises(ConfigError, match="--params .*nosuch.yaml: file not found — check the path"):
        _names(Namespace(name=None, params=str(tmp_path / "nosuch.yaml")))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # outside any project: the defaults
    assert inf._champion_uri(None) == "models:/fer2013-resnet@champion"


def test_a_photo_whose_file_name_is_not_utf8_is_annotated_and_tabled(tmp_path):
    """A file name in a legacy encoding (an old zip's, a Samba share's: Python holds its bytes as surrogates) — its
    annotated copy crashed cv2.imwrite with a segfault (no output at all), its --csv row with UnicodeEncodeError.
    Run in a child process, which a crash cannot take pytest down with."""
    photos = tmp_path / "photos"
    photos.mkdir()
    name = os.fsdecode(b"caf\xe9.png")
    try:
        (photos / name).write_bytes(cv2.imencode(".png", np.full((48, 48), 90, np.uint8))[1].tobytes())
    except (OSError, UnicodeError):
        pytest.skip("this file system takes UTF-8 file names only")
    script = ("import argparse, sys\n"
              "import numpy as np\n"
              "from ferops import inference as inf\n"
              "inf.load_classifier = lambda *a: inf.Classifier(lambda x: np.full((len(x), 7), 1 / 7, np.float32))\n"
              "inf.cli_predict(argparse.Namespace(photos=[sys.argv[1]], out_dir=sys.argv[2], csv=sys.argv[3], "
              "tta='none', faces='auto', model=None, params=None, no_annotate=False))\n")
    table = tmp_path / "faces.csv"
    proc = subprocess.run([sys.executable, "-c", script, str(photos), str(tmp_path / "pred"), str(table)],
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    res = json.loads(proc.stdout)
    assert res[0]["file"] == str(photos / name) and res[0]["annotated"] == str(tmp_path / "pred" / os.fsdecode(
        b"caf\xe9_pred.png"))
    assert cv2.imdecode(np.fromfile(res[0]["annotated"], np.uint8), cv2.IMREAD_COLOR).shape == (256, 256, 3)
    assert bytes(photos / name) in table.read_bytes()  # the name's own bytes, as ingest's quarantine writes them


def test_cli_predict_subprocess(tmp_path, keras_path):
    face, junk = tmp_path / "face.png", tmp_path / "junk.png"
    cv2.imwrite(str(face), draw_face_photo())
    junk.write_bytes(b"\x89PNG but not really")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "ferops.cli", "predict", str(face), str(junk), "--model", str(keras_path),
           "--out-dir", str(tmp_path / "pred")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    res = json.loads(proc.stdout)
    assert len(res[0]["faces"]) == 1 and Path(res[0]["annotated"]).is_file() and res[0]["error"] is None
    assert [r["model"] for r in res] == [str(keras_path)] * 2  # which model answered
    assert "not an image" in res[1]["error"]
    assert "error: 1 bad file(s)" in proc.stderr and "junk.png" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "test-time augmentation: none (auto:" in proc.stderr  # nothing is recorded with a bare .keras file

    crops = tmp_path / "crops"
    crops.mkdir()
    cv2.imwrite(str(crops / "one.png"), np.full((48, 48), 120, np.uint8))
    table = tmp_path / "out" / "faces.csv"
    proc = subprocess.run([*cmd[:4], str(crops), str(face), "--model", str(keras_path), "--no-annotate", "--csv",
                           str(table)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert [r["faces_from"] for r in res] == ["whole image", "detected"] and all(r["annotated"] is None for r in res)
    rows = pd.read_csv(table)
    assert list(rows["file"]) == [str(crops / "one.png"), str(face)] and list(rows["face"]) == [0, 0]
    assert list(rows["model"]) == [str(keras_path)] * 2 and rows.columns[-1] == "model"  # new column: last
    assert "1 small face crop(s)" in proc.stderr and "--faces detect" in proc.stderr

    proc = subprocess.run([*cmd[:4], str(crops), str(tmp_path / "gone.png"), "--model", str(keras_path), "--faces",
                           "detect", "--no-annotate"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "1 of 2 photo(s): no face found (" in proc.stderr
    assert "; --faces whole classifies each photo whole" in proc.stderr  # the way out, on the same line
    assert "error: 1 bad file(s): " in proc.stderr and "gone.png: file not found" in proc.stderr
    assert "I0000" not in proc.stderr and "absl::InitializeLog" not in proc.stderr  # TF's start-up chatter filtered

    (tmp_path / "empty").mkdir()
    proc = subprocess.run([*cmd[:4], str(tmp_path / "gone.png"), str(junk), str(tmp_path / "empty"), "--model",
                           str(tmp_path / "none.keras")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "error: 3 bad file(s)" in proc.stderr  # nothing to classify: said before any
    assert "gone.png: file not found" in proc.stderr and "junk.png: not an image" in proc.stderr  # model is looked for
    assert "empty: a folder with no image files" in proc.stderr and "none.keras" not in proc.stderr

    (tmp_path / "logreg").mkdir()
    (tmp_path / "logreg" / "model.joblib").write_bytes(b"")
    proc = subprocess.run([*cmd[:4], str(face), "--model", str(tmp_path / "logreg")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "a folder with no model.keras or MLmodel in it (a scikit-learn baseline's" in proc.stderr

    # an unwritable --csv fails at once, before the model is looked for (not after every photo was classified)
    proc = subprocess.run([*cmd[:4], str(face), "--model", str(tmp_path / "none.keras"), "--csv",
                           str(junk / "faces.csv")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and f"error: --csv {junk}/faces.csv: {junk} is a file, not a folder." in proc.stderr
    assert "none.keras" not in proc.stderr and proc.stdout == ""

    proc = subprocess.run([*cmd[:4], str(face), "--model", str(keras_path), "--tta", "best"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0 and "argument --tta: invalid choice: 'best'" in proc.stderr
    assert "Traceback" not in proc.stderr
