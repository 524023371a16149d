"""Writes that a crash cannot half-finish, and one clear error when the disk refuses a write.

    with atomic_path(out) as tmp:         # write tmp; on success it is fsynced and renamed onto out
        pq.write_table(table, tmp)
    write_text_atomic(run / "run.json", text)
    with disk_errors(out):                # OSError 28 / 30 / 13 ... -> OutputError naming ``out``
        ...

A power cut at any moment leaves either the old file or the new one: the new bytes reach the disk
(``fsync``) before the rename, and the rename reaches it (``fsync`` of the folder) before we go on. A
failed write removes its temporary file, so earlier results stay as they were.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

from .errors import OutputError

#: errno values that mean "this place cannot be written", with the fix to suggest.
_DISK_FIXES = {
    errno.ENOSPC: "free disk space (or choose --out on another disk), then rerun the same command to resume",
    errno.EROFS: "choose --out on a writable file system",
    errno.EACCES: "choose --out in a folder you may write to (or change its permissions)",
    errno.EPERM: "choose --out in a folder you may write to (or change its permissions)",
    errno.EDQUOT: "free space within your disk quota (or choose --out elsewhere), then rerun to resume",
    errno.EFBIG: "choose --out on a file system that allows larger files",
}
# pyarrow reports some of these without an errno, only in its message
_MESSAGES = {"no space left": errno.ENOSPC, "read-only file system": errno.EROFS, "permission denied": errno.EACCES,
             "disk quota exceeded": errno.EDQUOT}


def disk_errno(err: BaseException) -> int | None:
    """The errno of a write refused by the file system (full, read-only, no permission), else None."""
    if not isinstance(err, OSError):
        return None
    if err.errno in _DISK_FIXES:
        return err.errno
    text = str(err).lower()
    return next((code for needle, code in _MESSAGES.items() if needle in text), None)


def output_error(path: str | os.PathLike, err: OSError) -> OutputError:
    """An :class:`OutputError` that names ``path``, what the file system said and the fix."""
    code = disk_errno(err)
    what = os.strerror(code) if code is not None else (err.strerror or str(err))
    fix = _DISK_FIXES.get(code, "check that the output folder can be written")
    return OutputError(f"cannot write {path}: {what}; finished results are kept", fix=fix)


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a refused write (full disk, read-only folder, no permission) into an OutputError naming ``path``."""
    try:
        yield
    except OSError as err:
        if disk_errno(err) is None:
            raise
        raise output_error(path, err) from None


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``; once the block succeeds it is fsynced and renamed onto ``path``.

    On any error the temporary file is removed and ``path`` is untouched; a refused write becomes an
    OutputError naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with disk_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            fsync_file(tmp)
            os.replace(tmp, path)
            fsync_folder(path.parent)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically and durably."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
