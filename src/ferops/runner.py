"""Shared entry wrapper for stage scripts and the CLI: logging set-up and human error output."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import threading
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ferops.errors import ConfigError, FerError

log = logging.getLogger("ferops")


def setup_logging(level: str | None = None) -> None:
    """One readable log format for every stage (FEROPS_LOG_LEVEL overrides; an unknown level is INFO, said once)."""
    asked = (level or os.environ.get("FEROPS_LOG_LEVEL") or "INFO").upper()
    known = isinstance(logging.getLevelName(asked), int)  # logging.basicConfig raises a ValueError on another name
    logging.basicConfig(
        level=asked if known else "INFO",
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # Quieten chatty libraries so our own messages stay visible.
    for noisy in ("great_expectations", "mlflow", "alembic", "urllib3", "matplotlib", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    tf_log = logging.getLogger("tensorflow")
    if not any(isinstance(f, _RetracingFilter) for f in tf_log.filters):
        tf_log.addFilter(_RetracingFilter())
    tf_environment()
    if not known:
        logging.getLogger("ferops").warning("FEROPS_LOG_LEVEL=%s is not a log level (DEBUG, INFO, WARNING, ERROR): "
                                            "using INFO", asked)


class _RetracingFilter(logging.Filter):
    """Drop Keras' "N out of the last M calls … triggered tf.function retracing" warning: evaluate and predict
    call one model on batches of several shapes (a last partial batch, the 44-px TTA views) on purpose, and each
    new shape traces once; the hint is for someone writing the loop, not for a user reading the stage's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def tf_environment() -> None:
    """TensorFlow settings that must be in place before its first import (a user's own values win).

    oneDNN: TF turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI/BF16 or AMX; on
    AVX2 CPUs (e.g. AMD EPYC Zen 3) it falls back to Eigen, and training the ResNet runs 1.5-2x slower
    (benchmarks/RESULTS.md, "oneDNN").
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


# TensorFlow's C++ start-up chatter: absl writes it straight to file descriptor 2 before logging is set up, so
# TF_CPP_MIN_LOG_LEVEL does not silence it (TF 2.21). INFO lines, the absl banner, and the CUDA probe's failure
# on machines without a GPU; any other warning or error still comes through.
TF_STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:.]+ +\d+ \S+:\d+\] .*"
    r"|E\d{4} [\d:.]+ +\d+ cuda_(platform|executor|driver)\.cc:\d+\] failed call to cuInit.*)$")


@contextlib.contextmanager
def filtered_native_stderr(noise: re.Pattern[str] = TF_STARTUP_NOISE) -> Iterator[None]:
    """Route file descriptor 2 (C/C++ writes included) to a temporary file while the block runs, then write
    back every line that does not match `noise`. Python-level output inside the block is replayed too."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines = tmp.read().decode("utf-8", errors="replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not noise.match(line.rstrip("\r\n")))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def start_tensorflow() -> None:
    """Import TensorFlow and probe its devices with the C++ start-up chatter filtered out (`tf_environment`
    first). A no-op once TensorFlow is imported, when TF_CPP_MIN_LOG_LEVEL is 0 (the user wants its logs), and
    when Keras runs on another backend or TensorFlow is not installed (the lent GPU machines: JAX only)."""
    import importlib.util

    tf_environment()
    if ("tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") == "0"
            or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow"
            or importlib.util.find_spec("tensorflow") is None):
        return
    with filtered_native_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe logs here


def cap_onednn_isa(cfg: Mapping[str, Any]) -> None:
    """A model config's `onednn_max_isa` (e.g. avx2) caps oneDNN's CPU kernels for this process (a user's own
    ONEDNN_MAX_CPU_ISA wins). oneDNN reads it once, at its first kernel: call this before TensorFlow runs one.

    Why: TF 2.21's AVX-512 oneDNN kernels corrupt the heap training mini_xception (params.yaml)."""
    if cfg.get("onednn_max_isa"):
        os.environ.setdefault("ONEDNN_MAX_CPU_ISA", str(cfg["onednn_max_isa"]).upper())


def ensure_port_free(host: str, port: int, what: str) -> None:
    """Fail in one line when `what` (a server) could not listen on host:port, before it starts: uvicorn and
    optuna-dashboard otherwise end in a 30-line traceback after loading everything (e.g. `make serve` twice)."""
    import socket

    if not 0 < int(port) < 65536:
        raise ConfigError(f"--port {port}: not a port number (1-65535).")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: {exc.strerror} (an address of this machine, e.g. 127.0.0.1).") from None
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: a closed socket's TIME_WAIT is no clash
        try:
            sock.bind(addr)
        except OSError as exc:
            raise ConfigError(f"{what} cannot listen on {host}:{port}: {exc.strerror} — is it already running? "
                              f"Stop it, or pick another port with --port.") from None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interrupt."""


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


def run(main: Callable[[], object]) -> None:
    """Run a stage's main(); expected failures print `error: …` and exit non-zero, no traceback.

    SIGTERM (`kill`, `timeout`, a batch scheduler's time limit, `docker stop`) stops it as Ctrl-C does: Python's
    default dies on the spot, which left the stage's MLflow runs RUNNING for ever and Optuna's trial RUNNING until a
    later session failed it; as an interrupt, they end (FAILED, a trial KILLED) on the way out."""
    _import_the_copys_code()
    setup_logging()
    main_thread = threading.current_thread() is threading.main_thread()  # Python allows handlers there only
    before = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    project_run = os.environ.get("MLFLOW_RUN_ID")  # set by `mlflow run`; MLflow deletes it once it reads it
    try:
        _main(main, project_run)
    finally:
        if main_thread:  # a caller's own handler (a test process, a library user) is theirs again
            signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)


def _main(main: Callable[[], object], project_run: str | None) -> None:
    try:
        main()
    except FerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        term = isinstance(exc, Terminated)
        print("terminated (SIGTERM)" if term else "interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM if term else 130)
    except BrokenPipeError:  # `ferops registry | head`: the reader left; nothing more to say, no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit must not fail too
        sys.exit(0)
    except Exception as exc:
        if not (project_run and _outside_project_experiment(exc)):
            raise
        print(f"error: this stage runs inside MLflow Project run {project_run} of another experiment "
              "(MLflow's Default, unless named); ferops logs into experiment `ferops` — add `--experiment-name ferops` "
              "to `mlflow run` (see MLproject).", file=sys.stderr)
        sys.exit(2)


COPY_CODE_ENV = "FEROPS_COPY_CODE"  # set on the re-started stage: it restarts once at most


def _import_the_copys_code() -> None:
    """`dvc exp run --temp` / `dvc queue` run a stage in DVC's copy of the project (<repo>/.dvc/tmp/exps/…/), but the
    editable install puts the *workspace's* src/ on every interpreter's path: the stage ran the workspace's code as
    it was when the stage started, not the code the experiment was queued with (and which its dvc.lock hashes). A
    stage script there restarts itself once with the copy's src/ first on the path. The check itself is the
    workspace's code (it ran first): a workspace on code older than this does not restart. POSIX only: elsewhere
    exec starts a new process, and DVC would see the stage end at once."""
    here = Path.cwd().resolve()
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if (os.name != "posix" or os.environ.get(COPY_CODE_ENV) or script is None
            or not script.is_relative_to(here / "stages")):
        return  # before the imports below: the CLI and library callers pay nothing for this
    import ferops
    from ferops.config import store_root

    src = (here / "src").resolve()
    if (store_root(here) == here or not (src / "ferops" / "__init__.py").is_file()
            or Path(ferops.__file__).resolve().is_relative_to(src)):
        return
    path = os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH")) if p)
    sys.stdout.flush()
    sys.stderr.flush()
    # orig_argv: the interpreter's own options (-u, -W …) too, not only the script's arguments
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "PYTHONPATH": path,
                                                                     COPY_CODE_ENV: "1"})


def _outside_project_experiment(exc: Exception) -> bool:
    """`mlflow run` without `--experiment-name ferops`: MLflow refuses the stage's run in the `ferops` experiment
    (the project run it must join is elsewhere). MLflow has no exception type for it; its message is stable."""
    return type(exc).__name__ == "MlflowException" and "does not match environment run ID" in str(exc)
