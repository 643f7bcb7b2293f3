"""Optuna hyperparameter search for the deep families: search space, storage, resumable and parallel studies.

One Optuna study per (family, data, search settings); one MLflow parent run per study with a nested run
per trial. The objective is the best *validation* accuracy of a short training run (never the test split).

Resume: only COMPLETE and PRUNED trials count toward `n_trials`, so a killed study continues where it
stopped. A RUNNING trial left by a dead process on this machine (recognised by the worker id stored on the
trial) is failed and its parameters re-queued. Across machines, use an RDB URL (PostgreSQL): it runs with
Optuna's heartbeat, which fails stale trials after `grace_period` seconds. The sqlite default has no
heartbeat, so a RUNNING trial of a process that died on *another* host stays RUNNING until failed by hand.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import re
import signal
import socket
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TextIO, cast

from ferops.config import (in_project, not_a_section, not_in_project, number, number_problem, repo_root, sqlite_file,
                           sqlite_url, store_root)
from ferops.data.io import FerData
from ferops.errors import ConfigError, FerError
from ferops.hparams import apply_params

if TYPE_CHECKING:  # optuna is imported lazily (stage scripts stay quick to start)
    import optuna

log = logging.getLogger("ferops.tuning")


class _NoTracebackForFerError(logging.Filter):
    """Optuna logs every failed trial with its traceback. A FerError (e.g. a bad params.yaml value) is expected:
    the stage reports it as one line naming the key, so the trial's warning keeps its one-line message only. So is
    Ctrl-C: the stage says `interrupted` (the study resumes on the next run), not ~270 lines of TensorFlow stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (FerError, KeyboardInterrupt)):
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_expected_trial_errors() -> None:
    """Attach the filter to the logger Optuna reports failed trials on (idempotent)."""
    logger = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _NoTracebackForFerError) for f in logger.filters):
        logger.addFilter(_NoTracebackForFerError())

WORKER_GRACE_S = 30  # a stopped worker's time to end its trial (Optuna, MLflow) before it is killed
STORAGE_ENV = "FEROPS_OPTUNA_STORAGE"      # overrides tune.storage (e.g. a PostgreSQL URL for many machines)
DEFAULT_DB = "optuna.db"
DEFAULT_JOURNAL = "optuna_journal.log"
OBJECTIVE = "val_accuracy"                 # what every trial maximises: the study's metric name, as in MLflow
STALE_GRACE_S = 120                        # a RUNNING trial without a worker id this old is taken as dead
HEARTBEAT_S, GRACE_S, MAX_RETRY = 60, 120, 2

# A trial function trains/evaluates one configuration: (trial, cfg, train, val, *, seed, epochs) -> val score.
TrialFn = Callable[..., float]


# --------------------------------------------------------------------------- search space → config


def space_problem(spec: Any) -> str | None:
    """None when `spec` is a valid space entry — {low, high, log?, step?} of numbers, or {choices: [...]} — else what
    is wrong with it, for check_space and suggest_params (`low: fast` would otherwise end in float()'s traceback)."""
    if not isinstance(spec, dict):
        return f"expected {{low, high}} or {{choices: [...]}}, got {spec!r}."
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, (list, tuple)):
            return f"`choices` must be a list, got {choices!r}."
        return None if choices else "`choices` is empty; list at least one value."
    if "low" not in spec or "high" not in spec:
        return "needs both `low` and `high` (or `choices`)."
    low, high, step = spec["low"], spec["high"], spec.get("step")
    for key in ("low", "high"):
        problem = number_problem(spec[key])
        if problem:
            return f"{key}={spec[key]!r} is not {problem}."
    whole = isinstance(low, int) and isinstance(high, int)  # an int range (bools were refused above): a whole step ≥ 1
    problem = None if step is None else number_problem(step, whole=whole, low=1 if whole else 0)
    if problem:
        return f"step={step!r} is not {problem}."
    if step is not None and float(step) <= 0:  # Optuna's own ValueError would only come in the first trial
        return f"step={step!r} must be above 0 (leave it out for a continuous range)."
    if float(low) > float(high):
        return f"low={low} is above high={high}; swap them."
    if spec.get("log", False) and float(low) <= 0:
        return f"a log scale needs low > 0 (got {low})."
    if spec.get("log", False) and step is not None and not (whole and float(step) == 1):
        return f"Optuna cannot combine `log: true` with step={step!r}; drop one of them."
    return None


FAMILY_KEYS = ("n_trials", "epochs", "timeout_min", "train_max_rows", "space")  # of tune.families.<family>
RANGE_KEYS, CHOICE_KEYS = ("low", "high", "log", "step"), ("choices",)  # of one space entry
PRUNER_KEYS = ("n_startup_trials", "n_warmup_steps")  # of tune.pruner


def unknown_tune_keys(fam: dict[str, Any], where: str, pruner: Any = None) -> list[str]:
    """One message per key nothing reads of `tune.families.<family>` (at `where`), of one of its space entries, or of
    `tune.pruner`: a typo (`timout_min: 15` ran with no timeout, `lgo: true` sampled a linear range) was ignored
    silently."""
    from ferops.config import did_you_mean

    def unknown(sect: Any, at: str, known: tuple[str, ...]) -> list[str]:
        listed = f" (known: {', '.join(known)})"
        return [f"params.yaml {at}.{key}: unknown key, ignored{did_you_mean(key, known, listed)}"
                for key in (sect if isinstance(sect, dict) else {}) if key not in known]

    out = unknown(fam, where, FAMILY_KEYS)
    space = fam.get("space")
    for name, spec in (space if isinstance(space, dict) else {}).items():
        known = CHOICE_KEYS if isinstance(spec, dict) and "choices" in spec else RANGE_KEYS + CHOICE_KEYS
        out += unknown(spec, f"{where}.space.{name}", known)
    return out + unknown(pruner, "tune.pruner", PRUNER_KEYS)


def check_space(space: dict[str, Any], where: str) -> None:
    """ConfigError `<where>.<param>: what is wrong` for the first bad entry of a search space (the tune stage checks
    `params.yaml tune.families.<family>.space` before TensorFlow starts and the data loads)."""
    if not isinstance(space, dict):
        raise ConfigError(f"{where}: expected a mapping of param → {{low, high}} or {{choices: [...]}}, got {space!r}.")
    for name, spec in space.items():
        problem = space_problem(spec)
        if problem:
            raise ConfigError(f"{where}.{name}: {problem}")


def applied_at_end(cfg: dict[str, Any], space: dict[str, Any], end: int) -> dict[str, Any]:
    """`cfg` with every entry of a (checked) space set as a trial would set it, at its low end or first choice
    (`end` 0) or its high end or last choice (`end` -1)."""
    import optuna

    values = {name: spec["choices"][end] if "choices" in spec else spec["low" if end == 0 else "high"]
              for name, spec in space.items()}
    with warnings.catch_warnings():  # Optuna's, about choices that are lists: the trials warn too
        warnings.simplefilter("ignore", UserWarning)
        return apply_params(cfg, suggest_params(optuna.trial.FixedTrial(values), space))


def check_space_applies(space: dict[str, Any], cfg: dict[str, Any], where: str) -> None:
    """ConfigError `<where>.<param>: …` for a (checked) space entry that apply_params cannot set on the model config
    `cfg` — a name no config key takes (`learning_rate:`), `depth` of an arch without one —, or that sets a value
    training refuses (`batch_size: {choices: [64, big]}`), tried at both ends and with every choice. Before TensorFlow
    and the data load: in a trial it came late (the trial that drew it, maybe hours in), and with parallel workers as
    one traceback per worker."""
    import math

    from ferops.training import check_config

    for name, spec in space.items():
        if "step" in spec and "choices" not in spec:  # Optuna's highest value is the last one on the step grid
            spec = {**spec, "high": spec["low"] + math.floor((spec["high"] - spec["low"]) / spec["step"]) * spec["step"]}
        try:
            for end in range(len(spec["choices"])) if "choices" in spec else (0, -1):
                check_config(applied_at_end(cfg, {name: spec}, end))
        except (ConfigError, ValueError, TypeError) as exc:  # int("x") of a choice, say: one line too
            text = str(exc)
            for head in (f"tune space `{name}`: ", f"{name}: "):
                text = text.removeprefix(head)
            raise ConfigError(f"{where}.{name}: {text}") from None


def suggest_params(trial: "optuna.trial.BaseTrial", space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sample one value per entry of a params.yaml space: {low, high, log?, step?} (int when both ends are ints) or {choices}."""
    out: dict[str, Any] = {}
    for name, spec in (space or {}).items():
        problem = space_problem(spec)
        if problem:
            raise ConfigError(f"tune space `{name}`: {problem}")
        if "choices" in spec:
            out[name] = trial.suggest_categorical(name, list(spec["choices"]))
            continue
        low, high, use_log = spec["low"], spec["high"], bool(spec.get("log", False))
        if isinstance(low, int) and isinstance(high, int):
            out[name] = trial.suggest_int(name, low, high, step=int(spec.get("step") or 1), log=use_log)
        else:
            step = spec.get("step")
            out[name] = trial.suggest_float(name, float(low), float(high), log=use_log,
                                            step=None if step is None else float(step))
    return out


# --------------------------------------------------------------------------- budget, data, naming


def budget(family_cfg: dict[str, Any], demo: dict[str, Any] | None, synthetic: bool,
           where: str = "tune.families") -> dict[str, Any]:
    """n_trials, epochs, train_rows and timeout_s of one family (`where`: its params.yaml section, for messages),
    capped by `demo:` on the synthetic set."""
    missing = [k for k in ("n_trials", "epochs") if k not in family_cfg]
    if missing:
        raise ConfigError(f"params.yaml {where}: `{missing[0]}` is missing (n_trials and epochs are required).")
    b = {"n_trials": number(family_cfg, where, "n_trials", 0, whole=True, low=1),
         "epochs": number(family_cfg, where, "epochs", 0, whole=True, low=1)}
    caps = {k: family_cfg.get(k) or 0 for k in ("train_max_rows", "timeout_min")}  # null / 0 = no cap, no timeout
    b["train_rows"] = number(caps, where, "train_max_rows", 0, whole=True, low=0) or None
    t = number(caps, where, "timeout_min", 0, low=0)
    b["timeout_s"] = t * 60 if t else None
    if synthetic and demo:  # null / 0 = no cap, as train_deep reads the same keys
        for key, what in (("max_trials", "n_trials"), ("max_epochs", "epochs"), ("max_train_rows", "train_rows")):
            cap = number({key: demo.get(key) or 0}, "demo", key, 0, whole=True, low=0)
            if cap:
                b[what] = min(b[what] or 10**12, cap)
    return b


def study_name(family: str, fingerprint_of: dict[str, Any]) -> str:
    """`ferops-<family>-<hash>`: a new study when the space, data or trial budget per trial changes, the same one to resume."""
    blob = json.dumps(fingerprint_of, sort_keys=True, default=str)
    return f"ferops-{family}-{hashlib.sha1(blob.encode()).hexdigest()[:8]}"


# Keys of a model's config that only its full training run reads: a trial trains exactly the study's epochs, with no
# time budget, one model (not an ensemble). They stay out of the study's fingerprint, so changing them (the README's
# `-S train_deep.models.resnet.time_budget_min=120`) finds the finished study instead of tuning again; so do the
# values the space itself sets (`searched_configs`).
FULL_RUN_ONLY = ("epochs", "time_budget_min", "ensemble_seeds")


def trial_config(cfg: dict[str, Any], epochs: int) -> dict[str, Any]:
    """What a trial trains: `cfg` without its full-run-only keys, for exactly `epochs`, unbudgeted."""
    return {**{k: v for k, v in cfg.items() if k not in FULL_RUN_ONLY}, "epochs": epochs, "time_budget_min": None}


def searched_configs(cfg: dict[str, Any], space: dict[str, Any]) -> list[dict[str, Any]]:
    """What the trials of `space` train, whatever they sample: `cfg` with the space applied at its low ends (first
    choices) and at its high ends (last choices). A value the space sets (`lr`, `dropout`; `widths` under
    `base_width`) comes out the same whatever `cfg` holds, so changing it in params.yaml keeps the study; a value the
    trials read (the online_aug magnitudes `aug_strength` scales, the stage count `base_width` doubles over) does not."""
    return [applied_at_end(cfg, space, end) for end in (0, -1)]


def family_study_name(family: str, cfg: dict[str, Any], space: dict[str, Any], epochs: int, seed: int,
                      pruner: dict[str, Any] | None, data: str) -> str:
    """The study of a tune stage: same trained configs (`searched_configs` of the trial config)/space/data/epochs →
    same study (a rerun resumes or reuses it)."""
    return study_name(family, {"cfg": searched_configs(trial_config(cfg, epochs), space), "space": space,
                               "seed": seed, "pruner": pruner, "data": data})


def section_problem(value: Any, where: str, keys: str) -> ConfigError | None:
    """A ConfigError when a `tune:` setting that is a section holds a value instead (`pruner: median`): read with
    .get(), it ended in an AttributeError traceback."""
    return None if value is None or isinstance(value, dict) else not_a_section(where, value, keys)


def make_pruner(cfg: dict[str, Any] | None, epochs: int) -> "optuna.pruners.BasePruner":
    """MedianPruner from `tune.pruner` ({n_startup_trials, n_warmup_steps}); defaults 2 and max(1, epochs // 3)."""
    import optuna

    problem = section_problem(cfg or None, "tune.pruner", "n_startup_trials, n_warmup_steps; the pruner is always "
                                                          "Optuna's MedianPruner")
    if problem:
        raise problem
    cfg = cfg or {}
    return optuna.pruners.MedianPruner(
        n_startup_trials=number(cfg, "tune.pruner", "n_startup_trials", 2, whole=True, low=0),
        n_warmup_steps=number(cfg, "tune.pruner", "n_warmup_steps", max(1, epochs // 3), whole=True, low=0))


def redact(url: str) -> str:
    """A storage URL with its password replaced by ***."""
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", str(url))


# --------------------------------------------------------------------------- storage


def storage_spec(spec: str | None, root: Path, workers: int = 1) -> str:
    """The concrete storage string: $FEROPS_OPTUNA_STORAGE, else `spec`, else sqlite (1 worker) / journal (>1) under root."""
    spec = os.environ.get(STORAGE_ENV) or spec
    if not spec:
        # Absolute, and outside any temp copy of the repo, so every run of the stage finds the same study.
        if workers > 1:  # sqlite is not for parallel writers
            return f"journal:{store_root(root) / DEFAULT_JOURNAL}"
        return f"sqlite:///{store_root(root) / DEFAULT_DB}"
    return str(spec)


def cli_dashboard(args: Any) -> None:
    """`ferops dashboard`: optuna-dashboard on the storage the tune stage uses (tune.storage, tune.workers'
    journal, or $FEROPS_OPTUNA_STORAGE), found from any folder of the project."""
    from ferops.config import project_params, section

    try:
        import optuna_dashboard
    except ImportError:
        raise ConfigError("optuna-dashboard is not installed: `pip install -e '.[dashboard]'` (make setup installs "
                          "it).") from None
    params = project_params(args.params)
    tune = section(params, "tune") if "tune" in params else {}
    workers = number(tune, "tune", "workers", 1, whole=True, low=1) if tune.get("workers") else 1
    root = repo_root()
    spec = storage_spec(tune.get("storage"), root, workers)
    path = _storage_file(spec, root)
    if path is not None and not path.exists():
        if not os.environ.get(STORAGE_ENV) and not in_project():
            raise ConfigError(f"no Optuna studies at {path}: {not_in_project(STORAGE_ENV, 'its storage')}.")
        raise ConfigError(f"no Optuna studies yet at {path}: run the tune stage first (`dvc repro tune`, or `make run`).")
    from ferops.runner import ensure_port_free

    ensure_port_free(args.host, args.port, "ferops dashboard")
    # first: a URL it cannot open is an error, not a "serving" line; the setting as given, for its messages' `where`
    storage = make_storage(tune.get("storage"), root, workers)
    log.info("optuna-dashboard on %s: http://%s:%s", redact(spec), args.host, args.port)
    optuna_dashboard.run_server(storage, host=args.host, port=int(args.port))


def _journal_path(spec: str, root: Path) -> Path:
    """The file of a `journal:<path>` storage spec (relative paths under the project root — the real one under
    `dvc exp run --temp`, as for the default stores, not DVC's throw-away copy)."""
    path = Path(spec[len("journal:"):]).expanduser()
    return path if path.is_absolute() else store_root(root) / path


def _storage_file(spec: str, root: Path) -> Path | None:
    """The local file of a journal or sqlite storage spec; None for a server or in-memory storage."""
    return _journal_path(spec, root) if spec.startswith("journal:") else sqlite_file(spec, root)


def adopt_default_study(store: "str | optuna.storages.BaseStorage", name: str, root: Path, workers: int) -> bool:
    """With no storage set, `tune.workers` picks the file (sqlite for one worker, the journal for more): copy study
    `name` from the other default file when only that one holds it, so changing the worker count alone resumes the
    study instead of starting it over. Returns whether it copied."""
    import optuna

    other_spec = storage_spec(None, root, 2 if workers == 1 else 1)
    other_file = _storage_file(other_spec, root)
    if other_file is None or not other_file.exists() or name in optuna.get_all_study_names(store):
        return False
    other = make_storage(None, root, 2 if workers == 1 else 1)
    if name not in optuna.get_all_study_names(other):
        return False
    optuna.copy_study(from_study_name=name, from_storage=other, to_storage=store)
    log.info("study %s: copied from %s (tune.workers changed which default storage it uses)", name, other_file)
    return True


def make_storage(spec: str | None, root: Path, workers: int = 1) -> "str | optuna.storages.BaseStorage":
    """Open an Optuna storage: sqlite URL (default), JournalStorage (`journal:<path>` or workers > 1), or RDB with heartbeat.
    `spec`: tune.storage as given (None: the default), not storage_spec's result, so messages say where it was set."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend
    from sqlalchemy.exc import NoSuchModuleError

    # Where the value was set, for messages: the environment overrides params.yaml (a user looked in params.yaml for
    # an env value its message called `tune.storage`, and was told to `use null`).
    env = bool(os.environ.get(STORAGE_ENV))
    where = f"${STORAGE_ENV}" if env else "params.yaml tune.storage" if spec else "the default tune storage"
    spec = storage_spec(spec, root, workers)
    if spec.startswith("journal:"):
        path = _journal_path(spec, root)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path.resolve())))
    db = sqlite_file(spec, root)
    if db is not None:
        from ferops.tracking import tracking_uri

        ml = sqlite_file(tracking_uri(Path(root)), root)
        if ml is not None and ml.resolve() == db.resolve():
            own = db.with_name(DEFAULT_DB if db.name != DEFAULT_DB else f"optuna_studies{db.suffix}")
            raise ConfigError(f"{where} {spec} is the MLflow database; give Optuna its own file (e.g. sqlite:///{own}).")
        if workers > 1:
            raise ConfigError(f"{where} {spec}: sqlite is not for {workers} parallel workers; use `journal:<path>` "
                              "(one machine) or a PostgreSQL URL (several machines).")
        db.parent.mkdir(parents=True, exist_ok=True)
        # A relative path is the project root's file (as `ferops dashboard` finds it from any folder), not the cwd's.
        return sqlite_url(spec, root)  # no heartbeat on the single-process default; dead local workers are handled by worker id
    if "://" not in spec:
        url = "a SQLAlchemy URL such as postgresql://user:pw@host/db"
        raise ConfigError(f"{where} {spec!r}: use journal:<path>, or {url}; unset it for the default." if env else
                          f"{where} {spec!r}: use null (the default), journal:<path>, or {url}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        scheme = spec.split("://", 1)[0]  # for messages: the URL may hold a password
        try:
            # Heartbeat: trials of workers that died anywhere are failed after GRACE_S and re-queued.
            return RDBStorage(spec, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
        except ImportError:  # Optuna's "Failed to import DB access module", in a traceback; the URL may hold a password
            raise ConfigError(f"{where} {scheme}://…: the Python driver for this database is not "
                              "installed — for PostgreSQL: pip install -e '.[postgres]'.") from None
        except NoSuchModuleError:  # SQLAlchemy knows no such database: `postgres://` (Heroku's spelling) among them
            raise ConfigError(f"{where} {scheme}://…: SQLAlchemy knows no such database — "
                              "PostgreSQL is postgresql://user:pw@host/db.") from None


# --------------------------------------------------------------------------- worker ids, dead trials, claims


def _proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def worker_id() -> str:
    """host:pid:start-time of this process (start time guards against a reused pid)."""
    st = _proc_stat(os.getpid())
    return f"{socket.gethostname()}:{os.getpid()}:{st[19] if st else ''}"


def _alive(wid: str) -> bool:
    """Whether the worker that wrote `wid` still runs (processes on other hosts are assumed alive)."""
    host, pid, start = (wid.split(":") + ["", "", ""])[:3]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    st = _proc_stat(int(pid))
    if st is None:
        if Path("/proc").is_dir():
            return False
        try:  # no /proc (macOS): signal 0 only tells whether the pid exists
            os.kill(int(pid), 0)
            return True
        except OSError:
            return False
    return st[0] not in ("Z", "X") and (not start or st[19] == start)


def fail_dead_trials(study: "optuna.Study", track: bool = True) -> list[int]:
    """Fail RUNNING trials whose worker died (this host), re-queue their params (≤ MAX_RETRY times); returns their numbers."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    now = time.time()
    dead = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        wid = t.user_attrs.get("worker")
        started = t.datetime_start.timestamp() if t.datetime_start else now
        if (wid and not _alive(wid)) or (not wid and now - started > STALE_GRACE_S):
            dead.append(t.number)
    failed = []
    for trial_no in dead:
        try:
            study.tell(trial_no, state=TrialState.FAIL, skip_if_finished=True)
        except (ValueError, RuntimeError) as exc:  # another process got there first
            log.debug("trial %d: %s", trial_no, exc)
            continue
        frozen = next(t for t in study.get_trials(deepcopy=True) if t.number == trial_no)
        if frozen.state != TrialState.FAIL:
            continue
        failed.append(trial_no)
        log.warning("trial %d was left RUNNING by a dead worker (%s): marked FAIL, parameters re-queued",
                    trial_no, frozen.user_attrs.get("worker", "unknown"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, frozen)
        run_id = frozen.user_attrs.get("mlflow_run_id")
        if track and run_id:
            _close_mlflow_run(run_id)
    return failed


def _close_mlflow_run(run_id: str) -> None:
    """End the MLflow run of a trial whose process was killed (it would stay RUNNING forever)."""
    try:
        from mlflow import MlflowClient

        client = MlflowClient()
        client.set_tag(run_id, "state", "FAIL")
        client.set_tag(run_id, "killed", "true")
        client.set_terminated(run_id, status="KILLED")
    except Exception as exc:  # the tracking store may have been reset; the Optuna record is what matters
        log.debug("could not close MLflow run %s: %s", run_id, exc)


def counted(study: "optuna.Study", running: bool = False) -> int:
    """Trials that count toward n_trials: COMPLETE + PRUNED (+ RUNNING when `running`)."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED) + ((TrialState.RUNNING,) if running else ())
    return len(study.get_trials(deepcopy=False, states=states))


class _Claim:
    """A file lock held from 'is there room for another trial?' until that trial exists (exact n_trials across local workers)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: TextIO | None = None

    def acquire(self) -> "_Claim":
        self._fh = open(self.path, "a+")
        try:
            import fcntl

            fcntl.flock(self._fh, fcntl.LOCK_EX)
        except ImportError:  # no fcntl (Windows): claims are best effort
            pass
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the flock
            self._fh = None


def _claim_path(spec: str, name: str, root: Path) -> Path:
    """The claim lock of study `name`: beside a local storage file (`<file>.claim.lock`, one per file: a claim lasts
    milliseconds), so it goes with the project; in the temp folder for a server or in-memory storage. Never deleted:
    removing a flock file while another worker waits on it would let two workers hold 'the' lock at once.
    Not `<file>.lock`: Optuna's journal backend creates and deletes that name as its own lock."""
    local = _storage_file(spec, root)
    if local is not None:
        return local.with_name(local.name + ".claim.lock")
    key = hashlib.sha1(f"{spec}|{name}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"ferops-optuna-{key}.lock"


# --------------------------------------------------------------------------- objectives


def report_epoch(trial: "optuna.trial.Trial", epoch: int, value: float, **metrics: float) -> None:
    """Report one epoch's validation score to Optuna (+ MLflow when a run is active); raise TrialPruned when pruned."""
    import optuna

    trial.report(float(value), step=int(epoch))  # Optuna steps are 0-based epochs (as KerasPruningCallback's)
    # MLflow: `epoch_<key>` by 1-based step, as train_deep's curves, apart from the run's val_accuracy (best epoch)
    _log_metrics({f"epoch_{k}": float(v) for k, v in {OBJECTIVE: value, **metrics}.items()}, epoch + 1)
    if trial.should_prune():
        raise optuna.TrialPruned(f"pruned at epoch {epoch}")


def _log_metrics(metrics: dict[str, float], step: int) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=int(step))


def keras_trial(trial: "optuna.trial.Trial", cfg: dict[str, Any], train: FerData, val: FerData, *, seed: int,
                epochs: int) -> float:
    """Train `cfg` for ≤ epochs with Median pruning on val_accuracy; returns the best val accuracy (val split only)."""
    import keras
    from optuna_integration import KerasPruningCallback

    from ferops.training import MlflowEpochLogger, train_keras

    import mlflow

    # The epoch logger runs before the pruning callback so a pruned epoch is still logged.
    cbs = ([MlflowEpochLogger()] if mlflow.active_run() is not None else []) + [
        KerasPruningCallback(trial, "val_accuracy")]
    keras.backend.clear_session()  # trials must not pile up graphs/layers in one process
    # Exactly the study's `epochs` (tune.families.<f>.epochs), its schedule planned over them: the model's own epoch
    # count and time budget are for the full training run, and must not cut trials short.
    cfg = trial_config(cfg, epochs)
    try:
        res = train_keras(train, val, cfg, seed=seed, verbose=2, max_epochs=epochs, extra_callbacks=cbs)
    finally:
        keras.backend.clear_session()
        gc.collect()
    hist = [float(v) for v in (res.history or {}).get("val_accuracy", [])]
    return max(hist) if hist else float(res.val_accuracy)


# Tags a trial's nested MLflow run copies from the study's run (ferops.tracking.model_run / dataset_tags); its
# git_commit is the commit it runs at, which a resumed study's run names as git_commit_resumed.
INHERITED_TAGS = ("dataset", "data_sha256", "data_format", "dvc_stage")


def _objective(trial_fn: TrialFn, cfg_base: dict[str, Any], space: dict[str, Any], train: FerData, val: FerData, *,
               seed: int, epochs: int, track: bool, parent_run_id: str | None, experiment_id: str | None,
               claim: _Claim | None = None) -> Callable[["optuna.trial.Trial"], float]:
    """The Optuna objective: record the worker, sample, apply, run the trial function inside a nested MLflow run."""
    import optuna

    from ferops.tracking import git_commit

    commit = git_commit() if track else None

    def objective(trial: optuna.trial.Trial) -> float:
        trial.set_user_attr("worker", worker_id())
        if claim is not None:
            claim.release()  # the trial now exists (RUNNING): other workers may claim theirs
        sampled = suggest_params(trial, space)
        cfg = apply_params(cfg_base, sampled)
        if not track:
            return float(trial_fn(trial, cfg, train, val, seed=seed, epochs=epochs))
        import mlflow

        # The study run's data tags (dataset, data_sha256, ...), so a search such as `tags.dataset = 'synthetic'`
        # finds the trials too.
        parent_tags = mlflow.get_run(parent_run_id).data.tags if parent_run_id else {}
        inherited = {k: parent_tags[k] for k in INHERITED_TAGS if k in parent_tags} | {"git_commit": str(commit)}
        run = mlflow.start_run(run_name=f"trial-{trial.number}", nested=True, parent_run_id=parent_run_id,
                               experiment_id=experiment_id,
                               tags={**inherited, "optuna_trial_number": str(trial.number),
                                     "optuna_study": trial.study.study_name, "stage": "tune",
                                     "model": str(cfg.get("arch")), "state": "RUNNING"})
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        try:
            mlflow.log_params({k: str(v) for k, v in sampled.items()})
            value = float(trial_fn(trial, cfg, train, val, seed=seed, epochs=epochs))
        except optuna.TrialPruned:
            # Left alone MLflow would end a pruned trial FAILED: it is a deliberate stop.
            mlflow.set_tags({"state": "PRUNED", "pruned": "true"})
            mlflow.end_run(status="KILLED")
            raise
        except KeyboardInterrupt:
            mlflow.set_tag("state", "FAIL")
            mlflow.end_run(status="KILLED")
            raise
        except BaseException:
            mlflow.set_tag("state", "FAIL")
            mlflow.end_run(status="FAILED")
            raise
        # val_accuracy as a training run's: the best epoch's (the objective), so the runs table sorts them alike
        mlflow.log_metrics({"best_val_accuracy": value, OBJECTIVE: value})
        mlflow.set_tags({"state": "COMPLETE", "pruned": "false"})
        mlflow.end_run(status="FINISHED")
        return value

    return objective


# --------------------------------------------------------------------------- the study


def _sampler(seed: int, n_startup: int) -> "optuna.samplers.TPESampler":
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup)


def _trial_seed(seed: int, n: int) -> int:
    """The sampler seed of a study's trial `n`: both numbers mixed, as `seed + n` would give the study of seed 43 the
    draws of seed 42's, one trial behind."""
    import numpy as np

    return int(np.random.SeedSequence([seed, n]).generate_state(1)[0])


def _open_study(storage: Any, name: str, seed: int, pruner: Any, n_startup: int) -> "optuna.Study":
    """Create or load the study (each trial's sampler is seeded in `_optimize`)."""
    import optuna

    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=_sampler(seed, n_startup), pruner=pruner, load_if_exists=True)
    if study.metric_names is None:  # optuna-dashboard names the objective by it ("Objective 0" without)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE])
    return study


def _optimize(study: "optuna.Study", objective_kwargs: dict[str, Any], n_trials: int, timeout_s: float | None,
              claim_path: Path, track: bool, n_startup: int, bar: Any = None) -> None:
    """Run trials until COMPLETE+PRUNED (+ running elsewhere) reach n_trials, or the timeout; one claim per trial."""
    _quiet_expected_trial_errors()  # here, so spawned workers get it too
    t0 = time.monotonic()
    while timeout_s is None or time.monotonic() - t0 < timeout_s:
        claim = _Claim(claim_path).acquire()
        try:
            fail_dead_trials(study, track)
            if counted(study, running=True) >= n_trials:
                break
            # The sampler is seeded by the number the trial will get, read under the claim: no two trials share a
            # seed, also across processes — a resumed study, a second worker, or two experiments that opened one new
            # study at the same moment and, seeded once when they opened it, drew the same configurations.
            study.sampler = _sampler(_trial_seed(objective_kwargs["seed"], len(study.get_trials(deepcopy=False))),
                                     n_startup)
            objective = _objective(claim=claim, track=track, **objective_kwargs)
            study.optimize(objective, n_trials=1, gc_after_trial=True, show_progress_bar=False)
        finally:
            claim.release()
        if bar is not None:
            bar.n = counted(study)
            best = _best_value(study)
            bar.set_postfix_str(f"best val_acc {best:.4f}" if best is not None else "")
            bar.refresh()


def _best_value(study: "optuna.Study") -> float | None:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(cast(float, t.value) for t in done) if done else None  # a complete trial has its value


def _worker_main(spec: str, root: str, name: str, seed: int, pruner: Any, n_startup: int, workers: int,
                 n_trials: int, timeout_s: float | None, track: bool, tracking_uri: str | None,
                 objective_kwargs: dict[str, Any], errors: Any = None) -> None:
    """Entry of a spawned worker process: reopen storage and MLflow, then run trials of the shared study. A FerError
    (a bad params value) goes to `errors` for the parent to raise, as one worker would, not as a traceback."""
    from ferops.runner import Terminated

    # The parent stops its workers with SIGTERM (after Ctrl-C, SIGTERM or a failed start): the trial ends KILLED. The
    # first signal only: Ctrl-C reaches a worker too, and so does a SIGTERM sent to the whole group (`timeout`, Slurm),
    # and the parent's SIGTERM must not cut that worker's clean-up short (the parent kills it after a grace period).
    def stop_once(signum: int, frame: Any) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_once)
    try:
        _work(spec, root, name, seed, pruner, n_startup, workers, n_trials, timeout_s, track, tracking_uri,
              objective_kwargs)
    except FerError as exc:
        if errors is None:
            raise
        errors.put(exc)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt as exc:  # multiprocessing would print its stack; the stage says what stopped it
        raise SystemExit(143 if isinstance(exc, Terminated) else 130) from None


def _work(spec: str, root: str, name: str, seed: int, pruner: Any, n_startup: int, workers: int, n_trials: int,
          timeout_s: float | None, track: bool, tracking_uri: str | None, objective_kwargs: dict[str, Any]) -> None:
    from ferops.runner import setup_logging, start_tensorflow

    # Share the cores instead of every worker's TF using all of them (read when TF first loads, i.e. later).
    threads = str(max(1, (os.cpu_count() or 1) // max(1, workers)))
    for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, threads)
    setup_logging()
    start_tensorflow()  # before a trial imports it: TF's C++ start-up lines filtered, as in the stage's own process
    if track and tracking_uri:
        import mlflow

        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
    storage = make_storage(spec, Path(root), workers=2 if spec.startswith("journal:") else 1)
    study = _open_study(storage, name, seed, pruner, n_startup)
    _optimize(study, objective_kwargs, n_trials, timeout_s, _claim_path(spec, name, Path(root)), track, n_startup)


def _spawn_workers(workers: int, bar: Any, study: "optuna.Study", **kw: Any) -> None:
    """Run `workers` spawned processes on the shared study and wait for them, showing progress."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # fork after TF/threads is unsafe
    errors = ctx.SimpleQueue()
    procs = [ctx.Process(target=_worker_main, kwargs={**kw, "workers": workers, "errors": errors},
                         name=f"tune-worker-{i + 1}") for i in range(workers)]
    polled = True
    try:
        for p in procs:  # inside the try: a failed start stops the workers already started
            p.start()
        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            try:
                n = counted(study)
            except Exception as exc:  # the bar's count only: a busy storage must not stop the workers' trials
                if polled:
                    log.warning("tuning progress not shown (%s); the workers go on", exc)
                polled = False
                continue
            if bar is not None and n != bar.n:
                bar.n = n
                bar.refresh()
    except BaseException:
        # Ctrl-C, SIGTERM or a failed start: stop the workers, or the join below waits out their whole study (hours)
        # before the error shows, with no one watching them. Each ends its trial first; one that does not is killed.
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            if p.pid is not None:
                p.join(WORKER_GRACE_S)
                if p.is_alive():
                    p.kill()
        raise
    finally:
        for p in procs:
            if p.pid is not None:  # started (join() refuses a process that never was)
                p.join()
    if not errors.empty():  # e.g. a sampled value check_config refuses: the same one line as with one worker
        raise errors.get()
    bad = [f"{p.name} (exit {p.exitcode})" for p in procs if p.exitcode != 0]
    if bad:
        raise FerError(f"tuning workers failed: {', '.join(bad)}. Finished trials are kept in the study; rerun the "
                       "stage to resume.")


@contextlib.contextmanager
def _parent_run(study: "optuna.Study", family: str, params: dict[str, Any], tags: dict[str, str]) -> Iterator[Any]:
    """The study's MLflow parent run: reopened when the study already has one (resume), else created."""
    from ferops.tracking import RUN_ID_FILE, find_run, git_commit, model_run

    with tempfile.TemporaryDirectory() as tmp:
        run_id, started_at = study.user_attrs.get("mlflow_parent_run_id"), None
        if run_id:
            old = find_run(run_id)  # None: another tracking store, or one reset since
            if old is not None and old.info.lifecycle_stage == "active":
                Path(tmp, RUN_ID_FILE).write_text(run_id + "\n")
                _release_project_run(run_id, study.study_name)
                started_at = old.data.tags.get("git_commit")
        # A reopened study run keeps the commit its study started at; git_commit_resumed names this session's (each
        # trial's run names its own). model_run tags a new run with the current commit.
        resumed = {"git_commit": started_at, "git_commit_resumed": git_commit()} if started_at else {}
        all_tags = {**tags, **resumed, "optuna_study": study.study_name}
        with model_run(stage="tune", model=family, params=params, tags=all_tags, run_dir=Path(tmp)) as run:
            study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
            yield run


def _release_project_run(run_id: str, name: str) -> None:
    """Under `mlflow run`, MLFLOW_RUN_ID names the project's run, and MLflow clears it only when a start_run takes it.
    Reopening the study's own run by id leaves it set, and the first trial's nested start_run took the project run
    (a parentless trial; in every spawned worker too): clear it, and leave the project run a note where the study is."""
    from mlflow.environment_variables import MLFLOW_RUN_ID

    project = os.environ.pop(MLFLOW_RUN_ID.name, None)
    if project and project != run_id:
        from mlflow import MlflowClient

        MlflowClient().set_tag(project, "mlflow.note.content",
                               f"Resumed Optuna study {name}: its run is {run_id}, with a nested run per trial.")


def study_plots(study: "optuna.Study", out_dir: Path) -> list[Path]:
    """Optuna's matplotlib plots as PNGs: optimization history, intermediate values, importances (≥2 complete), parallel coordinate."""
    import optuna
    from optuna.trial import TrialState

    from ferops.plots import pyplot

    plt = pyplot()
    vis = optuna.visualization.matplotlib
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    plots: list[tuple[str, Callable[[], Any]]] = [
        ("optimization_history", lambda: vis.plot_optimization_history(study, target_name=OBJECTIVE)),
        ("intermediate_values", lambda: vis.plot_intermediate_values(study))]
    if n_complete >= 2:
        plots += [("param_importances", lambda: vis.plot_param_importances(study, target_name=OBJECTIVE)),
                  ("parallel_coordinate", lambda: vis.plot_parallel_coordinate(study, target_name=OBJECTIVE))]
    paths = []
    for name, make in plots:
        if n_complete == 0:
            break
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)  # e.g. "importances will be equal" on tiny studies
                ax = make()
            ax = ax.flat[0] if hasattr(ax, "flat") else ax
            fig = legible(name, ax, study.study_name, n_complete)
            path = out_dir / f"{name}.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            paths.append(path)
        except Exception as exc:  # e.g. importances of a parameter that never varied
            log.warning("plot %s skipped: %s", name, exc)
        finally:
            plt.close("all")
    return paths


def legible(name: str, ax: Any, study_name: str, n_complete: int) -> Any:
    """Optuna's matplotlib figure `name`, made readable: the study in the title, whole trial numbers and epochs on
    the axes (Optuna's steps are 0-based epochs), a colour map whose worst trials are not white on the grey
    background, and room for the parallel coordinate plot's axes (their tick labels overlapped). Returns the figure."""
    from matplotlib.ticker import MaxNLocator

    fig = ax.figure
    title = " ".join(ax.get_title(loc=loc) for loc in ("left", "center", "right") if ax.get_title(loc=loc))
    for loc in ("left", "right"):  # Optuna puts some titles left: one centred title, not two overlapping
        ax.set_title("", loc=loc)
    if name == "param_importances":
        title += f" (from {n_complete} complete trials{': a rough guide' if n_complete < 10 else ''})"
    ax.set_title(f"{study_name}: {title}", fontsize=10)
    if name in ("optimization_history", "intermediate_values"):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if name == "intermediate_values":
        ax.set_xlabel("epoch − 1 (Optuna's step: the first epoch is 0)")
        ax.set_ylabel(f"{OBJECTIVE} (pruned trials stop early)")
    if name == "parallel_coordinate":
        for collection in ax.collections:
            if collection.get_array() is not None:  # the trials' lines, coloured by objective
                collection.set_cmap("viridis")
        n_axes = len(ax.get_xticks())
        fig.set_size_inches(max(6.4, 1.35 * n_axes + 2.5), 5.2)
    return fig


def study_summary(study: "optuna.Study", family: str, n_trials: int, storage: str) -> dict[str, Any]:
    """The tuning report: best params/value (validation accuracy) and trial counts by state. Nothing run-specific
    (no wall time): a re-run that finds the study complete writes the same bytes, so nothing downstream
    (tune_select, and train_deep when it uses the tuned params) re-runs for it."""
    from optuna.trial import TrialState

    by = {s: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    best = study.best_trial if by[TrialState.COMPLETE] else None
    return {
        "family": family, "study_name": study.study_name, "storage": redact(storage),
        "best_params": dict(best.params) if best else {}, "best_value": float(cast(float, best.value)) if best else None,
        "best_trial": best.number if best else None, "metric": OBJECTIVE,
        "n_trials": n_trials, "n_complete": by[TrialState.COMPLETE], "n_pruned": by[TrialState.PRUNED],
        "n_failed": by[TrialState.FAIL], "n_running": by[TrialState.RUNNING],
        "mlflow_run_id": study.user_attrs.get("mlflow_parent_run_id"),
    }


def _log_summary(summary: dict[str, Any], figures: list[Path]) -> None:
    """Best params (`best_<p>` tags), best value, trial counts, plots."""
    import mlflow

    # Tags, not params: a resumed study can find a better trial, and a param keeps its first value (with a tag of the
    # same name beside it, the runs table's param column showed the old best). The best trial's own nested run holds
    # its values as params, for MLflow's compare plots.
    mlflow.set_tags({f"best_{k}": str(v) for k, v in summary["best_params"].items()})
    if summary["best_value"] is not None:
        mlflow.log_metric("best_val_accuracy", summary["best_value"])
    mlflow.log_metrics({k: summary[k] for k in ("n_complete", "n_pruned", "n_failed")})
    mlflow.set_tag("best_trial", str(summary["best_trial"]))
    for p in figures:
        mlflow.log_artifact(str(p), artifact_path="optuna")
    mlflow.log_dict(summary, "tuning.json")


def run_study(family: str, cfg_base: dict[str, Any], space: dict[str, Any], train: FerData, val: FerData, *,
              storage: "str | None | optuna.storages.BaseStorage", study_name: str, n_trials: int,
              timeout_s: float | None = None, seed: int = 42, epochs: int = 6, workers: int = 1,
              pruner: Any = None, n_startup_trials: int | None = None, trial_fn: TrialFn | None = None,
              track: bool = True, mlflow_tags: dict[str, str] | None = None, figures_dir: Path | None = None,
              root: Path | None = None, progress: bool = True) -> "optuna.Study":
    """Run (or resume) a maximise-val-accuracy study until n_trials COMPLETE+PRUNED trials; returns the study.

    `storage`: a spec for `make_storage` (None/sqlite URL/journal:<path>/RDB URL) or an Optuna storage
    object (one worker only). `trial_fn` defaults to `keras_trial`; a cheap one can test the machinery.
    With `track`, MLflow must already be initialised (`ferops.tracking.init_tracking`).
    """
    from tqdm.auto import tqdm

    root = Path(root or repo_root())
    if workers < 1:
        raise ConfigError(f"tune.workers={workers}: must be ≥ 1.")
    if isinstance(storage, (str, type(None))):
        spec = storage_spec(storage, root, workers)
        store = make_storage(storage, root, workers)  # the setting as given: its messages say where it was set
        adopt = not storage and not os.environ.get(STORAGE_ENV)  # a default file: the study may be in the other one
    elif workers > 1:
        raise ConfigError("parallel workers need the storage as a spec string (journal:<path> or a URL), not an object.")
    else:
        spec, store, adopt = f"object:{id(storage)}", storage, False
    pruner = pruner if pruner is not None else make_pruner(None, epochs)
    n_startup = n_startup_trials or min(10, max(3, n_trials // 3))
    claim_path = _claim_path(spec, study_name, root)
    # Opened under the claim: two processes creating a new sqlite file's tables at once fail (`table ... already
    # exists`, a unique constraint), as two queued experiments (`dvc queue start -j 2`) on a fresh project would.
    claim = _Claim(claim_path).acquire()
    try:
        if adopt:
            adopt_default_study(store, study_name, root, workers)
        study = _open_study(store, study_name, seed, pruner, n_startup)
        fail_dead_trials(study, track)
    finally:
        claim.release()
    for k, v in {"family": family, "epochs": epochs, "n_trials": n_trials, "train_rows": len(train), "val_rows": len(val)}.items():
        study.set_user_attr(k, v)
    # The study's run is reopened when the study resumes, and MLflow params are immutable: params hold only what the
    # study *is* (its name's fingerprint: space, epochs, seed, data, the trials' config — `base` as trial_config, not
    # the full run's epochs/time budget, which can change without a new study). What a session may change — n_trials,
    # timeout, workers, hence the default storage file — goes in tags, set anew on each session, so the UI shows
    # the budget the study now runs under rather than the first session's (a param would keep that one forever).
    params = {"study_name": study_name, "epochs": epochs, "seed": seed, "train_rows": len(train),
              "val_rows": len(val), "space": space, "base": trial_config(cfg_base, epochs)}
    session = {"n_trials": n_trials, "timeout_s": timeout_s, "workers": workers, "storage": redact(spec)}
    experiment_id = tracking = None
    ctx: contextlib.AbstractContextManager[Any]
    if track:
        import mlflow

        tracking = mlflow.get_tracking_uri()
        ctx = _parent_run(study, family, params, {**(mlflow_tags or {}), **{k: str(v) for k, v in session.items()}})
    else:
        ctx = contextlib.nullcontext()
    with ctx as parent:
        if parent is not None:
            experiment_id = parent.info.experiment_id
        okw = {"trial_fn": trial_fn or keras_trial, "cfg_base": cfg_base, "space": space, "train": train, "val": val,
               "seed": seed, "epochs": epochs, "parent_run_id": parent.info.run_id if parent else None,
               "experiment_id": experiment_id}
        done = counted(study)
        log.info("study %s: %d/%d trials counted so far, storage %s", study_name, done, n_trials, redact(spec))
        bar = tqdm(total=n_trials, initial=done, desc=f"tune {family}", unit="trial", disable=not progress)
        try:
            if workers == 1:
                _optimize(study, okw, n_trials, timeout_s, claim_path, track, n_startup, bar)
            else:
                _spawn_workers(workers, bar, study, spec=spec, root=str(root), name=study_name, seed=seed, pruner=pruner,
                               n_startup=n_startup, n_trials=n_trials, timeout_s=timeout_s, track=track,
                               tracking_uri=tracking, objective_kwargs=okw)
        finally:
            bar.close()
        figures = study_plots(study, figures_dir) if figures_dir is not None else []
        summary = study_summary(study, family, n_trials, spec)
        if track:
            _log_summary(summary, figures)
    return study
