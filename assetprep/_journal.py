"""Durable run state and the one-process lock, shared by publish (journal.json) and batch (SQLite).

The lock is an flock on `lock` in the run folder with the holder's PID written inside: the kernel drops it when the
holder dies (kill -9 included), so a stale lock is simply taken over, and a second live process can say who runs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ._files import os_reason
from .errors import JournalError


def _unwritable(what: str, path: Path, reason: str) -> JournalError:
    return JournalError(
        f"cannot write the {what} {path}: {reason}",
        hint="set runs_dir (ASSETPREP_RUNS_DIR or the config file) to a folder you can write to",
    )


def _sqlite_error(exc: sqlite3.Error, path: Path) -> JournalError:
    """A journal that cannot be written (full or read-only disk) is not a damaged one: deleting it is no cure."""
    code = getattr(exc, "sqlite_errorcode", None)
    text = str(exc)
    if code == sqlite3.SQLITE_FULL or "disk is full" in text:
        return JournalError(
            f"no space left on the disk of {path.parent} for the batch journal",
            hint="free space there and run again: nothing is lost (the journal is as it was)",
        )
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_PERM) or (
        "readonly" in text or "unable to open" in text or "disk I/O error" in text
    ):
        return _unwritable("batch journal", path, text)
    return JournalError(f"the batch journal {path} is damaged ({text})",
                        hint=f"delete {path.parent} to start this batch over (videos already made are adopted by "
                             "name)")  # fmt: skip


class RunLock:
    """Exclusive lock on a run/batch folder for the lifetime of one process (released on close or death)."""

    def __init__(self, folder: Path, *, what: str = "run") -> None:
        self.path = folder / "lock"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # a read-only or full disk, another user's folder
            raise _unwritable(f"{what}'s folder", folder, os_reason(exc)) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            raise JournalError(
                f"this {what} ({folder}) is being run by another assetprep process (PID {holder})",
                hint="wait for it to finish or stop it; a killed process's lock is taken over automatically",
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_host(stored: str | None, current: str, journal: Path, *, fresh_flag: str) -> None:
    """Journals remember the API host; rerunning against another one would adopt ids that host never issued."""
    if stored and stored != current:
        raise JournalError(
            f"{journal} belongs to the API at {stored}, but this run talks to {current}: "
            "its video ids mean nothing there",
            hint=f"point TAVUS_API_BASE_URL back at {stored}, or start over with {fresh_flag}",
        )


class Journal:
    """journal.json of a publish run: each step's outputs, written atomically (0600: it holds presigned URLs)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "journal.json"
        self.data: dict[str, Any] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                data = None
            if not isinstance(data, dict):
                raise JournalError(
                    f"the run journal {self.path} is damaged (not a JSON object)",
                    hint=f"delete the folder {run_dir} to start this run over, or pass another --run-id",
                )
            self.data = data

    def get(self, step: str) -> dict[str, Any]:
        value = self.data.get(step)
        return dict(value) if isinstance(value, dict) else {}

    def put(self, step: str, **fields: Any) -> None:
        self.data[step] = {**self.get(step), **fields}
        tmp = self.path.with_name(f".journal.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.data, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


# --- the batch journal -----------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS preps (
    key TEXT PRIMARY KEY,          -- hash of what is prepared and how (shared by every row that needs it)
    kind TEXT NOT NULL,            -- background | audio | watermark
    state TEXT NOT NULL,           -- pending | uploaded | failed
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS rows (
    row_id TEXT PRIMARY KEY,       -- hash of the row's rendered content
    row_number INTEGER NOT NULL,   -- spreadsheet row of the last manifest that had it
    state TEXT NOT NULL,           -- pending | submitting | submitted | ready | downloaded | failed
    video_name TEXT,
    video_id TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    data TEXT NOT NULL DEFAULT '{}',
    updated REAL NOT NULL
);
"""


class RowState(NamedTuple):
    row_id: str
    state: str
    video_id: str | None
    video_name: str | None
    updated: float


class BatchJournal:
    """The state of every row and shared preparation of one batch, in SQLite (WAL). One writer: the batch process
    holding the RunLock; its threads share one connection under a lock, and every change commits at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # 0600: it holds presigned URLs
            os.close(fd)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            # The batch's loop reads every row's state several times a second; with 10,000 rows a query (let
            # alone parsing each row's data) cost 20-60 ms each time. One writer (the RunLock) keeps this in step.
            found = self._db.execute("SELECT row_id, state, video_id, video_name, updated FROM rows").fetchall()
        except OSError as exc:
            raise _unwritable("batch journal", path, os_reason(exc)) from None
        except sqlite3.DatabaseError as exc:
            raise _sqlite_error(exc, path) from None
        self._states = {r[0]: RowState(*r) for r in found}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):  # a failed statement may have rolled back already
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):  # the disk filled up (or went read-only) meanwhile
                    raise _sqlite_error(exc, self.path) from None
                raise

    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- preparations --

    def prep(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT kind, state, data FROM preps WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return {"key": key, "kind": row[0], "state": row[1], **json.loads(row[2])}

    def put_prep(self, key: str, kind: str, state: str, **data: Any) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO preps (key, kind, state, data) VALUES (?, ?, ?, ?)",
                       (key, kind, state, json.dumps(data, default=str)))  # fmt: skip

    # -- rows --

    def add_rows(self, rows: list[tuple[str, int]]) -> None:
        """Register rows (row_id, row_number); known rows only get their current row number."""
        now = time.time()
        with self._tx() as db:
            for row_id, number in rows:
                db.execute(
                    "INSERT INTO rows (row_id, row_number, state, updated) VALUES (?, ?, 'pending', ?) "
                    "ON CONFLICT(row_id) DO UPDATE SET row_number = excluded.row_number",
                    (row_id, number, now),
                )
                self._states.setdefault(row_id, RowState(row_id, "pending", None, None, now))

    def row(self, row_id: str) -> dict[str, Any]:
        with self._lock:
            cur = self._db.execute("SELECT * FROM rows WHERE row_id = ?", (row_id,))
            names = [d[0] for d in cur.description]
            found = cur.fetchone()
        if found is None:
            raise KeyError(row_id)
        out = dict(zip(names, found, strict=True))
        out["data"] = json.loads(out["data"])
        return out

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute("SELECT * FROM rows ORDER BY row_number")
            names = [d[0] for d in cur.description]
            found = cur.fetchall()
        out = [dict(zip(names, r, strict=True)) for r in found]
        for r in out:
            r["data"] = json.loads(r["data"])
        return out

    def states(self) -> list[RowState]:
        """Every row's state and video (not its data), from memory."""
        with self._lock:
            return list(self._states.values())

    def update_row(self, row_id: str, *, data: dict[str, Any] | None = None, **fields: Any) -> None:
        """Set columns of a row and merge `data` into its JSON data, in one transaction."""
        with self._tx() as db:
            if data:
                old = db.execute("SELECT data FROM rows WHERE row_id = ?", (row_id,)).fetchone()
                merged = {**(json.loads(old[0]) if old else {}), **data}
                fields["data"] = json.dumps(merged, default=str)
            fields["updated"] = time.time()
            cols = ", ".join(f"{k} = ?" for k in fields)
            db.execute(f"UPDATE rows SET {cols} WHERE row_id = ?", (*fields.values(), row_id))
            if (known := self._states.get(row_id)) is not None:
                self._states[row_id] = known._replace(**{k: v for k, v in fields.items() if k in RowState._fields})


class MadeElsewhere(NamedTuple):
    batch_id: str
    manifest: str
    rows: int  # how many of the rows asked about


def made_elsewhere(batches: Path, row_ids: set[str], host: str, *, besides: Path) -> list[MadeElsewhere]:
    """The other batches in `batches` (against the same API host) whose journals have a video sent for some of
    `row_ids`. A batch's id comes from its manifest's path, so a manifest moved, renamed or copied starts a new batch
    whose names match no video: its rows would be made, and paid for, again. Read-only: a journal that is busy or
    damaged is someone else's to report."""
    found = []
    for path in sorted(batches.glob("*/journal.sqlite")):
        if path.parent == besides:
            continue
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
                if meta.get("api_host") != host:
                    continue
                made = {rid for (rid,) in db.execute(
                    "SELECT row_id FROM rows WHERE state IN ('submitting', 'submitted', 'ready', 'downloaded') "
                    "OR video_id IS NOT NULL")}  # fmt: skip
        except sqlite3.Error:
            continue
        if hits := len(made & row_ids):
            found.append(MadeElsewhere(path.parent.name, meta.get("manifest", "?"), hits))
    return found


def open_checked(path: Path, host: str, *, fresh_flag: str) -> BatchJournal:
    """The batch journal, after checking it was written against the same API host (recorded on first use)."""
    journal = BatchJournal(path)
    stored = journal.meta("api_host")
    try:
        check_host(stored, host, path, fresh_flag=fresh_flag)
    except JournalError:
        journal.close()
        raise
    if stored is None:
        journal.set_meta("api_host", host)
    return journal
