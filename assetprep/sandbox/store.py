"""The sandbox's state in SQLite: every video record and every call it answered, surviving restarts."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS videos (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    video_id TEXT UNIQUE NOT NULL,
    request TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER NOT NULL,
    video_id TEXT
);
"""


class Store:
    """Thread-safe access to sandbox.db; one connection guarded by a lock (the load is tiny)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # It holds signed URLs (audio_url, background_source_url): owner-only, like the API key file. SQLite gives
        # the -wal and -shm files the database's mode.
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_video(self, record: dict[str, Any], request: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO videos (video_id, request, record) VALUES (?, ?, ?)",
                (record["video_id"], json.dumps(request), json.dumps(record)),
            )

    def get(self, video_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(record, request) of a video, or None."""
        with self._lock:
            row = self._db.execute("SELECT record, request FROM videos WHERE video_id = ?", (video_id,)).fetchone()
        return (json.loads(row[0]), json.loads(row[1])) if row else None

    def update(self, video_id: str, **fields: Any) -> dict[str, Any] | None:
        """Merge fields into a record (None when it was hard-deleted meanwhile)."""
        with self._lock:
            row = self._db.execute("SELECT record FROM videos WHERE video_id = ?", (video_id,)).fetchone()
            if row is None:
                return None
            record = {**json.loads(row[0]), **fields}
            self._db.execute("UPDATE videos SET record = ? WHERE video_id = ?", (json.dumps(record), video_id))
        return record

    def remove(self, video_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM videos WHERE video_id = ?", (video_id,))

    def page(self, limit: int, page: int) -> tuple[list[dict[str, Any]], int]:
        """Newest first, like a dashboard; plus the total count (a page past SQLite's integers is simply empty)."""
        if page * limit >= 2**63:
            with self._lock:
                return [], self._db.execute("SELECT COUNT(*) FROM videos").fetchone()[0]
        with self._lock:
            total = self._db.execute("SELECT COUNT(*) FROM videos").fetchone()[0]
            rows = self._db.execute(
                "SELECT record FROM videos ORDER BY seq DESC LIMIT ? OFFSET ?", (limit, page * limit)
            ).fetchall()
        return [json.loads(r[0]) for r in rows], total

    def unfinished(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT video_id, record FROM videos ORDER BY seq").fetchall()
        return [vid for vid, rec in rows if json.loads(rec)["status"] in ("queued", "generating")]

    def log_call(self, method: str, path: str, status: int, video_id: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO calls (ts, method, path, status, video_id) VALUES (?, ?, ?, ?, ?)",
                (time.time(), method, path, status, video_id),
            )

    def calls(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT ts, method, path, status, video_id FROM calls ORDER BY seq").fetchall()
        return [dict(zip(("ts", "method", "path", "status", "video_id"), r, strict=True)) for r in rows]
