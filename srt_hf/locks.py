"""One writer per output: an exclusive lock that a run holds on its output for as long as it runs.

    with output_lock(Path("runs/demo-srt"), folder=True, command="srt-hf recycle"):
        ...   # a second run into runs/demo-srt stops at once, naming this process

The lock is a small file: ``.srt-hf.lock`` inside a folder output (a run folder, a training output_dir),
``.<name>.lock`` beside a file output (``srt-hf score --out x.parquet``, whose ``x.parquet.parts`` it
covers too). It is held with ``flock``, which the kernel releases when its holder exits, even under
SIGKILL; so a lock file left by a dead process is simply taken over, with a notice. Where ``flock`` is
not available the file itself is the lock and the PID it records decides whether its holder still runs.
The file records the holder's PID, host, start time and command, so a refused run can say who holds the
output and how to proceed: wait, then what the caller names (``then``; by default a rerun, which resumes), or
write to another output (``elsewhere``: the option that names one; None where the locked folder is the command's
input, as for ``srt-hf push``). Under ``accelerate launch`` only the main process (RANK 0) locks.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any, Iterator

from .durable import disk_errno, output_error
from .errors import LockedError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_NAME = ".srt-hf.lock"


def lock_path(output: Path, *, folder: bool) -> Path:
    """Where the lock of ``output`` lives (see the module docstring)."""
    output = Path(output)
    return output / LOCK_NAME if folder else output.with_name(f".{output.name}.lock")


def is_main_process() -> bool:
    """False in the other processes of an ``accelerate launch`` / ``torchrun`` group (they share the main one's lock)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, *, folder: bool, command: str = "srt-hf",
                then: str = "rerun this command, which resumes", elsewhere: str | None = "--out") -> Iterator[Path | None]:
    """Hold the exclusive lock of ``output`` for the block; raise :class:`LockedError` at once if another run holds it.

    The refusal's fix reads "wait for that run to finish ... and ``then``; or write somewhere else with another
    ``elsewhere``" (no second half when ``elsewhere`` is None). Yields the lock file (None in a non-main process,
    which does not lock).
    """
    if not is_main_process():
        yield None
        return
    output = Path(output)
    path = lock_path(output, folder=folder)
    try:
        handle = _acquire(path, output, command, fix=(then, elsewhere))
    except OSError as err:
        if disk_errno(err) is None:
            raise
        raise output_error(output, err) from None
    try:
        yield path
    finally:
        _release(path, handle)


def _holder_info(command: str) -> dict[str, Any]:
    return {
        "pid": os.getpid(), "host": socket.gethostname(),
        "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command, "argv": " ".join(sys.argv),
    }


def _acquire(path: Path, output: Path, command: str, fix: tuple[str, str | None]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        return _acquire_by_pid(path, output, command, fix)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise _refusal(output, holder, fix) from None
        except OSError:  # a file system without flock (some network mounts): fall back to the PID file
            os.close(fd)
            return _acquire_by_pid(path, output, command, fix)
        # The previous holder removes the file when it finishes: make sure we locked the file now at ``path``.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    _take_over(fd, path, command)
    return fd


def _take_over(fd: int, path: Path, command: str) -> None:
    previous = _read(fd)
    if previous.get("pid") and previous.get("pid") != os.getpid():
        logger.warning("srt_hf: taking over the lock %s left by PID %s (%s), which no longer runs",
                       path, previous.get("pid"), previous.get("command") or "?")
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(_holder_info(command)).encode())


def _acquire_by_pid(path: Path, output: Path, command: str, fix: tuple[str, str | None]) -> int:
    """The lock without flock: create the file exclusively; a file naming a dead PID on this host is stale."""
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            if _alive(holder):
                raise _refusal(output, holder, fix) from None
            logger.warning("srt_hf: taking over the lock %s left by PID %s, which no longer runs", path, holder.get("pid", "?"))
            path.unlink(missing_ok=True)
            continue
        os.write(fd, json.dumps(_holder_info(command)).encode())
        return fd
    raise LockedError(f"{output} is being locked and unlocked by other runs right now. Fix: run one at a time")


def _alive(holder: dict[str, Any]) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    if holder.get("host") not in (None, socket.gethostname()):
        return True  # another machine's process: assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(fd: int) -> dict[str, Any]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 65536)
        return json.loads(data) if data.strip() else {}
    except (OSError, ValueError):
        return {}


def _refusal(output: Path, holder: dict[str, Any], fix: tuple[str, str | None]) -> LockedError:
    pid = holder.get("pid", "?")
    who = f"PID {pid}" + (f" on {holder['host']}" if holder.get("host") else "")
    since = f" since {holder['started']}" if holder.get("started") else ""
    argv = str(holder.get("argv") or "")
    command = argv if len(argv.split()) > 1 else holder.get("command")  # `python -c` leaves only "-c" in argv
    what = f" ({command})" if command else ""
    then, elsewhere = fix
    return LockedError(
        f"{output} is in use by another run: {who}{since}{what}. Two runs into one output would mix their results. "
        f"Fix: wait for that run to finish (or stop it: kill {pid}) and {then}"
        + (f"; or write somewhere else with another {elsewhere}" if elsewhere else "")
    )


def _release(path: Path, fd: int) -> None:
    # Remove the file while still holding it, so that nobody locks a file that is about to disappear.
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        os.close(fd)
