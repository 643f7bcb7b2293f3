"""Data under DVC's experiment copies: `dvc exp run --temp` and `dvc queue` run the stages in a copy of the project
that holds only what git and DVC track."""

from __future__ import annotations

import shlex
from pathlib import Path

from ferops.config import store_root
from ferops.data.formats import detect_source
from ferops.errors import DataError


def missing_from_dvc_copy(raw_dir: str | Path, here: Path | None = None) -> str | None:
    """Under `dvc exp run --temp` and `dvc queue` a stage runs in <repo>/.dvc/tmp/exps/…/, a copy of what git and DVC
    track: a dataset git ignores stays behind in the workspace, and the copy's empty `raw_dir` would quietly make the
    experiment a synthetic-demo run. The error saying so, with the fix, or None (not in a copy, an absolute
    `raw_dir`, or no dataset in the workspace either: the demo set both ways)."""
    here = (here or Path.cwd()).resolve()
    workspace = store_root(here)
    if workspace == here or Path(raw_dir).is_absolute():
        return None
    raw = workspace / raw_dir
    try:
        found = detect_source(raw)
    except DataError:  # something there, in a layout the workspace's own run names
        found = ("?", raw)
    behind = sorted(c for c in raw.iterdir() if not c.name.startswith(".") and not c.name.endswith(".dvc")) \
        if found is not None else []
    if not behind:
        return None
    rels = [shlex.quote(str(c.relative_to(workspace))) for c in behind]
    return (f"{raw_dir}/ holds no dataset in DVC's copy of the project (`dvc exp run --temp`, `dvc queue`): the copy "
            f"holds what git and DVC track, and git ignores {', '.join(rels)} in your workspace, so this experiment "
            f"would train on the synthetic demo set. Track the data with DVC once, in the workspace: `dvc add "
            f"{' '.join(rels)} && git add {' '.join(r + '.dvc' for r in rels)} && git commit -m 'Track the dataset "
            "with DVC'`; or run the experiment in the workspace (`dvc exp run` without --temp).")
