"""Readers of every FER2013 layout, format detection, and bad-input handling (fail vs quarantine)."""

from __future__ import annotations

import csv
import gzip
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferops.constants import EMOTIONS
from ferops.data import formats
from ferops.data.formats import detect_source, parse_pixel_strings, read_any, write_quarantine
from ferops.data.io import FerData
from ferops.data.synthetic import make_synthetic
from ferops.errors import ConfigError, DataError

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "fer2013.csv.gz"
SAMPLE_IMAGES = REAL.parent / "fer2013_images_sample"


@pytest.fixture(scope="module")
def faces() -> FerData:
    return make_synthetic(12, seed=3)


def pix(img: np.ndarray) -> str:
    return " ".join(map(str, img.reshape(-1).tolist()))


def competition_lines(d: FerData) -> list[str]:
    return [f"{e},{pix(p)},{u}" for p, e, u in zip(d.pixels, d.emotion, d.usage)]


def write(path: Path, header: str, lines: list[str], newline: str = "\n") -> Path:
    path.write_text(newline.join([header, *lines]) + newline)
    return path


def assert_same(got: FerData, want: FerData) -> None:
    np.testing.assert_array_equal(got.pixels, want.pixels)
    np.testing.assert_array_equal(got.emotion, want.emotion)
    np.testing.assert_array_equal(got.usage, want.usage)


# ------------------------------------------------------------------------------------------- readers


def test_competition_csv_roundtrip_and_detection(tmp_path, faces):
    f = write(tmp_path / "fer2013.csv", "emotion,pixels,Usage", competition_lines(faces))
    assert detect_source(tmp_path) == ("fer2013", f)
    data, rejected = read_any(tmp_path)
    assert rejected == []
    assert_same(data, faces)
    assert data.pixels.dtype == np.uint8 and data.emotion.dtype == np.int8
    assert data.source_id[0] == "fer2013:1" and data.source_id[-1] == f"fer2013:{len(faces)}"


def test_icml_csv_with_spaced_header(tmp_path, faces):
    lines = [f"{e},{u},{pix(p)}" for p, e, u in zip(faces.pixels, faces.emotion, faces.usage)]
    f = write(tmp_path / "icml_face_data.csv", "emotion, Usage, pixels", lines)
    assert detect_source(tmp_path) == ("icml", f)
    data, _ = read_any(f)
    assert_same(data, faces)


def test_icml_header_detected_by_column_order_under_any_name(tmp_path, faces):
    lines = [f"{e},{u},{pix(p)}" for p, e, u in zip(faces.pixels, faces.emotion, faces.usage)]
    f = write(tmp_path / "faces.csv", "emotion, Usage, pixels", lines)
    assert detect_source(f) == ("icml", f)
    assert_same(read_any(f)[0], faces)


def test_gzipped_csv_and_crlf(tmp_path, faces):
    text = "\r\n".join(["emotion,pixels,Usage", *competition_lines(faces)]) + "\r\n"
    f = tmp_path / "fer2013.csv.gz"
    f.write_bytes(gzip.compress(text.encode()))
    assert detect_source(tmp_path) == ("fer2013", f)
    assert_same(read_any(f)[0], faces)


def test_quoted_fields_are_unquoted(tmp_path, faces):
    lines = [f'"{e}","{pix(p)}","{u}"' for p, e, u in zip(faces.pixels, faces.emotion, faces.usage)]
    f = write(tmp_path / "fer2013.csv", '"emotion","pixels","Usage"', lines)
    assert_same(read_any(f)[0], faces)


def test_classic_mac_line_endings_and_a_stray_carriage_return(tmp_path, faces):
    """CR-only files (Excel's "CSV (Macintosh)") read like any other; in a quoted file, a row with a \\r inside an
    unquoted field is a bad row with its reason, not a csv.Error traceback."""
    f = write(tmp_path / "fer2013.csv", "emotion,pixels,Usage", competition_lines(faces), newline="\r")
    assert detect_source(tmp_path) == ("fer2013", f)
    assert_same(read_any(f)[0], faces)
    lines = [f'{e},"{pix(p)}",{u}' for p, e, u in zip(faces.pixels, faces.emotion, faces.usage)]
    lines[1] = lines[1][:-2] + "\r" + lines[1][-2:]  # a stray \r inside the unquoted Usage field
    q = write(tmp_path / "quoted.csv", "emotion,pixels,Usage", lines)
    data, rejected = read_any(q, on_bad_rows="quarantine")
    assert len(data) == len(faces) - 1 and [r.row for r in rejected] == [2]
    assert "carriage return" in rejected[0].reason


def test_blank_lines_above_the_header_and_a_fer2013_csv_without_usage(tmp_path, faces):
    """A blank first line is not an "empty file — re-download it"; fer2013.csv without Usage says how to read it."""
    f = tmp_path / "fer2013.csv"
    f.write_text("\n \r\n" + "\n".join(["emotion,pixels,Usage", *competition_lines(faces)]) + "\n")
    assert detect_source(tmp_path) == ("fer2013", f)
    data, _ = read_any(f)
    assert_same(data, faces)
    assert data.source_id[0] == "fer2013:1"  # data rows still numbered below the header
    write(f, "emotion,pixels", [f"{e},{pix(p)}" for p, e in zip(faces.pixels, faces.emotion)])
    with pytest.raises(DataError, match="missing column.*'usage'.*rename it to train.csv"):
        read_any(f)


def test_usage_named_like_the_split_folders(tmp_path, faces):
    """Usage `train`/`val`/`test` (a home-made split) reads as the folders' names do, not as 12 bad rows."""
    names = {"Training": "train", "PublicTest": "Val", "PrivateTest": "test"}
    f = write(tmp_path / "fer2013.csv", "emotion,pixels,Usage",
              [f"{e},{pix(p)},{names[u]}" for p, e, u in zip(faces.pixels, faces.emotion, faces.usage)])
    assert_same(read_any(f)[0], faces)


def test_nested_folder_is_found(tmp_path, faces):
    (tmp_path / "fer2013").mkdir()
    f = write(tmp_path / "fer2013" / "fer2013.csv", "emotion,pixels,Usage", competition_lines(faces))
    assert detect_source(tmp_path) == ("fer2013", f)


def test_kaggle_train_and_unlabeled_test(tmp_path, faces):
    tr, te = faces.subset(np.arange(8)), faces.subset(np.arange(8, 12))
    write(tmp_path / "train.csv", "id,emotion,pixels", [f"{i},{e},{pix(p)}" for i, (p, e) in enumerate(zip(tr.pixels, tr.emotion))])
    write(tmp_path / "test.csv", "id,pixels", [f"{100 + i},{pix(p)}" for i, p in enumerate(te.pixels)])
    fmt, path = detect_source(tmp_path)
    assert fmt == "kaggle"
    data, rejected = read_any(path)
    assert rejected == [] and len(data) == 12
    np.testing.assert_array_equal(data.pixels, faces.pixels)
    np.testing.assert_array_equal(data.emotion[:8], tr.emotion)
    assert (data.emotion[8:] == -1).all()
    assert set(data.usage[8:]) == {"Unlabeled"} and set(data.usage[:8]) == {"Unknown"}
    assert data.source_id[8] == "test:100" and data.source_id[0] == "train:0"


def test_a_quarantined_row_to_predict_is_named_as_missing_from_the_submission(tmp_path, faces, caplog):
    """`on_bad_rows: quarantine` with a bad test.csv row: it went on without a word beyond the count, and the
    submission silently lacked that id (Kaggle refuses such a file)."""
    rows = [f"{100 + i},{pix(p)}" for i, p in enumerate(faces.pixels[:4])]
    rows[2] = rows[2].rsplit(" ", 10)[0]  # cut short: 2,294 pixels
    write(tmp_path / "train.csv", "emotion,pixels", [f"{e},{pix(p)}" for p, e in zip(faces.pixels, faces.emotion)])
    write(tmp_path / "test.csv", "id,pixels", rows)
    with caplog.at_level("WARNING", logger="ferops"):
        data, rejected = read_any(tmp_path, on_bad_rows="quarantine")
    assert [r.row for r in rejected] == [3] and (data.emotion == -1).sum() == 3
    assert "test.csv: 1 row(s) to predict quarantined (row 3," in caplog.text and "lack their ids" in caplog.text


def test_kaggle_labeled_test_csv_stays_the_test_set(tmp_path, faces):
    from ferops.data.split import split_dataset

    big = make_synthetic(200, seed=9)
    tr, te = big.subset(np.arange(200) < 150), big.subset(np.arange(200) >= 150)
    write(tmp_path / "train.csv", "emotion,pixels", [f"{e},{pix(p)}" for p, e in zip(tr.pixels, tr.emotion)])
    write(tmp_path / "test.csv", "emotion,pixels", [f"{e},{pix(p)}" for p, e in zip(te.pixels, te.emotion)])
    data, _ = read_any(tmp_path)
    parts, report = split_dataset(data)  # the defaults: `usage`, val carved from train
    assert sorted(parts["test"].source_id) == sorted(f"test:{i}" for i in range(1, 51))
    assert all(s.startswith("train:") for s in parts["val"].source_id) and report["val_carved_from_train"] > 0


def test_kaggle_test_without_id_and_empty_label_column(tmp_path, faces):
    write(tmp_path / "test.csv", "emotion,pixels", [f",{pix(p)}" for p in faces.pixels[:3]])
    data, rejected = read_any(tmp_path)
    assert rejected == [] and (data.emotion == -1).all() and list(data.source_id) == ["test:1", "test:2", "test:3"]


def test_kaggle_csv_beside_its_gz_copy_is_read_once(tmp_path, faces, caplog):
    """`gzip -k train.csv` leaves both: the rows must not be read twice (and the hash not cover the unread copy)."""
    from ferops.data.formats import source_sha256

    tr = write(tmp_path / "train.csv", "emotion,pixels", [f"{e},{pix(p)}" for p, e in zip(faces.pixels, faces.emotion)])
    write(tmp_path / "test.csv", "id,pixels", [f"7,{pix(faces.pixels[0])}"])
    sha = source_sha256("kaggle", tr)
    (tmp_path / "train.csv.gz").write_bytes(gzip.compress(tr.read_bytes()))
    with caplog.at_level("WARNING", logger="ferops.formats"):
        data, _ = read_any(tmp_path)
    assert len(data) == len(faces) + 1 and len(set(data.source_id)) == len(data)
    assert "holds both train.csv and train.csv.gz: reading train.csv only" in caplog.text
    assert source_sha256("kaggle", tr) == sha
    gz, _ = read_any(tmp_path / "train.csv.gz")  # named explicitly: that copy, still with test.csv
    assert len(gz) == len(faces) + 1


def test_repeated_ids_are_warned(tmp_path, faces, caplog):
    """The submission names rows by id: two test rows with one id would be two answers for one id."""
    write(tmp_path / "test.csv", "id,pixels", [f"{i // 2},{pix(p)}" for i, p in enumerate(faces.pixels[:4])])
    with caplog.at_level("WARNING", logger="ferops.formats"):
        data, _ = read_any(tmp_path)
    assert len(data) == 4  # kept: which copy is right is the user's call
    assert "2 id(s) name more than one row (e.g. '0' ×2, '1' ×2)" in caplog.text


def _write_image_tree(root: Path, faces: FerData) -> dict[str, tuple[int, str]]:
    """train/<Class>/ colour + large images, test/<class>/ with <Usage>_<id> names; returns name → (label, usage)."""
    want = {}
    for i, (img, e) in enumerate(zip(faces.pixels, faces.emotion)):
        split = "train" if i % 2 == 0 else "test"
        cls = EMOTIONS[e] if i % 3 else EMOTIONS[e].upper()  # class folders are case-insensitive
        d = root / split / cls
        d.mkdir(parents=True, exist_ok=True)
        if split == "train":
            big = cv2.resize(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR), (144, 144), interpolation=cv2.INTER_CUBIC)
            name = f"img{i}.jpg"
            cv2.imwrite(str(d / name), big)
            want[name] = (int(e), "Training")
        else:
            name = f"PublicTest_{i}.png" if i % 4 == 1 else f"{i}.png"
            cv2.imwrite(str(d / name), img)
            want[name] = (int(e), "PublicTest" if name.startswith("PublicTest") else "PrivateTest")
    return want


def test_image_folders_any_size_and_colour(tmp_path, faces):
    want = _write_image_tree(tmp_path / "imgs", faces)
    assert detect_source(tmp_path) == ("folders", tmp_path / "imgs")
    data, rejected = read_any(tmp_path / "imgs")
    assert rejected == [] and len(data) == len(faces)
    assert data.pixels.shape == (len(faces), 48, 48) and data.pixels.dtype == np.uint8
    for sid, e, u, img in zip(data.source_id, data.emotion, data.usage, data.pixels):
        name = Path(sid).name
        assert (e, u) == want[name], sid
        if name.endswith(".png"):  # lossless 48x48 grey: exact
            np.testing.assert_array_equal(img, faces.pixels[int(name.split("_")[-1][:-4])])
        else:  # colour, 160x120 JPEG → centre crop + resize: close to the original face
            orig = faces.pixels[int(name[3:-4])].astype(float)
            assert np.abs(img.astype(float) - orig).mean() < 8


def test_image_folder_hash_covers_the_images_read_only(tmp_path, faces):
    """The hash gates champion comparisons (data_sha256): Finder's .DS_Store or a notes file must not change it, an
    edited image must; a folder of images alone keeps the hash it had (champions stay comparable)."""
    from ferops.data.formats import source_sha256
    from ferops.data.io import sha256_file

    root = tmp_path / "imgs"
    _write_image_tree(root, faces)
    sha = source_sha256("folders", root)
    assert sha == sha256_file(root)
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "train" / "Happy" / "._img0.jpg").parent.mkdir(parents=True, exist_ok=True)
    (root / "train" / "Happy" / "._img0.jpg").write_bytes(b"AppleDouble")
    (root / "README.txt").write_text("from kaggle\n")
    assert source_sha256("folders", root) == sha
    img = next((root / "train").rglob("*.jpg"))
    img.write_bytes(img.read_bytes() + b"\0")
    assert source_sha256("folders", root) != sha


def test_training_and_testing_folders_are_splits(tmp_path, faces):
    """`training/` + `testing/` (as `train/` + `test/`): the testing images must not be skipped as outside the splits."""
    for i, (img, e) in enumerate(zip(faces.pixels, faces.emotion)):
        d = tmp_path / ("training" if i % 2 else "testing") / EMOTIONS[e]
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{i}.png"), img)
    data, rejected = read_any(tmp_path)
    assert rejected == [] and len(data) == len(faces)
    assert {u: int((data.usage == u).sum()) for u in set(data.usage)} == {"Training": 6, "PrivateTest": 6}


def test_non_square_image_is_centre_cropped(tmp_path):
    img = np.zeros((60, 120, 3), np.uint8)
    img[:, 30:90] = (0, 0, 255)  # a red centre square between black side bands
    (tmp_path / "train" / "sad").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "train" / "sad" / "wide.png"), img)
    data, _ = read_any(tmp_path)
    assert data.pixels.shape == (1, 48, 48) and data.emotion.tolist() == [4] and data.usage.tolist() == ["Training"]
    assert (data.pixels[0] == cv2.cvtColor(img[:1, 30:31], cv2.COLOR_BGR2GRAY)[0, 0]).all()  # no black band left


def test_image_files_not_read_are_named_never_dropped_unsaid(tmp_path, faces, caplog):
    """A `valid/` split is read (as PublicTest); a broken link, a .heic and an image beside the split folders are not,
    and the warning names each of them. A link to a folder is an error: it was skipped with a warning, and a class
    of test (or train) went missing while validate passed."""
    root = tmp_path / "imgs"
    for split, cls, i in (("train", "happy", 0), ("valid", "sad", 1), ("test", "fear", 2)):
        (root / split / cls).mkdir(parents=True)
        cv2.imwrite(str(root / split / cls / f"{i}.png"), faces.pixels[i])
    (root / "train" / "happy" / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    (root / "train" / "happy" / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    cv2.imwrite(str(root / "loose.png"), faces.pixels[4])
    with caplog.at_level("WARNING", logger="ferops.formats"):
        data, rejected = read_any(root)
    assert rejected == [] and sorted(zip(data.source_id, data.usage)) == [
        ("test/fear/2.png", "PrivateTest"), ("train/happy/0.png", "Training"), ("valid/sad/1.png", "PublicTest")]
    assert "3 file(s) or folder(s) not read" in caplog.text
    for what in ("train/happy/gone.jpg (a broken link)", "train/happy/phone.heic (not an image type",
                 "loose.png (outside the split folders"):
        assert what in caplog.text, what

    (tmp_path / "elsewhere").mkdir()
    cv2.imwrite(str(tmp_path / "elsewhere" / "3.png"), faces.pixels[3])
    (root / "test" / "angry").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(DataError, match=r"1 linked folder\(s\) \(test/angry\): DVC does not look through"):
        read_any(root)


def test_the_split_folder_decides_and_test_names_val_only_without_a_val_folder(tmp_path, faces, caplog):
    """Kaggle's image release keeps FER2013's PublicTest and PrivateTest in test/, named by prefix: those stay val
    and test. But the prefix overrode every folder: a user's val/ of `Training_*` files went back into train, a
    `PublicTest_` file in train/ became val. Now the folder decides, and a disagreeing name is warned about."""
    root = tmp_path / "imgs"
    files = {"train/happy/Training_1.png": 0, "train/happy/PublicTest_2.png": 1, "test/sad/PublicTest_3.png": 2,
             "test/sad/PrivateTest_4.png": 3, "test/sad/5.png": 4}
    for rel, i in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), faces.pixels[i])
    with caplog.at_level("WARNING", logger="ferops.formats"):
        data, _ = read_any(root)
    assert dict(zip(data.source_id, data.usage)) == {
        "train/happy/Training_1.png": "Training", "train/happy/PublicTest_2.png": "Training",
        "test/sad/PublicTest_3.png": "PublicTest", "test/sad/PrivateTest_4.png": "PrivateTest",
        "test/sad/5.png": "PrivateTest"}
    assert "1 image(s) named for another split than their folder's (e.g. train/happy/PublicTest_2.png)" in caplog.text

    (root / "val" / "fear").mkdir(parents=True)  # a val/ folder of the user's own: test/ is all test
    cv2.imwrite(str(root / "val" / "fear" / "Training_6.png"), faces.pixels[5])
    data, _ = read_any(root)
    usage = dict(zip(data.source_id, data.usage))
    assert usage["val/fear/Training_6.png"] == "PublicTest" and usage["test/sad/PublicTest_3.png"] == "PrivateTest"


def test_a_folder_of_gifs_only_is_detected_and_read(tmp_path, faces):
    """Detection takes the reader's suffixes: GIFs (where OpenCV decodes them) make an image folder on their own."""
    from PIL import Image  # Pillow (matplotlib's dependency) writes GIFs: OpenCV only reads them

    root = tmp_path / "gifs"
    for split, cls, i in (("train", "happy", 0), ("test", "sad", 1)):
        (root / split / cls).mkdir(parents=True)
        Image.fromarray(faces.pixels[i]).save(root / split / cls / f"{i}.gif")
    if not formats.opencv_reads_gif():
        with pytest.raises(DataError):
            detect_source(tmp_path)
        return
    assert detect_source(tmp_path) == ("folders", root)
    data, rejected = read_any(root)
    assert rejected == [] and list(zip(data.source_id, data.emotion, data.usage)) == [
        ("test/sad/1.gif", 4, "PrivateTest"), ("train/happy/0.gif", 3, "Training")]
    np.testing.assert_array_equal(data.pixels, faces.pixels[[1, 0]])  # a grey 48x48 GIF is lossless


@pytest.mark.realdata
def test_shared_image_sample():
    if not SAMPLE_IMAGES.exists():
        pytest.skip(f"{SAMPLE_IMAGES} not present")
    data, rejected = read_any(SAMPLE_IMAGES)
    assert len(data) == 280 and rejected == []
    assert np.bincount(data.emotion, minlength=7).tolist() == [40] * 7
    assert set(data.usage) <= {"Training", "PublicTest", "PrivateTest"}


def test_no_dataset_returns_none(tmp_path):
    (tmp_path / ".gitkeep").write_text("")
    assert detect_source(tmp_path) is None
    assert detect_source(tmp_path / "missing") is None


def test_archive_only_asks_to_extract(tmp_path):
    (tmp_path / "fer2013.tar.gz").write_bytes(b"x")
    with pytest.raises(DataError, match="extract"):
        detect_source(tmp_path)


def test_bad_on_bad_rows_value(tmp_path, faces):
    f = write(tmp_path / "fer2013.csv", "emotion,pixels,Usage", competition_lines(faces))
    with pytest.raises(ConfigError, match="on_bad_rows"):
        read_any(f, "skip")


def test_class_names_and_usage_in_any_case_read_like_digits(tmp_path, faces):
    """`Happy` / `happy` as the label and `training` / `PUBLICTEST` as the usage, as exports write them."""
    lines = [f"{EMOTIONS[e] if i % 2 else EMOTIONS[e].lower()},{pix(p)},{u.lower() if i % 2 else u.upper()}"
             for i, (p, e, u) in enumerate(zip(faces.pixels, faces.emotion, faces.usage))]
    data, rejected = read_any(write(tmp_path / "fer2013.csv", "emotion,pixels,Usage", lines))
    assert rejected == [] and data.emotion.tolist() == faces.emotion.tolist()
    assert data.usage.tolist() == faces.usage.tolist()


# ------------------------------------------------------------------------------------------- bad input

BAD_CASES = {
    "wrong_count": (lambda line: line.rsplit(" ", 1)[0] + "," + line.rsplit(",", 1)[1], "expected 2304 pixel values, found 2303"),
    "out_of_range": (lambda line: line.split(",")[0] + ",300 " + line.split(",", 1)[1].split(" ", 1)[1], "outside 0..255"),
    "negative": (lambda line: line.split(",")[0] + ",-5 " + line.split(",", 1)[1].split(" ", 1)[1], "outside 0..255"),
    "float_pixel": (lambda line: line.split(",")[0] + ",1.5 " + line.split(",", 1)[1].split(" ", 1)[1],
                    "pixel value '1.5' at position 1 is not a whole number"),  # was "non-numeric"
    "label_range": (lambda line: "9" + line[1:], "emotion label 9 outside 0..6"),
    "label_text": (lambda line: "smiley" + line[1:], "'smiley' is not an integer 0..6 nor a class name"),
    "bad_usage": (lambda line: line.rsplit(",", 1)[0] + ",Trainig", "Usage 'Trainig'"),
    "extra_field": (lambda line: line + ",x", "expected 3 fields, found 4"),
}


def _non_numeric(line: str) -> str:
    head, rest = line.split(",", 1)
    return head + ",12 abc " + rest.split(" ", 2)[2]


BAD_CASES["non_numeric"] = (_non_numeric, "non-numeric pixel value 'abc' at position 2")


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_row_fails_with_file_row_reason_and_fix(tmp_path, faces, case):
    lines = competition_lines(faces)
    mutate, reason = BAD_CASES[case]
    lines[2] = mutate(lines[2])
    f = write(tmp_path / "fer2013.csv", "emotion,pixels,Usage", lines)
    with pytest.raises(DataError) as exc:
        read_any(f)
    msg = str(exc.value)
    assert "fer2013.csv" in msg and "row 3" in msg and reason in msg
    assert "on_bad_rows: quarantine" in msg


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_row_quarantined_untouched(tmp_path, faces, case):
    lines = competition_lines(faces)
    mutate, reason = BAD_CASES[case]
    lines[2] = mutate(lines[2])
    f = write(tmp_path / "fer2013.csv", "emotion,pixels,Usage", lines)
    data, rejected = read_any(f, "quarantine")
    assert len(data) + len(rejected) == len(lines) == len(faces)
    assert [r.row for r in rejected] == [3] and reason in rejected[0].reason
    assert rejected[0].raw == lines[2] and rejected[0].source == str(f)
    keep = np.arange(len(faces)) != 2
    assert_same(data, faces.subset(keep))
    q = write_quarantine(rejected, tmp_path / "q.csv")
    with open(q, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [{"source": str(f), "row": "3", "reason": rejected[0].reason, "raw": lines[2]}]


def test_truncated_last_line(tmp_path, faces):
    text = "\n".join(["emotion,pixels,Usage", *competition_lines(faces)])
    f = tmp_path / "fer2013.csv"
    f.write_text(text[: len(text) - 3000])  # cut in the middle of the last row's pixels
    with pytest.raises(DataError, match=r"row 12: expected 3 fields, found 2 — the line is cut short"):
        read_any(f)
    data, rejected = read_any(f, "quarantine")
    assert len(data) == 11 and len(rejected) == 1 and rejected[0].raw == text[: len(text) - 3000].split("\n")[-1]


def test_truncated_gzip_always_fails(tmp_path, faces):
    blob = gzip.compress("\n".join(["emotion,pixels,Usage", *competition_lines(faces)]).encode())
    f = tmp_path / "fer2013.csv.gz"
    f.write_bytes(blob[: len(blob) // 2])
    for mode in ("fail", "quarantine"):
        with pytest.raises(DataError, match="ends early"):
            read_any(f, mode)


@pytest.mark.parametrize("inflate", ["isal", "zlib"])
def test_gzip_members_and_corrupt_data_with_either_inflate(tmp_path, faces, monkeypatch, inflate):
    """ISA-L's inflate (the default) and zlib (the fallback without it) read the same bytes and fail the same way."""
    import zlib

    if inflate == "zlib":
        monkeypatch.setattr(formats, "_inflate", lambda: zlib)
    text = "\n".join(["emotion,pixels,Usage", *competition_lines(faces)]) + "\n"
    f = tmp_path / "fer2013.csv.gz"
    f.write_bytes(gzip.compress(text[:5000].encode()) + gzip.compress(text[5000:].encode()))  # e.g. `cat a.gz b.gz`
    data, rejected = read_any(f)
    assert not rejected and np.array_equal(data.pixels, faces.pixels) and np.array_equal(data.emotion, faces.emotion)
    blob = bytearray(gzip.compress(text.encode()))
    blob[len(blob) // 2:len(blob) // 2 + 64] = bytes(64)  # damaged in the middle
    f.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="corrupt gzip data|ends early"):
        read_any(f)


def test_many_bad_rows_listed_first_five_and_total(tmp_path, faces):
    lines = competition_lines(faces)
    for k in range(1, 12, 2):
        lines[k] = "7" + lines[k][1:]
    f = write(tmp_path / "fer2013.csv", "emotion,pixels,Usage", lines)
    with pytest.raises(DataError) as exc:
        read_any(f)
    msg = str(exc.value)
    assert "6 bad row(s) of 12" in msg and "row 2:" in msg and "row 10:" in msg and "row 12:" not in msg
    assert "and 1 more" in msg
    data, rejected = read_any(f, "quarantine")
    assert [r.row for r in rejected] == [2, 4, 6, 8, 10, 12] and len(data) == 6


def test_blank_lines_keep_row_numbers(tmp_path, faces):
    lines = competition_lines(faces)
    lines.insert(1, "")
    lines[4] = "8" + lines[4][1:]  # data line 5 (the blank line counts as a line)
    f = write(tmp_path / "fer2013.csv", "emotion,pixels,Usage", lines)
    data, rejected = read_any(f, "quarantine")
    assert len(data) == 11 and [r.row for r in rejected] == [5]
    for quoted in (False, True):  # a spaces-only line is blank too, in the fast and the quoted reader alike
        body = competition_lines(faces) + ["   \t "]
        (tmp_path / f"q{quoted}").mkdir()
        g = write(tmp_path / f"q{quoted}" / "fer2013.csv", "emotion,pixels,Usage",
                  ['{},"{}",{}'.format(*ln.split(",")) if quoted else ln for ln in body[:-1]] + body[-1:])
        data, rejected = read_any(g)
        assert rejected == [] and len(data) == len(faces)


@pytest.mark.parametrize("mode", ["fail", "quarantine"])
def test_missing_column_always_fails(tmp_path, faces, mode):
    f = write(tmp_path / "fer2013.csv", "emotion,pixel_values,Usage", competition_lines(faces))
    with pytest.raises(DataError, match="missing column 'pixels'"):
        read_any(f, mode)
    (tmp_path / "x").mkdir()
    g = write(tmp_path / "x" / "fer2013.csv", "emotion,pixels", [f"{e},{pix(p)}" for p, e in zip(faces.pixels, faces.emotion)])
    with pytest.raises(DataError, match="missing column.*'usage'"):
        read_any(g, mode)


@pytest.mark.parametrize("sep, name", [(";", "semicolons"), ("\t", "tabs")])
def test_other_separator_is_named(tmp_path, faces, sep, name):
    f = write(tmp_path / "fer2013.csv", sep.join(["emotion", "pixels", "Usage"]),
              [sep.join(line.split(",")) for line in competition_lines(faces)])
    with pytest.raises(DataError, match=f"missing column 'pixels'.*The header is separated by {name}: ferops reads "
                                        "comma-separated files"):
        read_any(tmp_path)
    with pytest.raises(DataError, match=f"separated by {name}"):
        read_any(f)


def test_several_datasets_in_one_folder_are_named(tmp_path, faces, caplog):
    f = write(tmp_path / "fer2013.csv", "emotion,pixels,Usage", competition_lines(faces))
    write(tmp_path / "FER2013_old.csv", "emotion,pixels,Usage", competition_lines(faces))
    with caplog.at_level("WARNING", logger="ferops.formats"):
        assert detect_source(tmp_path) == ("fer2013", f)
    assert "holds several CSV files: reading fer2013.csv, not FER2013_old.csv — set ingest.source" in caplog.text
    caplog.clear()
    (tmp_path / "FER2013_old.csv").unlink()
    write(tmp_path / "train.csv", "emotion,pixels", [])
    write(tmp_path / "test.csv", "id,pixels", [])
    (tmp_path / "fer2013.csv").unlink()
    with caplog.at_level("WARNING", logger="ferops.formats"):
        assert detect_source(tmp_path)[0] == "kaggle"
    assert "several" not in caplog.text  # train.csv + test.csv are one dataset
    (tmp_path / "train" / "happy").mkdir(parents=True)  # and image folders beside them: which one is read is said
    cv2.imwrite(str(tmp_path / "train" / "happy" / "a.png"), faces.pixels[0])
    with caplog.at_level("WARNING", logger="ferops.formats"):
        assert detect_source(tmp_path)[0] == "kaggle"
    assert "holds image folders too: reading train.csv, not them" in caplog.text


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"emotion,pixels,Usage\n"])
@pytest.mark.parametrize("mode", ["fail", "quarantine"])
def test_empty_file_always_fails(tmp_path, content, mode):
    f = tmp_path / "fer2013.csv"
    f.write_bytes(content)
    with pytest.raises(DataError, match="empty|no data rows"):
        read_any(f, mode)


def test_an_image_that_cannot_be_read_is_a_bad_file_not_a_traceback(tmp_path, faces, monkeypatch):
    root = tmp_path / "imgs"
    _write_image_tree(root, faces)
    secret = sorted((root / "train").rglob("*.jpg"))[0]
    fromfile = np.fromfile

    def denied(path, *args, **kwargs):  # what a 000-mode file gives a user who is not root
        if Path(path) == secret:
            raise PermissionError(13, "Permission denied", str(path))
        return fromfile(path, *args, **kwargs)

    monkeypatch.setattr(np, "fromfile", denied)
    with pytest.raises(DataError, match="cannot read it \\(Permission denied\\)"):
        read_any(root)
    data, rejected = read_any(root, "quarantine")
    assert len(data) == len(faces) - 1 and [Path(r.raw) for r in rejected] == [secret]


def test_corrupt_images_fail_or_quarantine(tmp_path, faces):
    root = tmp_path / "imgs"
    _write_image_tree(root, faces)
    bad = root / "train" / "Happy" / "broken.jpg"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    (root / "train" / "Happy" / "empty.png").write_bytes(b"")
    (root / "train" / "grumpy").mkdir()
    cv2.imwrite(str(root / "train" / "grumpy" / "g.png"), faces.pixels[0])
    with pytest.raises(DataError) as exc:
        read_any(root)
    msg = str(exc.value)
    assert "(train/Happy/broken.jpg): unreadable or corrupt image" in msg and "unknown class folder 'grumpy'" in msg
    assert "3 bad file(s)" in msg and "on_bad_rows: quarantine" in msg
    data, rejected = read_any(root, "quarantine")
    assert len(data) == len(faces) and len(rejected) == 3
    assert {Path(r.raw).name for r in rejected} == {"broken.jpg", "empty.png", "g.png"}
    assert bad.read_bytes() == b"\xff\xd8 definitely not a jpeg"  # untouched


@pytest.mark.parametrize("threads", [1, 4])
def test_parse_pixel_strings_many_chunks_with_bad_rows(monkeypatch, faces, threads):
    """Inline (one thread) and threaded chunk parses give the same pixels and the same bad rows, in row order."""
    monkeypatch.setattr(formats, "_CHUNK_ROWS", 5)
    monkeypatch.setattr(formats, "_PARSE_THREADS", threads)
    monkeypatch.setattr(formats.os, "cpu_count", lambda: 8)
    rows = [pix(p) for p in faces.pixels]
    rows[1] = rows[1] + " 7"  # extra value: caught by the fast path's count
    rows[4] = rows[4].replace(" ", ",")  # comma-separated (a REST client's join): the message says so
    rows[6] = "12 x " + rows[6].split(" ", 2)[2]  # non-numeric: the chunk falls back to row-by-row
    rows[11] = "256 " + rows[11].split(" ", 1)[1]
    rows[10] = "4294967297 " + rows[10].split(" ", 1)[1]  # 2**32 + 1, fast path: a 32-bit parse read pixel 1
    rows[8] = "99999999999999999999 " + rows[8].split(" ", 1)[1]  # past 64 bits, in the row-by-row chunk
    rows[2] = "  " + rows[2].replace(" ", "\t", 3)  # valid, but not single-spaced: checked alone, kept
    rows[3] = "00" + rows[3]  # a leading zero is valid too
    out, bad = parse_pixel_strings(rows)
    assert sorted(bad) == [1, 4, 6, 8, 10, 11]
    assert bad[4] == "expected 2304 pixel values, found 1 (separated by commas: pixel values are separated by spaces)"
    assert "found 2305" in bad[1] and "non-numeric" in bad[6] and "256" in bad[11]
    assert "pixel value 4294967297 at position 1 outside 0..255" in bad[10]
    assert "pixel value 99999999999999999999 at position 1" in bad[8]
    good = [i for i in range(len(rows)) if i not in bad]
    np.testing.assert_array_equal(out[good], faces.pixels[good])


def test_in_order_yields_in_order_with_a_bounded_window():
    """Results come back in submission order whatever order the threads finish in, and no more than `ahead`
    items are submitted before their turn (so a big file's parsed chunks cannot pile up in memory)."""
    running, most = [0], [0]
    lock = threading.Lock()

    def slow(i: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.002 * (i % 3 == 0))  # every third item finishes late
        with lock:
            running[0] -= 1
        return i * i

    with ThreadPoolExecutor(4) as pool:
        got = list(formats._in_order(pool, slow, list(range(30)), ahead=3))
    assert got == [i * i for i in range(30)]
    assert most[0] <= 3


@pytest.mark.realdata
def test_real_fer2013_counts():
    if not REAL.exists():
        pytest.skip(f"{REAL} not present (real FER2013: put fer2013.csv.gz there to run this test)")
    assert detect_source(REAL.parent)[0] == "fer2013"
    data, rejected = read_any(REAL)
    assert len(data) == 35887 and rejected == []
    counts = {u: int((data.usage == u).sum()) for u in ("Training", "PublicTest", "PrivateTest")}
    assert counts == {"Training": 28709, "PublicTest": 3589, "PrivateTest": 3589}
    assert np.bincount(data.emotion[data.usage == "Training"]).tolist() == [3995, 436, 4097, 7215, 4830, 3171, 4965]


@pytest.mark.parametrize("quoted", [False, True], ids=["plain", "quoted"])
def test_quarantine_keeps_bytes_that_are_not_utf8(tmp_path, faces, quoted):
    """A Latin-1 byte in a bad row is written back to the quarantine file as it came in, not as U+FFFD."""
    lines = competition_lines(faces)
    if quoted:
        lines = [f'{ln.split(",")[0]},"{ln.split(",")[1]}",{ln.split(",")[2]}' for ln in lines]
    raw_lines = [ln.encode() for ln in lines]
    raw_lines[2] = raw_lines[2].rsplit(b",", 1)[0] + b",Trainingr\xe9"  # 'é' in Latin-1: not UTF-8
    f = tmp_path / "fer2013.csv"
    f.write_bytes(b"emotion,pixels,Usage\n" + b"\n".join(raw_lines) + b"\n")
    data, rejected = read_any(f, "quarantine")
    assert len(data) == len(faces) - 1 and [r.row for r in rejected] == [3]
    assert "Usage 'Trainingr\ufffd'" in rejected[0].reason  # the message shows a readable stand-in
    q = write_quarantine(rejected, tmp_path / "q.csv")
    with open(q, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        raw = next(csv.DictReader(fh))["raw"]
    assert raw.encode("utf-8", "surrogateescape") == raw_lines[2]  # … the file keeps the original bytes
