"""Tuning machinery end to end on real storages: pruning (Optuna PRUNED / MLflow KILLED), resume after SIGKILL,
parallel workers on one JournalFileBackend study, and a real Keras trial.

The resume/parallel tests use a cheap trial function (no TF) so they take seconds; it goes through the
same `run_study` machinery (claims, dead-worker recovery, nested MLflow runs) as the Keras objective.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from ferops import tuning
from ferops.data.io import FerData

pytestmark = pytest.mark.integration

SPACE = {"lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}, "batch_size": {"choices": [16, 32]}}
CNN = {"arch": "cnn", "filters": [4, 8], "dense": 16, "dropout": 0.1, "lr": 1e-3, "batch_size": 32, "epochs": 2,
       "optimizer": "adam", "schedule": "cosine", "warmup_epochs": 0, "label_smoothing": 0.0, "weight_decay": 0.0,
       "early_stopping_patience": 5, "precision": "fp32",
       "online_aug": {"hflip": True, "rotate_deg": 0, "translate": 0.0, "zoom": 0.0, "contrast": 0.0, "crop": 0, "erasing": 0.0}}


def _fer(n: int, seed: int = 0) -> FerData:
    from ferops.data.synthetic import make_synthetic

    return make_synthetic(n, seed)


def cheap_trial(trial, cfg, train, val, *, seed, epochs):
    """Stand-in for training: the score peaks at lr = 1e-3; optional sleep per epoch (env FEROPS_TEST_EPOCH_S)."""
    score = 0.9 - 0.1 * abs(np.log10(cfg["lr"]) + 3)
    markers = os.environ.get("FEROPS_TEST_MARKERS")  # a folder: one file per reported epoch (t<trial>e<epoch>)
    for e in range(epochs):
        time.sleep(float(os.environ.get("FEROPS_TEST_EPOCH_S", "0")))
        tuning.report_epoch(trial, e, score * (e + 1) / epochs)
        if markers:
            Path(markers, f"t{trial.number}e{e}").touch()
    return score


def barrier_trial(trial, cfg, train, val, *, seed, epochs):
    """cheap_trial that first waits (≤ 60 s) until two workers have trials, so both workers surely take part."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len({t.user_attrs.get("worker") for t in trial.study.get_trials(deepcopy=False)} - {None}) >= 2:
            break
        time.sleep(0.1)
    return cheap_trial(trial, cfg, train, val, seed=seed, epochs=epochs)


class PruneNumbers(optuna.pruners.BasePruner):
    """Prunes the trials whose number is in `numbers` at their first report; never the others."""

    def __init__(self, numbers: set[int]):
        self.numbers = set(numbers)

    def prune(self, study, trial):
        return trial.number in self.numbers


def _runs(study_name: str):
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("ferops")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.optuna_study = '{study_name}'", max_results=500)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children, client


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One real sqlite MLflow store for the module (creating one costs seconds); tests use distinct study names."""
    from ferops.tracking import init_tracking

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
        yield init_tracking()


def test_pruned_trials_are_pruned_in_optuna_and_killed_in_mlflow(tmp_path, tracking):
    data = _fer(40)
    study = tuning.run_study("cnn", CNN, SPACE, data, data, storage=None, study_name="prune", n_trials=4, epochs=3,
                             seed=0, pruner=PruneNumbers({1, 3}), trial_fn=cheap_trial, root=tmp_path,
                             figures_dir=tmp_path / "fig", progress=False, mlflow_tags={"dataset": "synthetic"})
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED] * 2
    assert (tmp_path / "optuna.db").exists()
    assert study.metric_names == ["val_accuracy"]  # optuna-dashboard's name for the objective

    parents, children, client = _runs("prune")
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.data.tags["stage"] == "tune" and parent.data.tags["model"] == "cnn"
    assert parent.info.status == "FINISHED"
    by_number = {int(r.data.tags["optuna_trial_number"]): r for r in children}
    for n, t in enumerate(study.trials):
        run = by_number[n]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["dataset"] == "synthetic"  # the study run's tags, so searches find trials too
        assert run.data.tags["git_commit"] == parent.data.tags["git_commit"]
        assert run.data.params["lr"] == str(t.params["lr"])
        if t.state == TrialState.PRUNED:
            assert run.info.status == "KILLED"
            assert run.data.tags["pruned"] == "true" and run.data.tags["state"] == "PRUNED"
            assert len(client.get_metric_history(run.info.run_id, "epoch_val_accuracy")) == 1  # pruned at epoch 1
            assert "val_accuracy" not in run.data.metrics  # no model: no best epoch
        else:
            assert run.info.status == "FINISHED" and run.data.tags["state"] == "COMPLETE"
            assert run.data.metrics["best_val_accuracy"] == pytest.approx(t.value)
            # as a training run's: val_accuracy is the best epoch's (the objective), the curve epoch_val_accuracy
            assert run.data.metrics["val_accuracy"] == pytest.approx(t.value)
            assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch_val_accuracy")] == [1, 2, 3]

    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(study.best_value)
    assert parent.data.tags["best_lr"] == str(study.best_params["lr"])
    assert parent.data.metrics["n_pruned"] == 2
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/parallel_coordinate.png"} <= arts
    assert (tmp_path / "fig" / "optimization_history.png").stat().st_size > 1000

    summary = tuning.study_summary(study, "cnn", 4, "sqlite:///x")
    assert (summary["n_complete"], summary["n_pruned"], summary["n_failed"]) == (2, 2, 0)
    assert summary["best_params"] == study.best_params and summary["mlflow_run_id"] == parent.info.run_id


def test_a_resumed_study_run_shows_the_current_budget_not_the_first_sessions(tmp_path, tracking):
    """Resuming with a larger n_trials or a timeout (not part of the study's identity) reopens the study's run: MLflow
    params are immutable, so the UI kept showing the first session's n_trials. Session settings are tags, set anew;
    the params hold what the study is (its trials' config: not the full run's epochs, which may change too)."""
    data = _fer(30)
    kw = dict(storage=None, study_name="budget", epochs=1, seed=0, pruner=optuna.pruners.NopPruner(),
              trial_fn=cheap_trial, root=tmp_path, progress=False)
    tuning.run_study("cnn", CNN, SPACE, data, data, n_trials=2, **kw)
    (first,), _, _ = _runs("budget")
    assert first.data.tags["n_trials"] == "2" and first.data.tags["timeout_s"] == "None"
    assert first.data.tags["workers"] == "1" and first.data.tags["storage"] == f"sqlite:///{tmp_path / 'optuna.db'}"

    study = tuning.run_study("cnn", {**CNN, "epochs": 30}, SPACE, data, data, n_trials=3, timeout_s=600.0, **kw)
    (parent,), children, _ = _runs("budget")
    assert parent.info.run_id == first.info.run_id and len(children) == tuning.counted(study) == 3
    assert (parent.data.tags["n_trials"], parent.data.tags["timeout_s"]) == ("3", "600.0")
    assert not {"n_trials", "timeout_s", "workers", "storage"} & set(parent.data.params)  # no stale copy beside them
    assert parent.data.params["epochs"] == parent.data.params["base.epochs"] == "1"  # what every trial trains
    assert parent.data.params["study_name"] == "budget" and parent.data.params["space.lr.high"] == "0.01"


def test_a_study_resumed_at_a_later_commit_keeps_the_commit_it_started_at(tmp_path, tracking, monkeypatch):
    """A re-run tune stage that reopens its study's run (a params change that keeps the study, a resume) re-tagged
    the run's git_commit with the current commit, as if the finished trials had run there. The run keeps the commit
    the study started at, git_commit_resumed names the later one, and each trial's run names the commit it ran at."""
    from ferops import tracking as tracking_module

    data = _fer(30)
    kw = dict(storage=None, study_name="later-commit", epochs=1, seed=0, pruner=optuna.pruners.NopPruner(),
              trial_fn=cheap_trial, root=tmp_path, progress=False)
    monkeypatch.setattr(tracking_module, "git_commit", lambda root=None: "a" * 40)
    tuning.run_study("cnn", CNN, SPACE, data, data, n_trials=1, **kw)
    (first,), _, _ = _runs("later-commit")
    assert first.data.tags["git_commit"] == "a" * 40 and "git_commit_resumed" not in first.data.tags

    monkeypatch.setattr(tracking_module, "git_commit", lambda root=None: "b" * 40)
    tuning.run_study("cnn", CNN, SPACE, data, data, n_trials=2, **kw)
    (parent,), children, _ = _runs("later-commit")
    assert parent.info.run_id == first.info.run_id
    assert (parent.data.tags["git_commit"], parent.data.tags["git_commit_resumed"]) == ("a" * 40, "b" * 40)
    by_number = {int(r.data.tags["optuna_trial_number"]): r.data.tags["git_commit"] for r in children}
    assert by_number == {0: "a" * 40, 1: "b" * 40}


def later_is_better_trial(trial, cfg, train, val, *, seed, epochs):
    """Each trial beats the ones before it: a resumed study always finds a new best."""
    tuning.report_epoch(trial, 0, 0.1 * (trial.number + 1))
    return 0.1 * (trial.number + 1)


def test_a_resumed_study_that_finds_a_better_trial_shows_only_its_params_as_best(tmp_path, tracking):
    """The best params were logged as `best_<p>` params, and as tags of the same names once a resumed study found
    another best: the run page and the runs table's param columns kept the first session's best."""
    data = _fer(30)
    kw = dict(storage=None, study_name="new-best", epochs=1, seed=0, pruner=optuna.pruners.NopPruner(),
              trial_fn=later_is_better_trial, root=tmp_path, progress=False)
    tuning.run_study("cnn", CNN, SPACE, data, data, n_trials=1, **kw)
    study = tuning.run_study("cnn", CNN, SPACE, data, data, n_trials=2, **kw)
    (parent,), _, _ = _runs("new-best")
    assert study.best_trial.number == 1 and study.trials[0].params["lr"] != study.best_params["lr"]
    assert not [k for k in parent.data.params if k.startswith("best_")]
    assert parent.data.tags["best_lr"] == str(study.best_params["lr"]) and parent.data.tags["best_trial"] == "1"
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(0.2)


def test_a_study_resumed_under_mlflow_run_keeps_its_trials_nested(tmp_path, tracking, monkeypatch):
    """`mlflow run . -e tune` starts a project run and hands it over in MLFLOW_RUN_ID, which MLflow clears only when
    a start_run takes it. A resumed study reopens its own run by id, so the variable stayed set and the first trial's
    nested start_run took the project run: a trial with no parent, outside the study's tree."""
    data = _fer(30)
    kw = dict(storage=None, study_name="project-resume", epochs=1, seed=0, pruner=optuna.pruners.NopPruner(),
              trial_fn=cheap_trial, root=tmp_path, progress=False)
    tuning.run_study("cnn", CNN, SPACE, data, data, n_trials=1, **kw)
    (parent,), _, client = _runs("project-resume")
    project = client.create_run(parent.info.experiment_id, run_name="mlflow-project-run")  # as `mlflow run` does
    monkeypatch.setenv("MLFLOW_RUN_ID", project.info.run_id)
    tuning.run_study("cnn", CNN, SPACE, data, data, n_trials=2, **kw)
    parents, children, _ = _runs("project-resume")
    assert [p.info.run_id for p in parents] == [parent.info.run_id] and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    left = client.get_run(project.info.run_id).data.tags
    assert "optuna_trial_number" not in left and parent.info.run_id in left["mlflow.note.content"]  # says where


RESUME_SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path
    import optuna
    from ferops import tuning
    from ferops.tracking import init_tracking
    sys.path.insert(0, sys.argv[2])
    from test_tune_resume import CNN, SPACE, _fer, cheap_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    init_tracking()
    root = Path(sys.argv[1])
    data = _fer(30)
    study = tuning.run_study("cnn", CNN, SPACE, data, data, storage=None, study_name="resume", n_trials=4, epochs=3,
                             seed=0, pruner=optuna.pruners.NopPruner(), trial_fn=cheap_trial, root=root, progress=False)
    print("DONE", len(study.trials))
''')


def test_killed_study_resumes_without_losing_trials(tmp_path, tracking, monkeypatch):
    script = tmp_path / "tune_script.py"
    script.write_text(RESUME_SCRIPT)
    monkeypatch.setenv("FEROPS_TEST_EPOCH_S", "0.3")
    cmd = [sys.executable, str(script), str(tmp_path), str(Path(__file__).parent)]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("FEROPS_TEST_MARKERS", str(markers))
    # The test never opens the study while the subprocess runs (two processes creating one sqlite schema race).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None and not (markers / "t2e0").exists():
            time.sleep(0.05)
        mid_trial = (markers / "t2e0").exists()  # trials 0 and 1 told, trial 2 has reported its first epoch
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        out = proc.communicate()[0]
    assert mid_trial, f"study never reached a killable point:\n{out}"
    after_kill = optuna.load_study(study_name="resume", storage=storage).trials
    before = {t.number: t.value for t in after_kill if t.state == TrialState.COMPLETE}
    running = [t.number for t in after_kill if t.state == TrialState.RUNNING]
    assert len(before) >= 2 and len(running) == 1, [(t.number, t.state) for t in after_kill]
    killed = running[0]  # left RUNNING by the dead process

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    study = optuna.load_study(study_name="resume", storage=storage)
    trials = study.trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert tuning.counted(study) == 4  # exactly n_trials finished, the killed one replaced
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    for n, v in before.items():  # no finished trial lost or rerun
        assert trials[n].state == TrialState.COMPLETE and trials[n].value == v
    assert trials[killed].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retried) == 1 and retried[0].params == trials[killed].params
    assert retried[0].state == TrialState.COMPLETE

    parents, children, _ = _runs("resume")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # one parent run, reopened on resume
    status = {int(r.data.tags["optuna_trial_number"]): r.info.status for r in children}
    assert status[killed] == "KILLED"
    assert all(status[t.number] == "FINISHED" for t in trials if t.state == TrialState.COMPLETE)


TOGETHER_SCRIPT = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    import optuna
    from ferops import tuning
    sys.path.insert(0, sys.argv[2])
    from test_tune_resume import CNN, SPACE, _fer, cheap_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = _fer(30)
    Path(sys.argv[1], f"ready-{sys.argv[3]}").touch()  # all start at once, their imports done
    deadline = time.monotonic() + 120
    while len(list(Path(sys.argv[1]).glob("ready-*"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    study = tuning.run_study("cnn", CNN, SPACE, data, data, storage=None, study_name="together", n_trials=4, epochs=1,
                             seed=0, pruner=optuna.pruners.NopPruner(), trial_fn=cheap_trial, track=False,
                             root=Path(sys.argv[1]), progress=False)
    print("DONE", len(study.trials))
''')


def test_processes_opening_one_new_study_at_once_all_run_and_draw_their_own_configurations(tmp_path):
    """Two experiments of a fresh project (`dvc queue start -j 2`) open one new sqlite study at the same moment. Both
    used to create its tables (one failed: `table ... already exists`), and both seeded their sampler when the study
    had no trials, so they drew the same configurations."""
    script = tmp_path / "together.py"
    script.write_text(TOGETHER_SCRIPT)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), str(Path(__file__).parent), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(4)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(outs)
    study = optuna.load_study(study_name="together", storage=f"sqlite:///{tmp_path / tuning.DEFAULT_DB}")
    assert tuning.counted(study) == 4 and len(study.trials) == 4  # exactly n_trials among the four processes
    drawn = [(t.params["lr"], t.params["batch_size"]) for t in study.trials]
    assert len(set(drawn)) == 4, drawn


def test_parallel_workers_share_one_journal_study(tmp_path, tracking):
    data = _fer(30)
    spec = f"journal:{tmp_path / 'journal.log'}"
    study = tuning.run_study("cnn", CNN, SPACE, data, data, storage=spec, study_name="parallel", n_trials=6, epochs=2,
                             seed=0, workers=2, trial_fn=barrier_trial, root=tmp_path, progress=False)
    trials = study.trials
    assert tuning.counted(study) == 6
    assert len(trials) == 6 and sorted(t.number for t in trials) == list(range(6))  # no surplus trial started
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2 and all(f":{os.getpid()}:" not in w for w in workers)
    assert isinstance(tuning.make_storage(spec, tmp_path, 2), optuna.storages.JournalStorage)
    # The workers' claim lock lives beside the journal (it goes with the project), not in the temp folder.
    assert (tmp_path / "journal.log.claim.lock").exists()
    assert tuning._claim_path(spec, "parallel", tmp_path) == tmp_path / "journal.log.claim.lock"
    assert tuning._claim_path(f"sqlite:///{tmp_path / 'o.db'}", "s", tmp_path) == tmp_path / "o.db.claim.lock"
    parents, children, _ = _runs("parallel")
    assert len(parents) == 1 and len(children) == 6
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}


def test_keras_trials_complete_and_prune(tmp_path, tracking):
    train, val = _fer(84, seed=1), _fer(42, seed=2)
    # the model's own epochs (1) and time budget must not cut the study's 2-epoch trials short
    study = tuning.run_study("cnn", {**CNN, "epochs": 1, "time_budget_min": 58}, {"lr": {"low": 1e-3, "high": 3e-3,
                             "log": True}}, train, val, storage=None,
                             study_name="keras", n_trials=2, epochs=2, seed=0, pruner=PruneNumbers({1}),
                             root=tmp_path, progress=False)
    complete, pruned = study.trials
    assert complete.state == TrialState.COMPLETE and pruned.state == TrialState.PRUNED
    assert sorted(complete.intermediate_values) == [0, 1] and list(pruned.intermediate_values) == [0]
    assert complete.value == pytest.approx(max(complete.intermediate_values.values()))
    _, children, client = _runs("keras")
    status = {int(r.data.tags["optuna_trial_number"]): r for r in children}
    assert status[0].info.status == "FINISHED" and status[1].info.status == "KILLED"
    assert status[1].data.tags["pruned"] == "true"
    assert len(client.get_metric_history(status[1].info.run_id, "epoch_val_accuracy")) == 1  # the pruned epoch is logged


def test_a_bad_params_value_fails_the_study_in_one_line(tmp_path, tracking, caplog):
    from ferops.config import locate_param
    from ferops.errors import ConfigError

    def bad_trial(trial, cfg, train, val, *, seed, epochs):
        raise ConfigError(f"optimizer={cfg['optimizer']!r}: use adam | adamw | sgd_nesterov.")

    data = _fer(40)
    cfg = {**CNN, "optimizer": "bogus"}
    with pytest.raises(ConfigError) as err:
        tuning.run_study("cnn", cfg, SPACE, data, data, storage=None, study_name="bad", n_trials=2, epochs=1, seed=0,
                         trial_fn=bad_trial, root=tmp_path, progress=False, track=False)
    (failed,) = [r for r in caplog.records if r.getMessage().startswith("Trial 0 failed with parameters")]
    assert failed.exc_info is None and "optimizer='bogus'" in failed.getMessage()  # Optuna's line, no traceback
    model = {k: v for k, v in CNN.items() if k != "optimizer"}  # the value comes from common: named there
    located = locate_param(err.value, [("train_deep.models.cnn", model), ("train_deep.common", {"optimizer": "x"})])
    assert str(located) == "params.yaml train_deep.common.optimizer='bogus': use adam | adamw | sgd_nesterov."


def test_ctrl_c_in_a_trial_is_optunas_one_line_without_the_stack(tmp_path, caplog):
    """Ctrl-C during `dvc repro tune@cnn` printed Optuna's "Trial 1 failed … KeyboardInterrupt()" with ~270 lines of
    TensorFlow stack before the stage's `interrupted` (a user audit); train_deep says `interrupted` alone."""

    def interrupted_trial(trial, cfg, train, val, *, seed, epochs):
        raise KeyboardInterrupt

    data = _fer(40)
    with pytest.raises(KeyboardInterrupt):
        tuning.run_study("cnn", CNN, SPACE, data, data, storage=None, study_name="ctrl-c", n_trials=2, epochs=1,
                         seed=0, trial_fn=interrupted_trial, root=tmp_path, progress=False, track=False)
    (failed,) = [r for r in caplog.records if r.getMessage().startswith("Trial 0 failed with parameters")]
    assert failed.exc_info is None and "KeyboardInterrupt" in failed.getMessage()


def tensorflow_trial(trial, cfg, train, val, *, seed, epochs):
    """A trial that starts TensorFlow, as every Keras trial does."""
    import tensorflow as tf

    tf.config.list_physical_devices()
    return 0.5


def test_parallel_workers_filter_tensorflows_start_up_lines(tmp_path, capfd):
    """With tune.workers: 2 each spawned worker printed TF's C++ start-up lines (the absl banner, `I0000 … oneDNN
    custom operations are on`, the CUDA probe) that the stage's own process filters (a user audit)."""
    tuning.run_study("cnn", CNN, SPACE, _fer(30), _fer(30), storage=f"journal:{tmp_path / 'j.log'}",
                     study_name="tf-lines", n_trials=2, epochs=1, seed=0, workers=2, trial_fn=tensorflow_trial,
                     root=tmp_path, progress=False, track=False)
    err = capfd.readouterr().err
    assert "absl::InitializeLog" not in err and "custom operations are on" not in err, err[-2000:]


def config_error_trial(trial, cfg, train, val, *, seed, epochs):
    """A sampled value the model refuses (check_config's message)."""
    from ferops.errors import ConfigError

    raise ConfigError(f"dropout={cfg['dropout']}: give a number ≥ 0 and ≤ 0.95.")


def test_a_bad_params_value_in_parallel_workers_is_the_same_one_line(tmp_path, capfd):
    """With tune.workers > 1 each worker printed its traceback and the stage said 'tuning workers failed … rerun the
    stage to resume' (a rerun fails again) instead of the ConfigError one worker reports (named by locate_param)."""
    from ferops.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^dropout=1.2: give a number ≥ 0 and ≤ 0.95\.$"):
        tuning.run_study("cnn", {**CNN, "dropout": 1.2}, SPACE, _fer(30), _fer(30), storage=f"journal:{tmp_path / 'j.log'}",
                         study_name="bad-parallel", n_trials=2, epochs=1, seed=0, workers=2, trial_fn=config_error_trial,
                         root=tmp_path, progress=False, track=False)
    assert "Traceback" not in capfd.readouterr().err


TERM_SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path
    import optuna
    from ferops import tuning
    from ferops.runner import run
    from ferops.tracking import init_tracking
    sys.path.insert(0, sys.argv[2])
    from test_tune_resume import CNN, SPACE, _fer, cheap_trial

    def main():
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        init_tracking()
        data = _fer(30)
        tuning.run_study("cnn", CNN, SPACE, data, data, storage=f"journal:{sys.argv[1]}/j.log", study_name=sys.argv[3],
                         n_trials=20, epochs=50, seed=0, workers=2, pruner=optuna.pruners.NopPruner(),
                         trial_fn=cheap_trial, root=Path(sys.argv[1]), progress=False)

    if __name__ == "__main__":  # spawned workers import this file as their main module
        run(main)
''')


@pytest.mark.parametrize("group", [False, True], ids=["stage", "process-group"])
def test_sigterm_stops_a_parallel_study_and_its_workers_trials_end(tmp_path, tracking, group):
    """`kill`/`timeout`/a scheduler's limit on a tune stage with workers: the stage stopped on the spot, its workers
    went on alone (or, stopped by the parent, died with their trials and MLflow runs left RUNNING). Now the stage stops
    its workers, whose trials end (Optuna FAIL, MLflow KILLED), and says so in one line, exit 143. `timeout` and Slurm
    signal the whole group: the parent's own SIGTERM to a worker then must not cut its clean-up short."""
    script = tmp_path / "term.py"
    script.write_text(TERM_SCRIPT)
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {**os.environ, "FEROPS_TEST_EPOCH_S": "0.2", "FEROPS_TEST_MARKERS": str(markers)}
    name = f"term-{'group' if group else 'stage'}"  # one MLflow store for the module: a study name each
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), str(Path(__file__).parent), name], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=group)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None and not (
                (markers / "t0e1").exists() and (markers / "t1e1").exists()):
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143 and err.strip().endswith("terminated (SIGTERM)"), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    study = optuna.load_study(study_name=name, storage=tuning.make_storage(f"journal:{tmp_path / 'j.log'}", tmp_path, 2))
    assert len(study.trials) >= 2 and not [t for t in study.trials if t.state == TrialState.RUNNING], study.trials
    parents, children, _ = _runs(name)
    assert {r.info.status for r in children} <= {"KILLED", "FINISHED"} and "KILLED" in {r.info.status for r in children}
    assert [r.info.status for r in parents] == ["FAILED"]
