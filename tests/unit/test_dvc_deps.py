"""dvc.yaml: every stage lists the `src/ferops` modules its script reaches, so a code change re-runs the stages it
can affect and no cached output outlives the code that made it (DESIGN.md, principle 4)."""

from __future__ import annotations

from pathlib import Path

import yaml

from ferops.codebase import SERVED_ENTRY, reached

ROOT = Path(__file__).resolve().parents[2]

# Names, params access, error types and process start-up: no stage lists them, so a change to them that alters
# results needs `dvc repro -f`.
INFRASTRUCTURE = {"src/ferops/config.py", "src/ferops/constants.py", "src/ferops/errors.py", "src/ferops/runner.py"}
# Reached through an import the stage never exercises, or one no output depends on, with why.
_FINGERPRINT = ("the training code's fingerprint: it decides only whether a killed run's checkpoint resumes, never "
                "what a model learns (as a dep, each edit of it re-trained every model)")
NOT_RUN: dict[str, dict[str, str]] = {
    "train_deep": {"src/ferops/codebase.py": _FINGERPRINT},
    "tune": {"src/ferops/codebase.py": "reached through training.py's checkpoint fingerprint, which trials never use"},
    "evaluate": {"src/ferops/data/formats.py": "inference parses REST `pixels` and resizes photos with it; evaluate "
                                               "passes arrays"},
    "register": {"src/ferops/diagnostics.py": "reached through evaluation's figures; register only reads its "
                                               "outputs (metrics.json), a dep"},
}
# Deps no import reaches, with why: register logs the served model's code by path (MLflow "models from code").
SHIPPED = {"register": {str(SERVED_ENTRY.relative_to(ROOT))}}


def _reached(script: Path) -> set[str]:
    return {str(f.relative_to(ROOT)) for f in reached(script, ROOT / "src") if f.name != "__init__.py"}


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
        unused = {d for d in deps if d.startswith("src/")} - reached - SHIPPED.get(name, set())
        assert not unused, f"dvc.yaml stage {name}: {sorted(unused)} listed but never imported"
    assert len(reached_by) >= 9  # ingest … register
    for name, exempt in NOT_RUN.items():  # an exemption that no longer applies is dropped, not kept stale
        assert set(exempt) <= reached_by[name], name


def test_register_lists_the_code_a_registered_model_ships():
    """A registered model runs pyfunc_code.py and what it reaches when served; register fingerprints that code to
    decide whether a version can be reused, so a change to any of it must re-run register (it did not: formats.py,
    pyfunc_code.py and others were no deps, and a fix to REST parsing never reached the served model)."""
    register = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["register"]
    served = {str(f.relative_to(ROOT)) for f in {SERVED_ENTRY, *reached(SERVED_ENTRY, ROOT / "src")}
              if f.name != "__init__.py"}
    assert served - INFRASTRUCTURE <= set(register["deps"]), sorted(served - INFRASTRUCTURE - set(register["deps"]))


def test_relative_imports_count_as_imports(tmp_path):
    """`from . import helpers` inside the package was missed: a stage could import a module it does not list."""
    pkg = tmp_path / "ferops"
    (pkg / "data").mkdir(parents=True)
    for f in ("__init__.py", "a.py", "b.py", "data/__init__.py", "data/c.py", "data/d.py"):
        (pkg / f).write_text("")
    (pkg / "a.py").write_text("from . import b\nfrom .data import c\n")
    (pkg / "data" / "c.py").write_text("def f():\n    from ..data.d import g\n")
    assert {f.relative_to(tmp_path).as_posix() for f in reached(pkg / "a.py", tmp_path)} >= {
        "ferops/b.py", "ferops/data/c.py", "ferops/data/d.py"}


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
