"""The durable outbox: every result is on disk before it is published, until the broker acknowledges it.

SQLite in WAL mode, in ``state_dir``. A result costs one small committed insert; acknowledgements are
deleted in batches (at most once a second), because an SD card wears with every write and a result
sent twice after a crash is harmless (subscribers dedupe on device + frame) while a lost one is not.
``synchronous=FULL``: a committed result survives a power cut, the most common outage of a Pi.

The outbox is bounded: beyond ``max_messages`` waiting results the oldest waiting one is dropped and
counted (the count survives restarts). Rows handed to the MQTT client ("claimed", at most a small
window of them) are never dropped: the broker may already have them.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent.errors import AgentError

logger = logging.getLogger(__name__)

FILE_NAME = "outbox.sqlite3"
ACK_FLUSH_S = 1.0  # acknowledged rows are deleted in one transaction at most this often

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
                                   payload BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class OutboxError(AgentError):
    """The outbox file cannot be created or written (state_dir missing, read-only, full).

    ``lasting``: a problem of the setup (a state_dir the agent may not write) that a restart cannot cure,
    as opposed to a full disk, an I/O error or a file another process holds.
    """

    kind = "outbox"

    def __init__(self, message: str, *, lasting: bool = True):
        super().__init__(message)
        self.lasting = lasting


@dataclass(frozen=True)
class Entry:
    id: int
    topic: str
    payload: bytes


class Outbox:
    """Results waiting for the broker's acknowledgement, oldest first; safe to use from two threads."""

    def __init__(self, state_dir: str | Path, max_messages: int):
        self.path = Path(state_dir) / FILE_NAME
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._db = self._connect()
        self._count = self._scalar("SELECT COUNT(*) FROM outbox")
        self.dropped = self._counter("dropped")
        self.last_frame = self._counter("last_frame")  # frame numbers continue across restarts
        self._claimed_up_to = 0  # rows with id <= this were handed to the MQTT client in this process
        self._acked: set[int] = set()
        self._last_flush = time.monotonic()
        self._closed = False

    def __len__(self) -> int:
        """Results not yet acknowledged (waiting or in flight)."""
        with self._lock:
            return self._count - len(self._acked)

    def put(self, topic: str, payload: bytes, frame: int) -> None:
        """Store one result (one commit); drop the oldest waiting ones beyond the bound."""
        with self._lock:
            excess = self._count - len(self._acked) + 1 - self.max_messages
            with self._write("store a result"):
                self._db.execute("INSERT INTO outbox (topic, payload, created) VALUES (?, ?, ?)",
                                 (topic, payload, time.time()))
                if frame > self.last_frame:
                    self._set_counter("last_frame", frame)
                dropped = self._drop_oldest_waiting(excess) if excess > 0 else 0
            # Only now, committed: a failed commit (disk full) leaves memory as the file is.
            self._count += 1 - dropped
            self.dropped += dropped
            self.last_frame = max(self.last_frame, frame)

    def claim(self, limit: int) -> list[Entry]:
        """Up to ``limit`` of the oldest results not handed out yet, now handed out (never dropped)."""
        if limit <= 0:
            return []
        with self._lock:
            if self._closed:
                return []
            rows = self._db.execute("SELECT id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                                    (self._claimed_up_to, limit + len(self._acked))).fetchall()
            rows = [row for row in rows if row[0] not in self._acked][:limit]  # acked, not yet deleted
            if rows:
                self._claimed_up_to = rows[-1][0]
        return [Entry(row[0], row[1], bytes(row[2])) for row in rows]

    def ack(self, entry_id: int) -> None:
        """The broker has it: forget it (written in a batch, see ACK_FLUSH_S)."""
        with self._lock:
            if self._closed:
                return  # a PUBACK that came after stop: the row is sent again next run (subscribers dedupe)
            self._acked.add(entry_id)  # a set: a second PUBACK for the same row counts once
            if time.monotonic() - self._last_flush >= ACK_FLUSH_S:
                try:
                    self._flush_acks()
                except OutboxError as exc:  # kept in _acked: the next flush tries again
                    logger.warning("%s", exc)

    def close(self) -> None:
        """Write pending acknowledgements and close the file; safe to call more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._flush_acks()
            except OutboxError as exc:  # disk full: those rows are sent again next run (subscribers dedupe)
                logger.warning("%s", exc)
            finally:
                self._db.close()

    # --- inside the lock -----------------------------------------------------------------------------

    def _drop_oldest_waiting(self, count: int) -> int:
        """Delete the oldest ``count`` unclaimed rows (in the caller's transaction); how many went."""
        dropped = self._db.execute(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE id > ? ORDER BY id LIMIT ?)",
            (self._claimed_up_to, count)).rowcount
        if dropped > 0:
            self._set_counter("dropped", self.dropped + dropped)
        return max(0, dropped)

    def _flush_acks(self) -> None:
        self._last_flush = time.monotonic()
        if not self._acked:
            return
        with self._write("forget acknowledged results"):
            deleted = self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in self._acked]).rowcount
        self._count -= max(0, deleted)
        self._acked.clear()

    def _set_counter(self, name: str, value: int) -> None:
        self._db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))

    def _write(self, what: str) -> _Transaction:
        return _Transaction(self._db, self.path, what)

    # --- opening ---------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                return self._open()
            except sqlite3.DatabaseError as exc:
                if not _damaged(exc):
                    raise
                last_frame = self._set_aside(str(exc))
                db = self._open()
                # Numbering goes on from the damaged file's count: subscribers dedupe on device + frame.
                db.execute("INSERT INTO counters (name, value) VALUES ('last_frame', ?)", (last_frame,))
                return db
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"state_dir {self.path.parent}: cannot open the outbox {self.path.name}: {exc} "
                              "(the directory must exist or be creatable, and be writable by the agent)",
                              lasting=self._lasting(exc)) from exc

    def _lasting(self, exc: BaseException) -> bool:
        """A problem a restart cannot cure: the agent may not write state_dir or the outbox's files."""
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            return False  # a full disk while creating state_dir: space may come back
        files = [self.path, *(Path(f"{self.path}{suffix}") for suffix in ("-wal", "-shm"))]
        # A -wal left by `sudo catdog-agent run` is root's: the service's user cannot write it.
        return not _usable_dir(self.path.parent) or any(
            path.exists() and not os.access(path, os.R_OK | os.W_OK) for path in files)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            problem = db.execute("PRAGMA quick_check").fetchone()[0]  # milliseconds for an outbox's size
            if problem != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {problem}")
        except BaseException:
            db.close()
            raise
        return db

    def _set_aside(self, reason: str) -> int:
        """A damaged file (an SD card after a power cut) would stop the device for good: keep it (and its
        WAL) for inspection under another name, for an empty outbox to take its place. Returns its frame
        count when that can still be read, else 0."""
        last_frame = _salvage_last_frame(self.path)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        kept = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        wal = Path(f"{self.path}-wal")
        if wal.exists():
            wal.rename(f"{kept}-wal")
        Path(f"{self.path}-shm").unlink(missing_ok=True)
        self.path.rename(kept)
        logger.error("outbox damaged (%s): kept as %s, starting an empty one; the results in it are lost; frame "
                     "numbers go on from %s", reason, kept, last_frame if last_frame else "1 (count unreadable)")
        return last_frame

    def _scalar(self, sql: str) -> int:
        return int(self._db.execute(sql).fetchone()[0])

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0


_CORRUPT = ("file is not a database", "database disk image is malformed", "malformed database schema")
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+; the texts are the same since SQLite 3.7
    return (code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)) or any(
        sign in str(exc) for sign in _CORRUPT)


def _salvage_last_frame(path: Path) -> int:
    """The frame counter of a damaged outbox, read-only and best effort; 0 when it cannot be read."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM counters WHERE name = 'last_frame'").fetchone()
        finally:
            db.close()
        return int(row[0]) if row else 0
    except (sqlite3.Error, ValueError, TypeError):
        return 0


def _usable_dir(path: Path) -> bool:
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


class _Transaction:
    """One committed transaction; SQLite errors (disk full, file gone) become OutboxError."""

    def __init__(self, db: sqlite3.Connection, path: Path, what: str):
        self.db, self.path, self.what = db, path, what

    def __enter__(self) -> None:
        self.db.execute("BEGIN")

    def __exit__(self, kind: type | None, exc: BaseException | None, _tb: object) -> None:
        if kind is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error as error:
                exc = error
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise OutboxError(f"{self.path}: cannot {self.what}: {exc}") from exc
