"""dvc.yaml: each stage's command and its declared deps/outs name the same files, so DVC watches every file a stage
is given and re-runs a stage for no file it is not given (an unused dep re-trained all deep models once)."""

from __future__ import annotations

import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Given to a stage but deliberately undeclared, with why.
UNDECLARED = {"checkpoints/": "per-epoch checkpoints must outlive a killed run; DVC would delete an out before a re-run"}


def _within(path: str, others: list[str]) -> bool:
    """`path` is one of `others`, inside one, or a folder holding one."""
    p = Path(path)
    return any(p == Path(o) or Path(o) in p.parents or p in Path(o).parents for o in others)


def test_commands_and_declared_paths_agree():
    from dvc.repo import Repo

    problems = []
    with Repo(str(ROOT)) as repo:
        for st in repo.index.stages:
            cmd = st.cmd if isinstance(st.cmd, str) else " ".join(st.cmd)
            deps = [str(d.def_path) for d in st.deps if not str(d.def_path).endswith((".py", "params.yaml"))]
            outs = [str(o.def_path) for o in st.outs]
            given = [t for t in shlex.split(cmd) if not t.startswith("-") and not t.endswith(".py")
                     and ("/" in t or t in deps + outs)]
            problems += [f"{st.addressing}: {t} is in the command but neither a dep nor an out"
                         for t in given if not _within(t, deps + outs) and not t.startswith(tuple(UNDECLARED))]
            problems += [f"{st.addressing}: dep {d} is not given in the command" for d in deps if not _within(d, given)]
    assert not problems, "\n".join(problems)
