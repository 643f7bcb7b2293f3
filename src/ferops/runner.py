"""Shared entry wrapper for stage scripts and the CLI: logging set-up and human error output."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
