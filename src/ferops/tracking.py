"""MLflow at the edges: tracking URI, experiment, one run per model, tags, registry helpers."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ferops.config import flatten, repo_root, sqlite_file, sqlite_url, store_root

EXPERIMENT = "ferops"
RUN_ID_FILE = "mlflow_run_id.txt"
# `mlflow run -e main` names its `dvc repro` in the stages' environment; each run they start carries it as a tag,
# so the project run nests exactly those runs (ferops.mlproject)
REPRO_ENV, REPRO_TAG = "FEROPS_REPRO_ID", "ferops_repro"


def tracking_uri(root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI if set, else an absolute sqlite:///<repo>/mlflow.db.

    Absolute, and in the real repo, because `dvc exp run` executes stages in a temp copy of the repo: a relative
    sqlite path in MLFLOW_TRACKING_URI (`sqlite:///mlflow.db`) is the real repo's file too, not the temp copy's.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return sqlite_url(env, root)
    return f"sqlite:///{store_root(root) / 'mlflow.db'}"


def store_missing(uri: str) -> bool:
    """True when `uri` is a sqlite store whose file does not exist: reading commands must say so, since opening it
    would leave an empty mlflow.db behind."""
    db = sqlite_file(uri)
    return db is not None and not db.exists()


def init_tracking(experiment: str = EXPERIMENT, root: Path | None = None) -> str:
    """Point MLflow at the store (created once, before any parallel writer) and select the experiment."""
    import mlflow

    from mlflow.exceptions import MlflowException

    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with _first_use_lock(uri):
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is not None and exp.lifecycle_stage == "deleted":  # else MLflow's "Cannot set a deleted experiment"
            from ferops.errors import DataError

            raise DataError(f"MLflow experiment `{experiment}` in {uri} was deleted (in the MLflow UI?), and no run "
                            f"can be logged into it — restore it, with its runs: `MLFLOW_TRACKING_URI="
                            f"{shlex.quote(uri)} mlflow experiments restore --experiment-id {exp.experiment_id}`.")
        if exp is None:
            db = sqlite_file(uri)
            # Keep artifacts beside the DB, not relative to whatever cwd a stage has.
            art = None if db is None else (db.parent / "mlartifacts").resolve().as_uri()
            try:
                mlflow.create_experiment(experiment, artifact_location=art)
            except MlflowException:  # another process (a server store, unlocked) created it in between
                if mlflow.get_experiment_by_name(experiment) is None:
                    raise
    mlflow.set_experiment(experiment)
    return uri


@contextmanager
def _first_use_lock(uri: str) -> Iterator[None]:
    """Serialise processes around a sqlite store's first use: `dvc queue start -j 2` can start two stages on a fresh
    store, and concurrent creation of its schema corrupts it (DESIGN). A no-op for other stores and without fcntl."""
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None  # type: ignore[assignment]  # the module, or None where there is none
    db = sqlite_file(uri)
    if fcntl is None or db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def git_commit(root: Path | None = None) -> str:
    """Current git commit (or 'unknown' outside a repo)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root or repo_root(), capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dataset_tags(ingest_report: dict[str, Any]) -> dict[str, str]:
    """Tags that tie a run to its data: dataset kind (real/synthetic) and the raw data's sha256."""
    return {
        "dataset": "synthetic" if ingest_report.get("synthetic") else "real",
        "data_sha256": str(ingest_report.get("sha256", "unknown")),
        "data_format": str(ingest_report.get("format", "unknown")),
    }


def find_run(run_id: str, client: Any = None) -> Any | None:
    """MLflow run `run_id`, or None where the store holds no such run (reset since, or the id is not one). Any other
    store error (locked, unreachable) is raised: read as "no run", it started a second run of a model being resumed
    and left the first one's tags stale."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return (client or MlflowClient()).get_run(run_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def end_killed_run(run_id: str) -> None:
    """Mark run `run_id` KILLED if it is still RUNNING (its process was killed, and its training starts afresh in a
    new run); a run the store does not hold, or one that ended, is left as it is."""
    from mlflow import MlflowClient

    run = find_run(run_id)
    # a run deleted in the UI (a clean-up) keeps its status, and MLflow refuses to update a deleted run
    if run is not None and run.info.lifecycle_stage == "active" and run.info.status == "RUNNING":
        MlflowClient().set_terminated(run_id, status="KILLED")


@contextmanager
def model_run(stage: str, model: str, params: dict[str, Any], tags: dict[str, str], run_dir: Path | None = None,
              nested: bool = False) -> Iterator[Any]:
    """Start (or resume, via <run_dir>/mlflow_run_id.txt) the MLflow run of one model.

    Tags every run with stage, model, DVC stage name and git commit; logs flattened params.
    """
    import mlflow

    # no file, or an empty one, names no run: a fresh one, as for a run the store no longer holds (reset since)
    run_id = read_run_id(run_dir) if run_dir is not None else None
    if run_dir is not None and run_id is not None:
        old = find_run(run_id)
        if old is None:
            run_id = None
        elif old.info.lifecycle_stage == "deleted":  # deleted in the UI (a killed run, cleaned up): MLflow refuses
            print(f"MLflow run {run_id} (named in {run_dir / RUN_ID_FILE}) was deleted: starting a new run",
                  file=sys.stderr)
            run_id = None
    all_tags = {"stage": stage, "model": model, "dvc_stage": f"{stage}@{model}", "git_commit": git_commit(), **tags}
    if os.environ.get(REPRO_ENV):  # under `mlflow run -e main`: which runs its `dvc repro` started (mlproject)
        all_tags[REPRO_TAG] = os.environ[REPRO_ENV]
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"{stage}-{model}", nested=nested, tags=all_tags) as run:
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / RUN_ID_FILE).write_text(run.info.run_id + "\n")
        if not run_id:
            log_params(params)
        yield run


def log_params(params: dict[str, Any]) -> None:
    """Log nested params flattened to dotted keys (values stringified, MLflow's 6000-char cap respected)."""
    import mlflow

    flat = {k: str(v)[:6000] for k, v in flatten(params).items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i:i + 100]))


def model_versions(client: Any, name: str) -> list[Any]:
    """Every version of registered model `name`. MLflow's filter string holds the name quoted: one with a single quote
    (`ann's resnet`, a name MLflow accepts) goes in double quotes, else the search fails as an invalid filter."""
    if "'" not in name:
        return list(client.search_model_versions(f"name='{name}'"))
    if '"' not in name:
        return list(client.search_model_versions(f'name="{name}"'))
    return [v for v in client.search_model_versions() if v.name == name]  # both quotes: no filter can name it


def read_run_id(run_dir: Path) -> str | None:
    """The MLflow run id a training stage left in <run_dir>, or None (no file, or an empty one)."""
    f = run_dir / RUN_ID_FILE
    return (f.read_text().strip() or None) if f.is_file() else None


def reopen_run(run_dir: Path) -> str:
    """The MLflow run id a training stage left in <run_dir>, for later stages to add to."""
    from ferops.errors import DataError

    f = run_dir / RUN_ID_FILE
    if not f.exists():
        raise DataError(f"{f}: missing — the model in {run_dir} was not trained through ferops (run `dvc repro`).")
    return f.read_text().strip()
