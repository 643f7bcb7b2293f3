"""`mlflow run . -e main`: the whole DVC pipeline as one MLflow Project run.

`mlflow run` hands its project run to the command in MLFLOW_RUN_ID, and a process that starts an MLflow run without
an id takes that one. One stage's entry point wants exactly that (the stage's run is the project run); `dvc repro`
runs many stages, and each took the same run: the second one's params clashed, MLflow refused them and the stage
failed, leaving the first stage's run renamed as the second's. So the pipeline runs without the variable, each stage
logging its own runs as under a plain `dvc repro`, and the runs it starts are nested under the project run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid


def repro(args: list[str]) -> int:
    """`dvc repro <args>` with the project run out of the stages' environment; returns dvc's exit code."""
    from ferops.tracking import REPRO_ENV

    project = os.environ.pop("MLFLOW_RUN_ID", None)
    repro_id = os.environ[REPRO_ENV] = uuid.uuid4().hex  # the stages tag their runs with it (tracking.model_run)
    try:
        return subprocess.call([sys.executable, "-m", "dvc", "repro", *args])
    finally:
        if project:
            nest_new_runs(project, repro_id)


def nest_new_runs(project: str, repro_id: str) -> list[str]:
    """Nest the top-level runs this `dvc repro` started (tagged `ferops_repro` = `repro_id`: by tag, not by start
    time, which a remote tracking server's clock would decide) in the project run's experiments under it (nesting is
    a tag in MLflow), and leave a note on it; returns their ids. Other runs started meanwhile in the same store
    (another user's, another pipeline's) stay where they are; a tune study's trials stay under their study's run."""
    from mlflow import MlflowClient

    from ferops.tracking import EXPERIMENT, REPRO_TAG, init_tracking

    init_tracking()  # the stages' store (MLFLOW_TRACKING_URI, as `mlflow run` passes it, else the project's)
    client = MlflowClient()
    experiments = {client.get_run(project).info.experiment_id}
    if (ferops := client.get_experiment_by_name(EXPERIMENT)) is not None:
        experiments.add(ferops.experiment_id)
    runs = [r for r in client.search_runs(sorted(experiments), filter_string=f"tags.{REPRO_TAG} = '{repro_id}'",
                                          max_results=5000)
            if r.info.run_id != project and "mlflow.parentRunId" not in r.data.tags]
    for r in runs:
        client.set_tag(r.info.run_id, "mlflow.parentRunId", project)
    names = ", ".join(sorted(r.info.run_name or r.info.run_id for r in runs)) or "none (every stage was cached)"
    client.set_tag(project, "mlflow.note.content",
                   f"`dvc repro` of the whole pipeline. Runs it started (nested here): {names}. Stages that only "
                   "added to earlier runs (evaluate's test metrics, register's tags) logged into those runs.")
    return [r.info.run_id for r in runs]


def main() -> None:
    """Entry point of MLproject's `main`."""
    from ferops.runner import run

    def go() -> None:
        code = repro(sys.argv[1:])
        if code:
            sys.exit(code)

    run(go)


if __name__ == "__main__":
    main()
