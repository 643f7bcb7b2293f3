"""stages/ingest.py as DVC runs it: a subprocess with dvc.yaml's arguments and a params file."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from ferops.data.io import load_npz
from ferops.data.synthetic import make_synthetic

ROOT = Path(__file__).resolve().parents[2]


def run_stage(tmp: Path, raw: Path, **ingest) -> subprocess.CompletedProcess:
    params = {"ingest": {"raw_dir": str(raw), "source": "auto", "on_bad_rows": "fail",
                         "synthetic": {"n": 70, "seed": 5}, **ingest}}
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(ROOT / "stages" / "ingest.py"), "--raw-dir", str(raw), "--out", str(tmp / "fer.npz"),
           "--report", str(tmp / "ingest.json"), "--quarantine", str(tmp / "quarantine.csv"),
           "--figures", str(tmp / "figures"), "--params", str(tmp / "params.yaml")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp)


def write_csv(path: Path, n: int, bad_row: int | None = None) -> list[str]:
    d = make_synthetic(n, seed=2)
    lines = [f"{e},{' '.join(map(str, p.reshape(-1)))},{u}" for p, e, u in zip(d.pixels, d.emotion, d.usage)]
    if bad_row is not None:
        lines[bad_row - 1] = lines[bad_row - 1].rsplit(" ", 5)[0] + "," + lines[bad_row - 1].rsplit(",", 1)[1]
    path.write_text("\n".join(["emotion,pixels,Usage", *lines]) + "\n")
    return lines


def test_corrupt_file_fails_cleanly(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_csv(raw / "fer2013.csv", 20, bad_row=4)
    r = run_stage(tmp_path, raw)
    assert r.returncode != 0
    assert "error:" in r.stderr and "Traceback" not in r.stderr
    assert "fer2013.csv" in r.stderr and "row 4" in r.stderr and "found 2299" in r.stderr
    assert "on_bad_rows: quarantine" in r.stderr
    assert not (tmp_path / "fer.npz").exists()
    rows = list(csv.DictReader((tmp_path / "quarantine.csv").open()))  # fail mode too: the file the error names
    assert [q["row"] for q in rows] == ["4"] and "quarantine.csv" in r.stderr


def test_fail_mode_lists_five_and_quarantines_all(tmp_path):
    """The message shows the first five bad rows; the quarantine file holds every one, raw line untouched."""
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = write_csv(raw / "fer2013.csv", 20)
    for i in (2, 5, 7, 9, 11, 13, 17):
        emotion, pixels, usage = lines[i - 1].split(",")
        lines[i - 1] = f"{emotion},x{pixels[pixels.index(' '):]},{usage}"  # the first pixel non-numeric
    (raw / "fer2013.csv").write_text("\n".join(["emotion,pixels,Usage", *lines]) + "\n")
    r = run_stage(tmp_path, raw)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "7 bad row(s) of 20" in r.stderr and "and 2 more" in r.stderr and "All 7 are listed, untouched, in" in r.stderr
    rows = list(csv.DictReader((tmp_path / "quarantine.csv").open()))
    assert [int(q["row"]) for q in rows] == [2, 5, 7, 9, 11, 13, 17]
    assert [q["raw"] for q in rows] == [lines[i - 1] for i in (2, 5, 7, 9, 11, 13, 17)]
    assert all("non-numeric" in q["reason"] for q in rows) and not (tmp_path / "fer.npz").exists()


def test_quarantine_mode_writes_everything(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = write_csv(raw / "fer2013.csv", 20, bad_row=4)
    r = run_stage(tmp_path, raw, on_bad_rows="quarantine")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "ingest.json").read_text())
    assert rep["synthetic"] is False and rep["format"] == "fer2013" and len(rep["sha256"]) == 64
    assert rep["rows"] == 19 and rep["quarantined"] == 1 and rep["rows_in"] == 20
    assert sum(rep["per_usage"].values()) == 19 and sum(rep["per_class"].values()) == 19
    by_class = {c: sum(u[c] for u in rep["per_usage_class"].values()) for c in rep["per_class"]}
    assert by_class == rep["per_class"]
    with open(tmp_path / "quarantine.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["row"] == "4" and rows[0]["raw"] == lines[3]
    assert len(load_npz(tmp_path / "fer.npz")) == 19
    assert (tmp_path / "figures" / "samples.png").stat().st_size > 1000
    assert (tmp_path / "figures" / "class_hist.png").stat().st_size > 1000


def test_empty_raw_dir_generates_synthetic_with_warning(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / ".gitkeep").write_text("")
    r = run_stage(tmp_path, raw)
    assert r.returncode == 0, r.stderr
    assert "WARNING" in r.stderr and "SYNTHETIC DEMO DATA" in r.stderr
    rep = json.loads((tmp_path / "ingest.json").read_text())
    assert rep["synthetic"] is True and rep["format"] == "synthetic" and rep["rows"] == 70 and rep["quarantined"] == 0
    data = load_npz(tmp_path / "fer.npz")
    np.testing.assert_array_equal(data.pixels, make_synthetic(70, seed=5).pixels)
    assert (tmp_path / "quarantine.csv").read_text() == "source,row,reason,raw\n"  # header only
    assert (tmp_path / "figures" / "samples.png").exists() and (tmp_path / "figures" / "class_hist.png").exists()


def test_a_raw_dir_that_does_not_exist_is_an_error_not_the_demo_set(tmp_path):
    """A mistyped raw_dir (`mlflow run . -e ingest -P raw_dir=…`, or the stage by hand) went on with the synthetic
    demo set, exit 0; under `dvc repro` DVC stops first on the missing dep."""
    r = run_stage(tmp_path, tmp_path / "typo")
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "fer.npz").exists()
    assert f"error: ingest.raw_dir: {tmp_path / 'typo'} not found" in r.stderr and "SYNTHETIC" not in r.stderr


def test_missing_source_path_is_a_config_error(tmp_path):
    r = run_stage(tmp_path, tmp_path / "raw", source=str(tmp_path / "nope.csv"))
    assert r.returncode != 0 and "error: ingest.source" in r.stderr and "Traceback" not in r.stderr


def test_source_outside_the_raw_dir_is_refused_and_a_link_into_it_works(tmp_path):
    """DVC watches only the raw folder: a source elsewhere would go stale unnoticed, so ingest says how to link it."""
    raw, outside = tmp_path / "raw", tmp_path / "elsewhere" / "fer2013.csv"
    raw.mkdir()
    outside.parent.mkdir()
    write_csv(outside, 20)
    r = run_stage(tmp_path, raw, source=str(outside))
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "fer.npz").exists()
    assert f"ingest.source: {outside} is outside {raw}/, the folder DVC watches" in r.stderr
    assert f"`ln -s {outside} {raw}/`" in r.stderr
    (raw / "fer2013.csv").symlink_to(outside)  # the fix the message gives; naming the link as source works too,
    write_csv(tmp_path / "fer2013.csv", 5)  # a stray copy in the working folder: a name means the one inside raw_dir
    for source in ("auto", str(raw / "fer2013.csv"), "fer2013.csv"):  # by its path or by its name inside raw_dir
        r = run_stage(tmp_path, raw, source=source)
        assert r.returncode == 0, r.stderr
        assert json.loads((tmp_path / "ingest.json").read_text())["rows"] == 20


def test_bad_on_bad_rows_fails_even_for_the_demo_set(tmp_path):
    r = run_stage(tmp_path, tmp_path / "raw", on_bad_rows="skip")  # no data: the demo set, which reads no rows
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "error: params.yaml ingest.on_bad_rows: 'skip' is not one of fail, quarantine." in r.stderr


def test_source_synthetic_ignores_real_data_in_raw_dir(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_csv(raw / "fer2013.csv", 20)
    r = run_stage(tmp_path, raw, source="synthetic")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "ingest.json").read_text())
    assert rep["synthetic"] is True and rep["rows"] == 70


def test_every_row_rejected_still_writes_the_quarantine(tmp_path):
    """The error points at quarantine.csv, so the file must hold the rows (it used to be written only on success)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    bad = ["9,1 2 3,Training", "3,1 2,PublicTest"]
    (raw / "fer2013.csv").write_text("\n".join(["emotion,pixels,Usage", *bad]) + "\n")
    r = run_stage(tmp_path, raw, on_bad_rows="quarantine")
    assert r.returncode == 2 and "every row was rejected" in r.stderr and "Traceback" not in r.stderr
    rows = list(csv.DictReader((tmp_path / "quarantine.csv").open()))
    assert [q["raw"] for q in rows] == bad and [q["row"] for q in rows] == ["1", "2"]
    assert "found 3" in rows[0]["reason"] and not (tmp_path / "fer.npz").exists()


def test_raw_data_in_a_layout_not_recognised_is_an_error_not_the_demo_set(tmp_path):
    raw = tmp_path / "raw"
    (raw / "download" / "archive" / "train" / "happy").mkdir(parents=True)  # unzipped two levels deep
    (raw / ".gitkeep").write_text("")
    r = run_stage(tmp_path, raw)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "fer.npz").exists()
    assert "holds download but no dataset ferops reads" in r.stderr and "one folder down" in r.stderr
    (raw / "download").rename(tmp_path / "away")
    assert run_stage(tmp_path, raw).returncode == 0  # only dot-files left: the demo set, as documented
    assert json.loads((tmp_path / "ingest.json").read_text())["synthetic"] is True


def test_a_linked_image_folder_is_refused_with_the_raw_dir_fix(tmp_path):
    """DVC does not hash through a link to a folder: its images could change without re-running ingest."""
    import cv2

    images = tmp_path / "elsewhere" / "imgs"
    (images / "train" / "happy").mkdir(parents=True)
    cv2.imwrite(str(images / "train" / "happy" / "a.png"), make_synthetic(1, seed=1).pixels[0])
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "imgs").symlink_to(images, target_is_directory=True)
    r = run_stage(tmp_path, raw)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "links to a folder" in r.stderr and f"ingest.raw_dir: {images}" in r.stderr


def test_mlproject_ingest_reads_the_params_raw_dir_unless_given_one(tmp_path, monkeypatch):
    """`mlflow run . -e ingest` passed MLproject's own default, --raw-dir data/raw: with `ingest.raw_dir` set to the
    folder holding the dataset (as the README and ingest's own fix advise), it generated the synthetic demo set."""
    from mlflow.projects import _project_spec

    monkeypatch.chdir(tmp_path)  # the project folder `mlflow run` runs in: data/raw empty, as cloned; the data elsewhere
    (tmp_path / "data" / "raw").mkdir(parents=True)
    raw = tmp_path / "faces"
    raw.mkdir()
    write_csv(raw / "fer2013.csv", 30)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"ingest": {"raw_dir": str(raw), "source": "auto"}}))
    for name in ("MLproject", "python_env.yaml"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    entry = _project_spec.load_project(str(tmp_path)).get_entry_point("ingest")
    cmd = entry.compute_command({}, str(tmp_path)).replace("python stages/", f"{sys.executable} {ROOT}/stages/", 1)
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "reports" / "ingest.json").read_text())
    assert report["synthetic"] is False and report["source"] == str(raw / "fer2013.csv")
    # -P raw_dir=… still names the folder
    cmd = entry.compute_command({"raw_dir": "elsewhere"}, str(tmp_path))
    assert "--raw-dir elsewhere " in cmd


def test_a_dvc_copy_without_the_workspaces_dataset_is_refused_not_the_demo_set(tmp_path):
    """`dvc exp run --temp` and `dvc queue` run the stages in <repo>/.dvc/tmp/exps/…/, a copy holding what git and DVC
    track. A dataset git ignores stays behind, and the copy's empty data/raw quietly made the experiment a
    synthetic-demo run of the whole pipeline. Now: one line naming the files and the `dvc add` that brings them."""
    workspace = tmp_path / "project"
    copy = workspace / ".dvc" / "tmp" / "exps" / "standalone" / "tmpab12"
    (copy / "data" / "raw").mkdir(parents=True)
    (copy / "data" / "raw" / ".gitkeep").write_text("")
    (workspace / "data" / "raw").mkdir(parents=True)
    r = run_stage(copy, Path("data/raw"))  # the workspace's raw folder empty too: the demo set both ways
    assert r.returncode == 0 and json.loads((copy / "ingest.json").read_text())["synthetic"] is True, r.stderr
    write_csv(workspace / "data" / "raw" / "fer2013.csv", 20)
    (workspace / "data" / "raw" / "fer2013.csv.dvc").write_text("outs: []\n")  # its DVC file: not named again
    (copy / "ingest.json").unlink()
    r = run_stage(copy, Path("data/raw"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (copy / "ingest.json").exists(), r.stderr
    assert "data/raw/ holds no dataset in DVC's copy of the project (`dvc exp run --temp`, `dvc queue`)" in r.stderr
    assert ("`dvc add data/raw/fer2013.csv && git add data/raw/fer2013.csv.dvc && git commit -m 'Track the dataset "
            "with DVC'`") in r.stderr
    named = run_stage(copy, Path("data/raw"), source="fer2013.csv")  # said "not found … set it to auto"
    assert named.returncode == 2 and "holds no dataset in DVC's copy" in named.stderr, named.stderr
    assert run_stage(workspace, Path("data/raw")).returncode == 0  # the workspace itself reads its data
    assert json.loads((workspace / "ingest.json").read_text())["synthetic"] is False
