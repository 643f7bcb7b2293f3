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


def _flags(cmd: str) -> dict[str, str]:
    words = shlex.split(cmd)
    return {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}


def test_mlproject_entry_points_pass_the_paths_dvc_yaml_declares():
    """MLproject repeats each stage's command (one entry point per stage); a path changed in dvc.yaml alone made
    `mlflow run -e <stage>` read or write other files than `dvc repro`. A value dvc.yaml takes from params.yaml
    (`${train_deep.train_data}`) may be left to the stage, which reads the same key; the foreach key is the entry
    point's parameter."""
    import re

    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    entries = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
    problems = []
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        assert name in entries, f"MLproject has no entry point `{name}` (one per dvc.yaml stage)"
        mine = _flags(stage["cmd"])
        theirs = _flags(entries[name]["command"])
        params = set(entries[name].get("parameters") or {})
        for flag, value in mine.items():
            key = next((f"{{{p}}}" for p in params if value.replace("${key}", f"{{{p}}}") == theirs.get(flag)), None)
            if theirs.get(flag) == value or key is not None:
                continue
            from_params = re.fullmatch(r"\$\{[\w.]+\}", value) is not None
            if flag in theirs and from_params and theirs[flag].strip("{}") in params:
                continue  # e.g. ingest's --raw-dir: an entry-point parameter defaulting to the params key
            if flag not in theirs and from_params:
                continue
            problems.append(f"{name}: dvc.yaml passes {flag} {value}, MLproject {theirs.get(flag, '(nothing)')}")
        problems += [f"{name}: MLproject passes {f}, dvc.yaml does not" for f in theirs if f not in mine]
    assert not problems, "\n".join(problems)
