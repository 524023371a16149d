"""srt_hf exceptions. Every message says what went wrong, where, and what to change."""

from __future__ import annotations


class SrtHfError(Exception):
    """Base class of all srt_hf errors."""


class ModelUnavailableError(SrtHfError):
    """A model (student or teacher) cannot be loaded; the message says what to install or set."""


class InputError(SrtHfError):
    """Bad input data. Names the row, the column and the fix."""

    def __init__(self, message: str, *, row: int | None = None, column: str | None = None, fix: str = ""):
        where = []
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(f"{prefix}{message}" + (f". Fix: {fix}" if fix else ""))
        self.row, self.column, self.fix = row, column, fix


class ConfigError(SrtHfError):
    """An invalid setting. Names the setting to change."""


class TeacherError(SrtHfError):
    """The teacher cannot serve this run (refused credentials, unknown model or URL, a dead server).

    Finished work is kept: fix the setting the message names and rerun the same command to resume.
    """


class OutputError(SrtHfError):
    """An output cannot be written (full disk, read-only folder, no permission). Names the path and the fix."""

    def __init__(self, message: str, *, fix: str = ""):
        super().__init__(message + (f". Fix: {fix}" if fix else ""))
        self.fix = fix


class LockedError(SrtHfError):
    """Another run holds the output this run would write; the message names its PID and how to proceed."""


class BatchPending(SrtHfError):
    """Not a failure: the run stopped to wait for the replies of a teacher batch (``--teacher-batch``).

    The message says which file holds the requests, how to run it, and that the same command resumes; the CLI
    exits with :attr:`exit_code`. Everything finished so far is kept.
    """

    exit_code = 3

    def __init__(self, message: str, *, files: list | None = None):
        super().__init__(message)
        self.files = list(files or [])
