"""What `dvc exp run --temp` / `dvc queue` copies of the project lack: the dataset git ignores, and the fix to name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ferops.data.dvc_copy import missing_from_dvc_copy

HEADER = "emotion,pixels,Usage\n0," + " ".join(["0"] * 2304) + ",Training\n"


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace with an empty data/raw/ and DVC's copy of it (what git tracks: data/raw/.gitkeep)."""
    workspace = tmp_path / "project"
    copy = workspace / ".dvc" / "tmp" / "exps" / "standalone" / "tmpab12"
    for root in (workspace, copy):
        (root / "data" / "raw").mkdir(parents=True)
        (root / "data" / "raw" / ".gitkeep").write_text("")
    return workspace, copy


def test_only_a_copy_without_the_workspaces_data_is_refused(project):
    workspace, copy = project
    assert missing_from_dvc_copy("data/raw", here=copy) is None  # empty both ways: the demo set, as in the workspace
    (workspace / "data/raw/fer2013.csv").write_text(HEADER)
    (workspace / "data/raw/fer2013.tar.gz").write_bytes(b"")  # the download it came from: not for `dvc add`
    assert missing_from_dvc_copy("data/raw", here=workspace) is None  # not a copy
    assert missing_from_dvc_copy(str(workspace / "data/raw"), here=copy) is None  # an absolute path reads the same
    message = missing_from_dvc_copy("data/raw", here=copy)
    assert message is not None and "would train on the synthetic demo set" in message
    assert ("`dvc add data/raw/fer2013.csv && git add data/raw/fer2013.csv.dvc && git commit -m 'Track the dataset with "
            "DVC'`") in message and "tar.gz" not in message
    assert "`dvc exp run --temp -C data/raw/fer2013.csv`" in message
    (copy / "data/raw/fer2013.csv").write_text(HEADER)  # DVC checked it out: nothing missing
    assert missing_from_dvc_copy("data/raw", here=copy) is None


@pytest.mark.parametrize("layout, named", [
    ({"train.csv": HEADER, "test.csv": "id,pixels\n", "notes.txt": "mine"}, "data/raw/test.csv data/raw/train.csv"),
    ({"train/happy/1.png": "", "test/sad/2.png": "", "README.txt": "x"}, "data/raw/test data/raw/train"),
    ({"fer/fer2013.csv": HEADER}, "data/raw/fer"),  # one folder down: the folder, so its .dvc file sits in data/raw
    ({"my faces.csv": HEADER}, "'data/raw/my faces.csv'"),
])
def test_the_dvc_add_names_the_dataset_and_only_it(project, layout, named):
    workspace, copy = project
    for rel, text in layout.items():
        (workspace / "data/raw" / rel).parent.mkdir(parents=True, exist_ok=True)
        (workspace / "data/raw" / rel).write_text(text)
    message = missing_from_dvc_copy("data/raw", here=copy)
    assert message is not None and f"`dvc add {named} && git add " in message, message
    assert "notes.txt" not in message and "README" not in message


def test_a_linked_dataset_an_emptied_cache_and_a_folder_outside_the_project_get_their_own_fix(project, tmp_path):
    workspace, copy = project
    elsewhere = tmp_path / "downloads"
    elsewhere.mkdir()
    (elsewhere / "fer2013.csv").write_text(HEADER)
    os.symlink(elsewhere / "fer2013.csv", workspace / "data/raw/fer2013.csv")  # the README's `ln -s`
    message = missing_from_dvc_copy("data/raw", here=copy)  # `dvc add` would copy it into the cache: not that
    assert message is not None and f"Set `ingest.raw_dir: {elsewhere}` in params.yaml" in message
    assert "dvc add" not in message
    (workspace / "data/raw/fer2013.csv").unlink()
    (workspace / "data/raw/fer2013.csv").write_text(HEADER)
    (copy / "data/raw/fer2013.csv.dvc").write_text("outs: []\n")  # tracked, but `make clean` emptied the cache
    message = missing_from_dvc_copy("data/raw", here=copy)
    assert message is not None and "DVC's cache lacks it" in message and "`dvc add data/raw/fer2013.csv`." in message
    assert missing_from_dvc_copy("../downloads", here=workspace / "x") is None  # not a copy
    outside = missing_from_dvc_copy("../downloads", here=copy)  # in the copy, ../downloads is another folder
    assert outside is not None and f"Set `ingest.raw_dir: {elsewhere}` in params.yaml" in outside
