"""Data under DVC's experiment copies: `dvc exp run --temp` and `dvc queue` run the stages in a copy of the project
that holds only what git and DVC track."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from ferops.config import store_root
from ferops.data.formats import detect_source
from ferops.errors import DataError

_KAGGLE_PAIR = {"train.csv", "test.csv", "train.csv.gz", "test.csv.gz"}


def missing_from_dvc_copy(raw_dir: str | Path, here: Path | None = None) -> str | None:
    """Under `dvc exp run --temp` and `dvc queue` a stage runs in <repo>/.dvc/tmp/exps/…/, a copy of what git and DVC
    track: a dataset git ignores stays behind in the workspace, and the copy's empty `raw_dir` would quietly make the
    experiment a synthetic-demo run. The error saying so, with the fix, or None (not in a copy, an absolute
    `raw_dir`, data in the copy, or no dataset in the workspace either: the demo set both ways)."""
    here = (here or Path.cwd()).resolve()
    workspace = store_root(here)
    if workspace == here or Path(raw_dir).is_absolute():
        return None
    try:
        if detect_source(here / raw_dir) is not None:
            return None
    except DataError:  # only .dvc files, say: DVC had no cached data to put beside them
        pass
    raw = Path(os.path.normpath(workspace / raw_dir))
    try:
        found = detect_source(raw)
    except DataError:  # unreadable in the workspace too: its own run says why
        return None
    if found is None:
        return None
    where = f"{raw_dir}/ holds no dataset in DVC's copy of the project (`dvc exp run --temp`, `dvc queue`)"
    if not raw.is_relative_to(workspace):
        return (f"{where}: it is outside the project ({raw}), so the copy's relative path leads elsewhere. Set "
                f"`ingest.raw_dir: {raw}` in params.yaml: an absolute path reads the same in the copy.")
    targets = _dataset_entries(raw, *found)
    rels = [str(t.relative_to(workspace)) for t in targets]
    if any(t.is_symlink() for t in targets):
        folder = os.path.dirname(os.path.realpath(next(t for t in targets if t.is_symlink())))
        return (f"{where}: {', '.join(rels)} is a link git ignores, so the copy lacks it. Set `ingest.raw_dir: "
                f"{folder}` in params.yaml (the folder it links to: an absolute path reads the same in the copy).")
    if all((here / f"{r}.dvc").is_file() for r in rels):
        return (f"{where}: {', '.join(rels)} is tracked by DVC, but DVC's cache lacks it (`make clean` empties the "
                f"cache), so the copy got only the .dvc file. Put it back in the cache, in the workspace: "
                f"`dvc add {' '.join(map(shlex.quote, rels))}`.")
    return (f"{where}: the copy holds what git and DVC track, and git ignores {', '.join(rels)} in your workspace, "
            "so this experiment cannot read it (with `source: auto` it would train on the synthetic demo set). Track "
            f"the data with DVC once, in the workspace: `dvc add {' '.join(map(shlex.quote, rels))} && git add "
            f"{' '.join(shlex.quote(r + '.dvc') for r in rels)} && git commit -m 'Track the dataset with DVC'`; or "
            f"copy it into each experiment (`dvc exp run --temp -C {' -C '.join(map(shlex.quote, rels))}`, the same "
            "-C with --queue); or run the experiment in the workspace (`dvc exp run` without --temp or --queue).")


def _dataset_entries(raw: Path, fmt: str, path: Path) -> list[Path]:
    """The entries of `raw` that make up the dataset `detect_source` found there: what `dvc add` must track (a
    .dvc file beside them, where git keeps it; not the archive or notes lying next to them)."""
    if raw.is_file():  # `ingest.raw_dir` naming the dataset file itself
        return [raw]
    rel = path.relative_to(raw)
    if rel == Path("."):  # image folders directly in raw: train/, test/, val/
        return sorted(c for c in raw.iterdir() if c.is_dir() and not c.name.startswith("."))
    if len(rel.parts) > 1:  # one folder down: the folder
        return [raw / rel.parts[0]]
    if fmt == "kaggle":
        return sorted(c for c in raw.iterdir() if c.name.lower() in _KAGGLE_PAIR)
    return [path]
