"""The suite's own isolation (tests/conftest.py): run in a pytest of its own, two tests in order on one process, as
an xdist worker runs them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

LEAKY = '''
import mlflow


def test_1_sets_the_uris(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/a.db")
    mlflow.set_registry_uri(f"sqlite:///{tmp_path}/a.db")


def test_2_gets_its_own_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/b.db")
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/b.db"
    assert mlflow.get_registry_uri() == f"sqlite:///{tmp_path}/b.db"  # the registry follows the tracking store


def test_3_selects_an_experiment(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/c.db")
    mlflow.set_experiment("ferops")  # id 1 in that store


def test_4_logs_into_its_own_stores_default_experiment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/d.db")
    with mlflow.start_run() as run:  # "No Experiment with id=1 exists" when test 3's selection leaked
        assert run.info.experiment_id == "0"
'''


def test_mlflow_uris_set_by_one_test_do_not_reach_the_next(tmp_path):
    """The environment alone was restored: MLflow's in-process URI outranks it, so the second test logged into the
    first one's store; and set_experiment's id reached the next test's store, which has no such experiment."""
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", str(tmp_path)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and "4 passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]


MODULE_STORE = '''
import mlflow
import pytest


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('module')}/a.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def test_1_uses_the_module_store(store):
    assert mlflow.get_tracking_uri() == store


def test_2_still_has_it(store):  # the per-test restore puts back the module's store, not the state before it
    assert mlflow.get_tracking_uri() == store and mlflow.get_registry_uri() == store
'''

NEXT_MODULE = '''
import mlflow


def test_gets_its_own_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/b.db")
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/b.db"
    assert mlflow.get_registry_uri() == f"sqlite:///{tmp_path}/b.db"
'''


def _pytest_in(folder: Path, files: dict[str, str], passed: int) -> None:
    shutil.copy(TESTS / "conftest.py", folder / "conftest.py")
    for name, text in files.items():
        (folder / name).write_text(text)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", str(folder)],
                       capture_output=True, text=True, cwd=folder, timeout=300)
    assert r.returncode == 0 and f"{passed} passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]


def test_mlflow_uris_a_module_fixture_set_do_not_reach_the_next_module(tmp_path):
    """A module fixture sets the URIs before its first test, so the per-test restore keeps them for its module —
    and they outlived it: the next module's test, on the same worker, logged into that module's store."""
    _pytest_in(tmp_path, {"test_a_module.py": MODULE_STORE, "test_b_next.py": NEXT_MODULE}, passed=3)


MODULE_RUN = '''
import mlflow
import pytest


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('module')}/a.db")
    with mlflow.start_run() as r:
        yield r.info.run_id


def test_1_logs_into_the_module_run(run):
    assert mlflow.active_run().info.run_id == run
    mlflow.log_metric("a", 1.0)


def test_2_too(run):
    assert mlflow.active_run() is not None and mlflow.active_run().info.run_id == run


def test_3_a_run_of_its_own_is_ended(run):
    mlflow.start_run(nested=True)  # left active, as by a failing test


def test_4_back_in_the_module_run(run):
    assert mlflow.active_run().info.run_id == run
'''


def test_a_module_fixtures_active_run_stays_open_for_its_tests(tmp_path):
    """Only the runs a test started are ended: a module fixture's run, open for several tests, was ended after the
    first one."""
    _pytest_in(tmp_path, {"test_module_run.py": MODULE_RUN}, passed=4)


def test_the_mlflow_store_fixture_keeps_default_artifacts_out_of_the_repository(mlflow_store, tmp_path):
    """A run in the Default experiment of the fixture's store put its artifacts in ./mlruns of the repository root
    (the folder pytest runs from), which .gitignore hid."""
    import mlflow

    (tmp_path / "a.txt").write_text("x")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(tmp_path / "a.txt"))
    artifacts = Path(mlflow.get_run(run.info.run_id).info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(tmp_path) and (artifacts / "a.txt").exists()
