"""An on-disk outbox for events: kept until the broker acknowledges them (QoS 1 PUBACK).

SQLite (standard library) so a reboot or a long broker outage loses no report. Duplicates are
possible after a crash between PUBACK and delete; the hub de-duplicates by event id.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path


class Outbox:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS outbox (event_id TEXT PRIMARY KEY, topic TEXT NOT NULL, "
                         "payload BLOB NOT NULL, created REAL NOT NULL)")
        self._lock = threading.Lock()

    def add(self, event_id: str, topic: str, payload: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO outbox VALUES (?, ?, ?, ?)", (event_id, topic, payload, time.time()))

    def remove(self, event_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE event_id = ?", (event_id,))

    def pending(self) -> list[tuple[str, str, bytes]]:
        with self._lock:
            return list(self._db.execute("SELECT event_id, topic, payload FROM outbox ORDER BY created"))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
