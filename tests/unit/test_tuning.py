"""Unit tests of the tuning module: search space, config mapping, storages, budgets, dead-trial recovery."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from ferops import tuning
from ferops.data.io import FerData, data_digest
from ferops.data.split import stratified_subsample
from ferops.errors import ConfigError

SPACE = {
    "lr": {"low": 3.0e-4, "high": 3.0e-3, "log": True},
    "dropout": {"low": 0.0, "high": 0.4},
    "depth": {"low": 1, "high": 3},
    "base_width": {"choices": [24, 32, 48]},
}
RESNET = {"arch": "resnet", "stages": [2, 2, 2, 2], "widths": [32, 64, 128, 256], "lr": 2e-3, "dropout": 0.2,
          "batch_size": 128, "online_aug": {"hflip": True, "rotate_deg": 10, "translate": 0.1, "zoom": 0.1,
                                            "contrast": 0.1, "crop": 44, "erasing": 0.25}}


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _fer(n: int, labels: np.ndarray | None = None) -> FerData:
    y = (np.arange(n) % 7 if labels is None else labels).astype(np.int8)
    return FerData(np.zeros((n, 48, 48), np.uint8), y, np.array(["Training"] * n), np.array([str(i) for i in range(n)]))


def test_suggest_params_types_ranges_and_distributions():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        p = tuning.suggest_params(trial, SPACE)
        assert set(p) == set(SPACE)
        assert isinstance(p["lr"], float) and 3.0e-4 <= p["lr"] <= 3.0e-3
        assert isinstance(p["dropout"], float) and 0.0 <= p["dropout"] <= 0.4
        assert isinstance(p["depth"], int) and 1 <= p["depth"] <= 3
        assert p["base_width"] in (24, 32, 48)
        study.tell(trial, 0.5)
    d = study.trials[0].distributions
    assert isinstance(d["lr"], FloatDistribution) and d["lr"].log
    assert isinstance(d["dropout"], FloatDistribution) and not d["dropout"].log
    assert isinstance(d["depth"], IntDistribution)
    assert isinstance(d["base_width"], CategoricalDistribution)


@pytest.mark.parametrize("spec, words", [
    ({"x": {"low": 1.0}}, "low` and `high"),
    ({"x": {"low": 2.0, "high": 1.0}}, "swap"),
    ({"x": {"low": 0.0, "high": 1.0, "log": True}}, "log scale"),
    ({"x": {"choices": []}}, "empty"),
    ({"x": 3}, "expected"),
])
def test_suggest_params_rejects_bad_spaces_with_the_name(spec, words):
    trial = optuna.create_study().ask()
    with pytest.raises(ConfigError, match=words) as exc:
        tuning.suggest_params(trial, spec)
    assert "`x`" in str(exc.value)


def test_apply_params_resnet_width_aug_and_direct_keys_without_mutating():
    before = repr(RESNET)
    out = tuning.apply_params(RESNET, {"base_width": 24, "aug_strength": 0.5, "lr": 1e-3, "dropout": 0.35,
                                       "batch_size": 64, "label_smoothing": 0.05, "weight_decay": 1e-4})
    assert repr(RESNET) == before  # the input config is left alone
    assert out["widths"] == [24, 48, 96, 192] and "base_width" not in out
    aug = out["online_aug"]
    assert aug["rotate_deg"] == pytest.approx(5.0) and aug["translate"] == pytest.approx(0.05)
    assert aug["zoom"] == pytest.approx(0.05) and aug["contrast"] == pytest.approx(0.05)
    assert aug["erasing"] == pytest.approx(0.125)
    assert aug["hflip"] is True and aug["crop"] == 44  # not strengths
    assert (out["lr"], out["dropout"], out["batch_size"], out["label_smoothing"], out["weight_decay"]) == (1e-3, 0.35, 64, 0.05, 1e-4)


def test_apply_params_is_applied_once_by_the_model_zoo():
    """The zoo also understands base_width/aug_strength keys: the mapped config must not be scaled twice."""
    from ferops.models import zoo
    out = tuning.apply_params({**RESNET, "base_width": 64}, {"base_width": 16, "aug_strength": 2.0})
    assert zoo.resnet_widths(out) == [16, 32, 64, 128]
    aug = zoo.aug_config(out)
    assert aug["rotate_deg"] == pytest.approx(20.0) and aug["erasing"] == pytest.approx(0.5)
    # a config with its own aug_strength: the sampled value replaces it (it scaled the magnitudes twice: 0.5 × 1.0)
    out = tuning.apply_params({**RESNET, "aug_strength": 0.5}, {"aug_strength": 1.0})
    assert zoo.aug_config(out)["rotate_deg"] == pytest.approx(10.0)


def test_apply_params_cnn_depth_dotted_and_unknown_keys():
    cnn = {"arch": "cnn", "filters": [32, 64], "dense": 128, "online_aug": {"erasing": 0.6}}
    out = tuning.apply_params(cnn, {"depth": 3, "base_width": 16, "dense": 64, "online_aug.crop": 40,
                                    "aug_strength": 2.0})
    assert out["filters"] == [16, 32, 64] and out["dense"] == 64
    assert out["online_aug"]["crop"] == 40 and out["online_aug"]["erasing"] == 1.0  # clipped: a probability
    assert tuning.apply_params(RESNET, {"depth": 3})["stages"] == [3, 3, 3, 3]
    with pytest.raises(ConfigError, match="not a training config key"):
        tuning.apply_params(cnn, {"momentum_typo": 0.9})


def test_apply_params_round_trips_study_best_params():
    """train_deep applies reports/tuning/<family>.json best_params with the same function."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(lambda t: len(tuning.apply_params(RESNET, tuning.suggest_params(t, SPACE))["widths"]), n_trials=3)
    out = tuning.apply_params(RESNET, study.best_params)
    assert out["widths"][0] == study.best_params["base_width"]
    assert out["stages"] == [study.best_params["depth"]] * 4


def test_make_storage_defaults_journal_rdb_and_guards(tmp_path, monkeypatch):
    monkeypatch.delenv(tuning.STORAGE_ENV, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    default = tuning.make_storage(None, tmp_path, 1)
    assert default == f"sqlite:///{(tmp_path / 'optuna.db').resolve()}"
    assert Path(default[len("sqlite:///"):]).is_absolute()

    js = tuning.make_storage(None, tmp_path, 2)
    assert isinstance(js, optuna.storages.JournalStorage)
    assert (tmp_path / tuning.DEFAULT_JOURNAL).exists()
    rel = tuning.make_storage("journal:sub/j.log", tmp_path, 1)
    assert isinstance(rel, optuna.storages.JournalStorage) and (tmp_path / "sub" / "j.log").exists()

    # Any other SQLAlchemy URL (here sqlite through an explicit driver, standing in for PostgreSQL): heartbeat + retry.
    rdb = tuning.make_storage(f"sqlite+pysqlite:///{tmp_path / 'rdb.db'}", tmp_path, 1)
    assert isinstance(rdb, optuna.storages.RDBStorage)
    assert rdb.get_heartbeat_interval() == tuning.HEARTBEAT_S
    assert isinstance(rdb.get_heartbeat_stale_trial_callback(), optuna.storages.RetryHeartbeatStaleTrialCallback)

    with pytest.raises(ConfigError, match="MLflow database"):
        tuning.make_storage(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, 1)
    with pytest.raises(ConfigError, match="parallel workers"):
        tuning.make_storage(f"sqlite:///{tmp_path / 'o.db'}", tmp_path, 2)
    with pytest.raises(ConfigError, match="SQLAlchemy URL"):
        tuning.make_storage("optuna.db", tmp_path, 1)
    monkeypatch.setenv(tuning.STORAGE_ENV, "journal:env.log")
    assert tuning.storage_spec(None, tmp_path) == "journal:env.log"


def test_a_bad_storage_is_named_where_it_was_set(tmp_path, monkeypatch):
    """A bad $FEROPS_OPTUNA_STORAGE was reported as `tune.storage …` (a user then looked for it in params.yaml, where
    it is null) and told to `use null`."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv(tuning.STORAGE_ENV, f"sqlite:///{tmp_path / 'o.db'}")
    with pytest.raises(ConfigError, match=r"^\$FEROPS_OPTUNA_STORAGE sqlite:///\S+o\.db: sqlite is not for 2 parallel"):
        tuning.make_storage(None, tmp_path, 2)
    monkeypatch.setenv(tuning.STORAGE_ENV, "optuna.db")
    with pytest.raises(ConfigError, match=r"^\$FEROPS_OPTUNA_STORAGE 'optuna.db': use journal:<path>, or a SQLAlchemy "
                                          r"URL .*; unset it for the default\.$"):
        tuning.make_storage("journal:params.log", tmp_path, 1)
    monkeypatch.delenv(tuning.STORAGE_ENV)
    with pytest.raises(ConfigError, match=r"^params.yaml tune.storage 'optuna.db': use null \(the default\), "
                                          r"journal:<path>, or a SQLAlchemy URL"):
        tuning.make_storage("optuna.db", tmp_path, 1)
    with pytest.raises(ConfigError, match=r"^params.yaml tune.storage sqlite:///\S+mlflow\.db is the MLflow database"):
        tuning.make_storage(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, 1)


def test_a_database_url_without_its_driver_or_of_an_unknown_database_is_one_line(tmp_path):
    # were tracebacks from `tune` and `ferops dashboard`: Optuna's ImportError ("Failed to import DB access module")
    # and SQLAlchemy's NoSuchModuleError for `postgres://`; neither line may show the URL's password
    for url, match in [("postgres://user:secret@127.0.0.1:1/db", r"postgres://…: SQLAlchemy knows no such database"),
                       ("postgresql+nodriver://user:secret@127.0.0.1:1/db", "knows no such database")]:
        with pytest.raises(ConfigError, match=match) as exc:
            tuning.make_storage(url, tmp_path, 1)
        assert "secret" not in str(exc.value)
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"postgresql://…: the Python driver .* not installed .*\[postgres\]") as exc:
            tuning.make_storage("postgresql://user:secret@127.0.0.1:1/db", tmp_path, 1)
        assert "secret" not in str(exc.value)


def test_a_relative_sqlite_storage_is_the_project_roots_file_from_any_folder(tmp_path, monkeypatch):
    """`tune.storage: sqlite:///studies.db` is written by the tune stage at the project root: `ferops dashboard` run
    from a subfolder looked for <subfolder>/studies.db ("no Optuna studies yet") and make_storage opened an empty one."""
    import argparse

    import optuna_dashboard

    from ferops import runner

    monkeypatch.delenv(tuning.STORAGE_ENV, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text('tune: {storage: "sqlite:///studies.db"}\n')
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'studies.db'}", study_name="ferops-cnn-x")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    served = []
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, host, port: served.append(storage))
    monkeypatch.setattr(runner, "ensure_port_free", lambda *a: None)
    tuning.cli_dashboard(argparse.Namespace(params=None, host="127.0.0.1", port=8080))
    assert optuna.get_all_study_names(served[0]) == ["ferops-cnn-x"]
    assert tuning.make_storage("sqlite:///studies.db", tmp_path) == f"sqlite:///{(tmp_path / 'studies.db').resolve()}"
    assert not (tmp_path / "notebooks" / "studies.db").exists()


def test_a_relative_storage_under_a_dvc_temp_experiment_is_the_real_projects_file(tmp_path):
    """Under `dvc exp run --temp` / `dvc queue` the stage runs in <repo>/.dvc/tmp/exps/<tmp>/: a relative
    `sqlite:///studies.db` or `journal:studies.log` landed in that throw-away copy (the dashboard never saw the
    study), while the default stores already used the real root."""
    tmp = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc"
    assert tuning._storage_file("sqlite:///studies.db", tmp) == (tmp_path / "studies.db").resolve()
    assert tuning._storage_file("journal:studies.log", tmp) == tmp_path.resolve() / "studies.log"
    assert tuning._storage_file("journal:/abs/j.log", tmp) == Path("/abs/j.log")


def test_changing_only_the_worker_count_resumes_the_study_from_the_other_default_file(tmp_path, monkeypatch):
    monkeypatch.delenv(tuning.STORAGE_ENV, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # a finished study of `tune.workers: 2` (the default journal file)
    journal = tuning.make_storage(None, tmp_path, 2)
    done = optuna.create_study(study_name="ferops-cnn-x", storage=journal, direction="maximize")
    done.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True), n_trials=3)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the finished study was started over")

    # back to one worker (sqlite): the three trials are found, none is run again
    study = tuning.run_study("cnn", {"arch": "cnn"}, {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}, _fer(14), _fer(7),
                             storage=None, study_name="ferops-cnn-x", n_trials=3, trial_fn=must_not_run, track=False,
                             root=tmp_path, progress=False)
    assert tuning.counted(study) == 3 and study.best_value == done.best_value
    assert (tmp_path / tuning.DEFAULT_DB).exists()
    # and the other way round; a study both files hold is left as it is
    assert tuning.adopt_default_study(journal, "ferops-cnn-x", tmp_path, 2) is False
    optuna.create_study(study_name="ferops-cnn-y", storage=tuning.make_storage(None, tmp_path, 1)).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert tuning.adopt_default_study(journal, "ferops-cnn-y", tmp_path, 2) is True
    assert len(optuna.load_study(study_name="ferops-cnn-y", storage=journal).trials) == 2
    assert tuning.adopt_default_study(journal, "ferops-cnn-new", tmp_path, 2) is False


def test_budget_demo_caps_and_redaction():
    fam = {"n_trials": 6, "epochs": 6, "timeout_min": 20, "train_max_rows": 12000}
    demo = {"max_trials": 3, "max_epochs": 2, "max_train_rows": 2000}
    assert tuning.budget(fam, demo, synthetic=False) == {"n_trials": 6, "epochs": 6, "train_rows": 12000, "timeout_s": 1200.0}
    assert tuning.budget(fam, demo, synthetic=True) == {"n_trials": 3, "epochs": 2, "train_rows": 2000, "timeout_s": 1200.0}
    # null / 0 = no cap, as train_deep reads them (tune refused both: "demo.max_epochs" must be ≥ 1)
    assert tuning.budget(fam, {"max_epochs": None, "max_trials": 0, "max_train_rows": None}, synthetic=True) == \
        {"n_trials": 6, "epochs": 6, "train_rows": 12000, "timeout_s": 1200.0}
    with pytest.raises(ConfigError, match="n_trials"):
        tuning.budget({"epochs": 2}, None, False)
    assert tuning.redact("postgresql://ann:s3cret@db:5432/optuna") == "postgresql://ann:***@db:5432/optuna"
    assert tuning.redact("sqlite:////a/b.db") == "sqlite:////a/b.db"


def test_full_run_only_keys_keep_the_study():
    """The full run's epochs, time budget and ensemble seeds never reach a trial: changing them reuses the study;
    a key a trial trains with (weight_decay), the study's epochs, or the data make a new one."""
    cfg = {"arch": "resnet", "lr": 1e-3, "weight_decay": 0.05, "epochs": 30, "time_budget_min": 58}
    name = tuning.family_study_name("resnet", cfg, SPACE, 4, 42, None, "d1")
    for other in ({"epochs": 60}, {"time_budget_min": 120}, {"time_budget_min": None}, {"ensemble_seeds": [1, 2]}):
        assert tuning.family_study_name("resnet", {**cfg, **other}, SPACE, 4, 42, None, "d1") == name, other
    assert tuning.family_study_name("resnet", {**cfg, "weight_decay": 0.1}, SPACE, 4, 42, None, "d1") != name
    assert tuning.family_study_name("resnet", cfg, SPACE, 5, 42, None, "d1") != name
    assert tuning.family_study_name("resnet", cfg, SPACE, 4, 42, None, "d2") != name
    assert tuning.trial_config({**cfg, "ensemble_seeds": [1, 2]}, 4) == {"arch": "resnet", "lr": 1e-3,
                                                                         "weight_decay": 0.05, "epochs": 4,
                                                                         "time_budget_min": None}


def test_values_the_space_sets_keep_the_study_and_values_its_trials_read_do_not():
    """`-S train_deep.models.resnet.dropout=0.1` re-ran the whole study (a user audit: 3 new trials on the demo, the
    15-minute budget on FER2013), though every trial samples its own dropout. What the space sets — a direct key, a
    dotted one, the widths base_width doubles — keeps the study; what its trials still read makes a new one."""
    space = {**SPACE, "online_aug.erasing": {"low": 0.0, "high": 0.5}, "aug_strength": {"low": 0.5, "high": 1.5}}
    cfg = {**RESNET, "online_aug": {"crop": 44, "erasing": 0.25, "rotate_deg": 10.0}}
    name = tuning.family_study_name("resnet", cfg, space, 4, 42, None, "d1")
    for other in ({"lr": 5e-3}, {"dropout": 0.0}, {"widths": [48, 96, 192, 384]}, {"stages": [3, 3, 3, 3]},
                  {"online_aug": {**cfg["online_aug"], "erasing": 0.5}}):
        assert tuning.family_study_name("resnet", {**cfg, **other}, space, 4, 42, None, "d1") == name, other
    for other in ({"online_aug": {**cfg["online_aug"], "rotate_deg": 20.0}},  # aug_strength scales it
                  {"stages": [2, 2, 2]},  # base_width doubles over three stages, not four
                  {"activation": "elu"}):
        assert tuning.family_study_name("resnet", {**cfg, **other}, space, 4, 42, None, "d1") != name, other
    assert tuning.family_study_name("resnet", cfg, {**space, "dropout": {"low": 0.1, "high": 0.4}}, 4, 42, None,
                                    "d1") != name


def test_study_name_tracks_the_fingerprint():
    a = tuning.study_name("resnet", {"space": SPACE, "epochs": 6})
    assert a.startswith("ferops-resnet-") and a == tuning.study_name("resnet", {"epochs": 6, "space": SPACE})
    assert a != tuning.study_name("resnet", {"space": SPACE, "epochs": 7})


def test_stratified_subsample_exact_proportional_seeded():
    y = np.repeat(np.arange(7), [400, 40, 400, 700, 500, 300, 500])
    y = np.concatenate([y, [-1] * 50])  # unlabeled rows are never trained on
    d = _fer(len(y), y)
    s = stratified_subsample(d, 1000, seed=3)
    assert len(s) == 1000 and (s.emotion >= 0).all()
    counts = np.bincount(s.emotion, minlength=7)
    assert np.abs(counts - np.bincount(y[y >= 0], minlength=7) * 1000 / 2840).max() <= 1
    assert np.array_equal(s.source_id, stratified_subsample(d, 1000, seed=3).source_id)
    assert not np.array_equal(s.source_id, stratified_subsample(d, 1000, seed=4).source_id)
    assert len(stratified_subsample(d, None, 0)) == 2840


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_fail_dead_trials_fails_and_requeues_only_dead_workers(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", direction="maximize")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = tuning.worker_id().split(":")[0]
    t_dead = study.ask({"lr": FloatDistribution(1e-4, 1e-2, log=True)})
    t_dead.set_user_attr("worker", f"{host}:{dead.stdout.strip()}:1")
    t_live = study.ask({"lr": FloatDistribution(1e-4, 1e-2, log=True)})
    t_live.set_user_attr("worker", tuning.worker_id())
    t_remote = study.ask()
    t_remote.set_user_attr("worker", "some-other-host:1:1")

    assert tuning.fail_dead_trials(study, track=False) == [t_dead.number]
    states = {t.number: t.state for t in study.trials}
    assert states[t_dead.number] == TrialState.FAIL
    assert states[t_live.number] == states[t_remote.number] == TrialState.RUNNING
    retry = [t for t in study.trials if t.state == TrialState.WAITING]
    assert len(retry) == 1 and retry[0].params == study.trials[t_dead.number].params
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry[0]) == t_dead.number
    assert tuning.fail_dead_trials(study, track=False) == []  # idempotent


def test_store_root_leaves_dvc_temp_copies_and_digest_tracks_rows(tmp_path):
    assert tuning.store_root(tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12") == tmp_path.resolve()
    assert tuning.store_root(tmp_path) == tmp_path.resolve()
    spec = tuning.storage_spec(None, tmp_path / ".dvc" / "tmp" / "exps" / "x")
    assert spec == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"  # the experiment's trials land in the real repo's DB
    a, b = _fer(20), _fer(20)
    assert data_digest(a) == data_digest(b)
    b.emotion[0] = 6
    assert data_digest(a) != data_digest(b)
    c = _fer(20)
    c.pixels[0, 0, 0] ^= 1  # a corrected pixel, same rows and labels
    assert data_digest(c) != data_digest(_fer(20))
    assert isinstance(tuning.make_pruner({"n_warmup_steps": 2}, 6), optuna.pruners.MedianPruner)


def test_budget_names_values_that_are_not_numbers():
    where = "tune.families.resnet"
    with pytest.raises(ConfigError, match=r"^params.yaml tune.families.resnet.n_trials: 'six' is not a whole number ≥ 1\.$"):
        tuning.budget({"n_trials": "six", "epochs": 4}, None, synthetic=False, where=where)
    with pytest.raises(ConfigError, match=r"^params.yaml tune.families.resnet.timeout_min: 'soon' is not a number ≥ 0\.$"):
        tuning.budget({"n_trials": 2, "epochs": 4, "timeout_min": "soon"}, None, synthetic=False, where=where)
    with pytest.raises(ConfigError, match=r"tune.families.resnet.epochs: 0 is not a whole number ≥ 1"):
        tuning.budget({"n_trials": 2, "epochs": 0}, None, synthetic=False, where=where)
    with pytest.raises(ConfigError, match=r"tune.families.resnet: `n_trials` is missing"):
        tuning.budget({"epochs": 2}, None, synthetic=False, where=where)


@pytest.mark.parametrize("spec, words", [
    ({"low": "fast", "high": "3e-3"}, "lr: low='fast' is not a number."),
    ({"low": 1.0e-4, "high": None}, "lr: high=None is not a number."),
    ({"low": True, "high": 1}, "lr: low=True is not a number."),
    ({"low": 1, "high": 4, "step": 0.5}, "lr: step=0.5 is not a whole number ≥ 1."),
    ({"low": 0.1, "high": 0.4, "step": "small"}, "lr: step='small' is not a number ≥ 0."),
    ({"choices": 64}, "lr: `choices` must be a list, got 64."),
    ({"low": 3.0e-3, "high": 3.0e-4}, "lr: low=0.003 is above high=0.0003; swap them."),
    # Optuna refuses these only inside the first trial (a ValueError traceback after TF start-up and the data load)
    ({"low": 0.0, "high": 0.4, "step": 0}, "lr: step=0 must be above 0 (leave it out for a continuous range)."),
    ({"low": 16, "high": 128, "step": 16, "log": True},
     "lr: Optuna cannot combine `log: true` with step=16; drop one of them."),
    ({"low": 1.0e-4, "high": 1.0e-2, "step": 1.0e-4, "log": True},
     "lr: Optuna cannot combine `log: true` with step=0.0001; drop one of them."),
])
def test_check_space_names_the_params_key_of_a_bad_entry(spec, words):
    where = "params.yaml tune.families.resnet.space"
    with pytest.raises(ConfigError) as err:
        tuning.check_space({"dropout": {"low": 0.0, "high": 0.4}, "lr": spec}, where)
    assert str(err.value) == f"{where}.{words}"
    with pytest.raises(ConfigError, match="must be a list|is not|swap|above 0|cannot combine") as err:  # a trial too
        tuning.suggest_params(optuna.create_study().ask(), {"lr": spec})
    assert str(err.value).startswith("tune space `lr`: ")
    with pytest.raises(ConfigError, match=r"space: expected a mapping of param"):
        tuning.check_space([spec], where)


def test_space_numbers_written_as_yaml_text_are_read_and_the_shipped_spaces_pass():
    import yaml

    tuning.check_space({"lr": {"low": "3e-4", "high": "3e-3", "log": True}}, "space")  # YAML reads 3e-3 as text
    tuning.check_space({"width": {"low": 8, "high": 64, "log": True, "step": 1}}, "space")  # the one step Optuna logs
    p = tuning.suggest_params(optuna.create_study().ask(), {"lr": {"low": "3e-4", "high": "3e-3", "log": True}})
    assert isinstance(p["lr"], float) and 3e-4 <= p["lr"] <= 3e-3
    families = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())["tune"]["families"]
    for family, fam in families.items():
        tuning.check_space(fam["space"], f"params.yaml tune.families.{family}.space")


def test_pruner_and_demo_caps_name_their_params_key():
    with pytest.raises(ConfigError, match=r"^params.yaml tune.pruner.n_warmup_steps: 'one' is not a whole number ≥ 0\.$"):
        tuning.make_pruner({"n_warmup_steps": "one"}, 6)
    with pytest.raises(ConfigError, match=r"^params.yaml demo.max_epochs: 'two' is not a whole number ≥ 0\.$"):
        tuning.budget({"n_trials": 2, "epochs": 4}, {"max_epochs": "two"}, synthetic=True)


def test_the_default_storage_is_not_blamed_on_params_yaml(tmp_path, monkeypatch):
    """run_study and `ferops dashboard` resolved the storage before make_storage, which then took the default file for
    a params.yaml value: an MLflow store at <root>/optuna.db was `params.yaml tune.storage …` (a null key), and the
    example 'own file' offered was that very optuna.db."""
    monkeypatch.delenv(tuning.STORAGE_ENV, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / tuning.DEFAULT_DB}")
    with pytest.raises(ConfigError, match=r"^the default tune storage sqlite:///\S+optuna\.db is the MLflow database; "
                                          r"give Optuna its own file \(e\.g\. sqlite:///\S+optuna_studies\.db\)") as exc:
        tuning.run_study("cnn", {"arch": "cnn"}, {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}, _fer(14), _fer(7),
                         storage=None, study_name="ferops-cnn-x", n_trials=1, track=False, root=tmp_path,
                         progress=False)
    assert "params.yaml" not in str(exc.value)


def test_study_figures_are_made_legible():
    """Optuna's figures as they came: fractional trial and step ticks, the worst trials near-white on grey in the
    parallel coordinate plot, its axes' labels overlapping, importances from two trials with no caveat, and two
    titles on top of each other there."""
    import warnings

    import matplotlib.colors
    from matplotlib.ticker import MaxNLocator

    from ferops.plots import pyplot

    pyplot()  # the non-interactive backend
    study = optuna.create_study(study_name="ferops-cnn-0123abcd", direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial):
        lr, wd = trial.suggest_float("lr", 1e-4, 1e-2, log=True), trial.suggest_float("wd", 1e-3, 0.1, log=True)
        for step in range(3):
            trial.report(0.2 * (step + 1) - abs(np.log10(lr) + 3) / 10, step)
        return 0.6 - abs(np.log10(lr) + 3) / 10 + wd

    study.optimize(objective, n_trials=3)
    vis = optuna.visualization.matplotlib
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, draw in (("optimization_history", vis.plot_optimization_history),
                           ("intermediate_values", vis.plot_intermediate_values),
                           ("param_importances", vis.plot_param_importances),
                           ("parallel_coordinate", vis.plot_parallel_coordinate)):
            ax = draw(study)
            fig = tuning.legible(name, ax, study.study_name, n_complete=3)
            assert ax.get_title().startswith("ferops-cnn-0123abcd: ") and not ax.get_title(loc="left")
            if name in ("optimization_history", "intermediate_values"):
                locator = ax.xaxis.get_major_locator()
                assert isinstance(locator, MaxNLocator) and locator._integer  # trials and epochs are whole
            if name == "param_importances":
                assert "from 3 complete trials: a rough guide" in ax.get_title()
            if name == "parallel_coordinate":
                lines = [c for c in ax.collections if c.get_array() is not None]
                assert lines and all(c.get_cmap().name == "viridis" for c in lines)
                worst = lines[0].get_cmap()(0.0)
                assert matplotlib.colors.rgb_to_hsv(worst[:3])[2] < 0.5  # the worst trial is dark, not white
                assert fig.get_size_inches()[0] > 6.4  # room for its axes (3 here: objective, lr, wd)
            pyplot().close(fig)


def _sleeping_worker(**kwargs: object) -> None:
    """A tune worker that sleeps a while: module-level, so a spawned child imports it by name."""
    time.sleep(float(kwargs.get("timeout_s") or 60))


def test_a_failing_progress_poll_leaves_the_workers_to_finish(monkeypatch, caplog):
    """The parent's poll feeds only the progress bar: a busy storage there is a warning, not the end of the trials."""
    def locked(study, running=False):
        raise RuntimeError("storage locked")

    monkeypatch.setattr(tuning, "_worker_main", _sleeping_worker)
    monkeypatch.setattr(tuning, "counted", locked)
    with caplog.at_level("WARNING", logger="ferops.tuning"):
        tuning._spawn_workers(2, None, None, timeout_s=3)  # returns once both workers finished, exit 0
    assert caplog.text.count("tuning progress not shown (storage locked)") == 1


def test_a_failed_start_stops_the_workers_already_started(monkeypatch):
    """Only Ctrl-C stopped the spawned workers: when starting the second one failed, the first ran its whole study
    (hours) unwatched, and the parent waited for it before the error showed."""
    from multiprocessing.context import SpawnProcess

    real, started = SpawnProcess.start, []

    def start(self):
        if self.name == "tune-worker-2":
            raise OSError("cannot start another process")
        real(self)
        started.append(self)

    monkeypatch.setattr(tuning, "_worker_main", _sleeping_worker)
    monkeypatch.setattr(SpawnProcess, "start", start)
    with pytest.raises(OSError, match="cannot start another process"):
        tuning._spawn_workers(2, None, None, timeout_s=60)
    (first,) = started
    first.join(timeout=120)  # the old code left it running: it ended 60 s later, by itself (exit code 0)
    assert first.exitcode == -signal.SIGTERM  # stopped, not waited out


def test_trial_seeds_are_fixed_and_differ_across_trials_and_study_seeds():
    """Each trial's sampler is seeded from the study's seed and the trial's number. `seed + n` gave the study of seed 43
    the draws of seed 42's, one trial behind (a `dvc exp run -S seed=43` replaying the start-up trials)."""
    seeds = {(s, n): tuning._trial_seed(s, n) for s in (42, 43) for n in range(20)}
    assert len(set(seeds.values())) == len(seeds) and tuning._trial_seed(42, 3) == seeds[(42, 3)]
    assert all(0 <= v < 2**32 for v in seeds.values())  # what numpy's RandomState (Optuna's samplers) takes
