"""Exceptions for expected failures: the stage runner prints them for people, without a traceback."""


class FerError(Exception):
    """An expected failure with a message a user can act on (what, where, the fix)."""

    exit_code: int = 2


class DataError(FerError):
    """Bad or missing input data."""


class ConfigError(FerError):
    """A bad value in params.yaml or on the command line."""


class BadRowsError(DataError):
    """Bad rows in `on_bad_rows: fail` mode; carries every rejected row so the caller can write the quarantine file."""

    def __init__(self, message: str, rejected: list) -> None:
        super().__init__(message)
        self.rejected = rejected
