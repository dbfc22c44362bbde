"""An on-disk outbox for events: kept until the broker acknowledges them (QoS 1 PUBACK), and for
a while after, in case the broker dies before passing them on.

SQLite (standard library) so a reboot or a long broker outage loses no report. A broker that is
killed (kill -9, a crash, a power cut) loses what it had acknowledged but neither delivered to
the hub nor saved to its persistence file yet (Mosquitto saves every `autosave_interval`). So an
acknowledged event is kept, marked `acked`, for `redelivery_window_s`; after a connection loss
the link makes the recent ones pending again and sends them once more. The hub stores each event
id once, so a re-sent event the hub already has costs nothing. Duplicates are also possible
after a crash between PUBACK and the update; the hub de-duplicates those the same way.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

REDELIVERY_WINDOW_S = 120.0  # longer than keepalive x 1.5: a dead broker is noticed within it


class Outbox:
    def __init__(self, path: Path, redelivery_window_s: float = REDELIVERY_WINDOW_S):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.redelivery_window_s = redelivery_window_s
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS outbox (event_id TEXT PRIMARY KEY, topic TEXT NOT NULL, "
                         "payload BLOB NOT NULL, created REAL NOT NULL)")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "acked" not in columns:  # an outbox written by an older agent
            self._db.execute("ALTER TABLE outbox ADD COLUMN acked REAL")
        # The event stream: its name and the last number given (see messages.Sequenced).
        self._db.execute("CREATE TABLE IF NOT EXISTS stream (name TEXT NOT NULL, seq INTEGER NOT NULL)")
        if self._db.execute("SELECT COUNT(*) FROM stream").fetchone()[0] == 0:
            self._db.execute("INSERT INTO stream (name, seq) VALUES (?, 0)", (secrets.token_hex(8),))
        self.stream = self._db.execute("SELECT name FROM stream").fetchone()[0]
        self._lock = threading.Lock()

    def add_numbered(self, event_id: str, topic: str, payload_for: Callable[[str, int], bytes]) -> bytes:
        """Number the next event of the stream and keep it, in one transaction: `payload_for(stream,
        seq)` makes its body. Returns the body."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("UPDATE stream SET seq = seq + 1")  # (no RETURNING: SQLite < 3.35 on devices)
                seq = self._db.execute("SELECT seq FROM stream").fetchone()[0]
                payload = payload_for(self.stream, seq)
                self._db.execute("INSERT OR IGNORE INTO outbox (event_id, topic, payload, created) VALUES (?, ?, ?, ?)",
                                 (event_id, topic, payload, time.time()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return payload

    def add(self, event_id: str, topic: str, payload: bytes) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO outbox (event_id, topic, payload, created) VALUES (?, ?, ?, ?)",
                             (event_id, topic, payload, time.time()))

    def acknowledged(self, event_id: str, now: float | None = None) -> None:
        """The broker has the event: keep it for the redelivery window, then forget it."""
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute("UPDATE outbox SET acked = ? WHERE event_id = ?", (now, event_id))
            self._db.execute("DELETE FROM outbox WHERE acked IS NOT NULL AND acked < ?",
                             (now - self.redelivery_window_s,))

    def remove(self, event_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE event_id = ?", (event_id,))

    def pending(self) -> list[tuple[str, str, bytes]]:
        """Events the broker has not acknowledged, oldest first."""
        with self._lock:
            return list(self._db.execute("SELECT event_id, topic, payload FROM outbox WHERE acked IS NULL "
                                         "ORDER BY created"))

    def requeue_recent(self, now: float | None = None) -> int:
        """After a connection loss: events acknowledged within the window become pending again
        (the broker may have died with them). Returns how many."""
        now = time.time() if now is None else now
        with self._lock:
            cursor = self._db.execute("UPDATE outbox SET acked = NULL WHERE acked IS NOT NULL AND acked >= ?",
                                      (now - self.redelivery_window_s,))
            self._db.execute("DELETE FROM outbox WHERE acked IS NOT NULL")
            return cursor.rowcount

    def __len__(self) -> int:
        """How many events are still waiting for the broker's acknowledgement."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox WHERE acked IS NULL").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
