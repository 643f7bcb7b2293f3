"""dvc.yaml: every stage lists the `src/ferops` modules its script reaches, so a code change re-runs the stages it
can affect and no cached output outlives the code that made it (DESIGN.md, principle 4)."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

# Names, params access, error types and process start-up: no stage lists them, so a change to them that alters
# results needs `dvc repro -f`.
INFRASTRUCTURE = {"src/ferops/config.py", "src/ferops/constants.py", "src/ferops/errors.py", "src/ferops/runner.py"}
# Reached through an import the stage never exercises, with why.
NOT_RUN: dict[str, dict[str, str]] = {
    "evaluate": {"src/ferops/data/formats.py": "inference parses REST `pixels` and resizes photos with it; evaluate "
                                               "passes arrays"},
    "register": {m: "reached through evaluation's scoring and training's helpers; register only reads their outputs "
                    "(metrics.json, the model files), which are its deps"
                 for m in ("src/ferops/data/formats.py", "src/ferops/diagnostics.py", "src/ferops/hparams.py",
                           "src/ferops/metrics.py", "src/ferops/models/zoo.py", "src/ferops/plots.py",
                           "src/ferops/training.py")},
}


def _module_file(name: str) -> Path | None:
    for p in (ROOT / "src" / (name.replace(".", "/") + ".py"), ROOT / "src" / name.replace(".", "/") / "__init__.py"):
        if p.exists():
            return p
    return None


def _ferops_imports(path: Path) -> set[Path]:
    """Files of the ferops modules `path` imports, at module level or inside functions."""
    out: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ferops"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]  # `from ferops import tuning`
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("ferops")]
        else:
            continue
        out |= {f for f in map(_module_file, names) if f is not None}
    return out


def _reached(script: Path) -> set[str]:
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for f in _ferops_imports(todo.pop()) - seen:
            seen.add(f)
            todo.append(f)
    return {str(f.relative_to(ROOT)) for f in seen if f.name != "__init__.py"}


def test_every_stage_lists_the_modules_its_script_reaches():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    reached_by: dict[str, set[str]] = {}
    for name, stage in stages.items():
        stage = stage.get("do", stage)  # foreach stages
        script = next(w for w in stage["cmd"].split() if w.startswith("stages/"))
        deps = set(stage["deps"])
        assert script in deps, f"{name}: its own script {script} is not a dep"
        reached = reached_by[name] = _reached(ROOT / script)
        missing = reached - deps - INFRASTRUCTURE - set(NOT_RUN.get(name, {}))
        assert not missing, f"dvc.yaml stage {name}: add {sorted(missing)} to its deps (its script imports them)"
        unused = {d for d in deps if d.startswith("src/")} - reached
        assert not unused, f"dvc.yaml stage {name}: {sorted(unused)} listed but never imported"
    assert len(reached_by) >= 9  # ingest … register
    for name, exempt in NOT_RUN.items():  # an exemption that no longer applies is dropped, not kept stale
        assert set(exempt) <= reached_by[name], name


def test_metrics_files_are_not_git_ignored():
    """`cache: false` metrics live in git: an ignored one never reaches a commit or an experiment, so `dvc exp show`
    and `dvc metrics diff` show `!` for it (the whole reports/ folder used to be ignored)."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    metrics = [next(iter(m)) if isinstance(m, dict) else m
               for st in stages.values() for m in (st.get("do") or st).get("metrics") or []]
    assert metrics == ["reports/metrics.json"]  # one file of model figures; data reports are plain outs
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *metrics], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout == "", f"git-ignored metrics: {ignored.stdout}"
