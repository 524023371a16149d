"""Persistent cache of teacher completions: one SQLite file, safe for many threads and processes.

The key is the SHA-256 of (teacher scope, messages, generation settings), so changing the model, a
prompt or a setting asks again while a rerun asks nothing it already has. Only replies are stored
(successful ones, and those cut off at the token limit, which stay ``truncated``), never failures, each
committed the moment it arrives: a run killed at any point and
restarted repeats no finished request. WAL mode lets readers and one writer at a time work
together; writers from other processes wait (``busy_timeout``) instead of failing. Each commit is
atomic: a crash, even a power cut, leaves the cache as it was before or after a reply, never half-written.
A cache that cannot be read (a damaged file) is moved aside with a notice and a new one is started: its
entries are only a speed-up, so the replies are asked again. A run calls :meth:`ResponseCache.close` when it ends:
the last connection to close folds the WAL into ``cache.sqlite`` and removes ``cache.sqlite-wal`` / ``-shm``
(a killed run leaves them, and SQLite reads them back on the next open).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)
_CHECKED: set[str] = set()  # caches whose integrity this process has checked

_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    created REAL NOT NULL,
    meta TEXT NOT NULL
)
"""


def cache_key(scope: dict[str, Any], messages: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """SHA-256 of what determines a completion: the teacher scope, the messages and the settings."""
    payload = json.dumps({"scope": scope, "messages": messages, "settings": settings}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


class _Connection(sqlite3.Connection):
    """A connection that remembers the process that opened it and can be held by a weak reference."""

    pid: int


class ResponseCache:
    """Completion cache at ``path``. Picklable (only the path travels); connections open per thread."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._local = threading.local()
        # Every connection this cache opened and that is still alive, in any thread, so close() reaches them all.
        # Weak: a thread's connection still closes when its thread ends.
        self._opened: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._generation = 0  # raised by close(): a thread holding an older connection opens a new one

    def __reduce__(self):
        return (ResponseCache, (str(self.path),))

    def _conn(self) -> sqlite3.Connection:
        # A connection must not cross threads or a fork: keep one per thread, reopened in a child process.
        generation, conn = getattr(self._local, "conn", (None, None))
        if conn is None or conn.pid != os.getpid() or generation != self._generation:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                conn = self._open()
            except sqlite3.DatabaseError as err:
                if type(err) is not sqlite3.DatabaseError:  # locked, no permission, ...: not a damaged file
                    raise
                self._move_aside(err)
                conn = self._open()
            with self._lock:
                self._opened.add(conn)
                self._local.conn = (self._generation, conn)
        return conn

    def _open(self) -> _Connection:
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False, factory=_Connection)
        conn.pid = os.getpid()
        try:
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL: every commit atomic, durable across a killed process
            conn.execute(_SCHEMA)
            if str(self.path) not in _CHECKED:
                verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
                if verdict != "ok":
                    raise sqlite3.DatabaseError(f"integrity check: {verdict}")
                _CHECKED.add(str(self.path))
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self, err: Exception) -> None:
        """Rename the unreadable cache (and its -wal / -shm files) out of the way, with a notice."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = self.path.with_name(self.path.name + suffix)
            if source.exists():
                os.replace(source, aside.with_name(aside.name + suffix))
        logger.warning("srt_hf: the teacher cache %s cannot be read (%s); moved it to %s and started an empty one "
                       "(cached replies are only a speed-up: they will be asked again)", self.path, err, aside.name)

    def get(self, key: str) -> str | None:
        entry = self.get_entry(key)
        return entry[0] if entry else None

    def get_entry(self, key: str) -> tuple[str, dict[str, Any]] | None:
        """(text, meta) of a stored completion; meta holds the settings and how the reply finished."""
        row = self._conn().execute("SELECT text, meta FROM completions WHERE key = ?", (key,)).fetchone()
        return (row[0], json.loads(row[1] or "{}")) if row else None

    def put(self, key: str, text: str, meta: dict[str, Any] | None = None) -> None:
        """Store one completion; committed before returning (autocommit)."""
        self._conn().execute(
            "INSERT OR REPLACE INTO completions (key, text, created, meta) VALUES (?, ?, ?, ?)",
            (key, text, time.time(), json.dumps(meta or {}, sort_keys=True)),
        )

    def usage(self, run: str) -> dict[str, dict[str, dict[str, int]]]:
        """Replies the run ``run`` received, by stage and source (batch / online), with the servers' token counts."""
        rows = self._conn().execute(
            "SELECT json_extract(meta, '$.stage'), json_extract(meta, '$.source'), COUNT(*), "
            "TOTAL(json_extract(meta, '$.usage.prompt_tokens')), TOTAL(json_extract(meta, '$.usage.completion_tokens')) "
            "FROM completions WHERE json_extract(meta, '$.run') = ? GROUP BY 1, 2", (run,)).fetchall()
        found: dict[str, dict[str, dict[str, int]]] = {}
        for stage, source, n, prompt, completion in rows:
            found.setdefault(stage or "", {})[source or "online"] = {
                "replies": n, "prompt_tokens": int(prompt), "completion_tokens": int(completion)}
        return found

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        """Close every connection this cache opened in this process, whichever thread opened it.

        Call it when no thread uses the cache any more (the end of a run). Closing the last connection to the file
        checkpoints the WAL into ``cache.sqlite`` and removes ``-wal`` / ``-shm``. The cache stays usable: the next
        call opens a new connection. Connections inherited from a parent process are left alone.
        """
        with self._lock:
            self._generation += 1
            mine = [conn for conn in self._opened if conn.pid == os.getpid()]
            self._opened = weakref.WeakSet()
        for conn in mine:
            conn.close()
        self._local.conn = (None, None)
