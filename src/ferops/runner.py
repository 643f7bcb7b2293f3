"""Shared entry wrapper for stage scripts and the CLI: logging set-up and human error output."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Mapping

from ferops.errors import FerError

log = logging.getLogger("ferops")


def setup_logging(level: str | None = None) -> None:
    """One readable log format for every stage (FEROPS_LOG_LEVEL overrides)."""
    logging.basicConfig(
        level=(level or os.environ.get("FEROPS_LOG_LEVEL", "INFO")).upper(),
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # Quieten chatty libraries so our own messages stay visible.
    for noisy in ("great_expectations", "mlflow", "alembic", "urllib3", "matplotlib", "absl", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    tf_environment()


def tf_environment() -> None:
    """TensorFlow settings that must be in place before its first import (a user's own values win).

    oneDNN: TF turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI/BF16 or AMX; on
    AVX2 CPUs (e.g. AMD EPYC Zen 3) it falls back to Eigen, and training the ResNet runs 1.5-2x slower
    (benchmarks/RESULTS.md, "oneDNN").
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def cap_onednn_isa(cfg: Mapping[str, Any]) -> None:
    """A model config's `onednn_max_isa` (e.g. avx2) caps oneDNN's CPU kernels for this process (a user's own
    ONEDNN_MAX_CPU_ISA wins). oneDNN reads it once, at its first kernel: call this before TensorFlow runs one.

    Why: TF 2.21's AVX-512 oneDNN kernels corrupt the heap training mini_xception (params.yaml)."""
    if cfg.get("onednn_max_isa"):
        os.environ.setdefault("ONEDNN_MAX_CPU_ISA", str(cfg["onednn_max_isa"]).upper())


def run(main: Callable[[], object]) -> None:
    """Run a stage's main(); expected failures print `error: …` and exit non-zero, no traceback."""
    setup_logging()
    try:
        main()
    except FerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
