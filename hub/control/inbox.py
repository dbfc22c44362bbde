"""The hub's MQTT inbox: messages are acknowledged to the broker only after they are stored.

With paho's default (automatic PUBACK when `on_message` returns) a message the hub has queued
in memory but not yet written to the database is lost if the hub is killed: the broker already
forgot it. Measured with `edgehub hub serve`: killed with -9 while draining a backlog of 430
queued reports, 128 never reached the database. With this inbox the paho client is made with
`manual_ack=True`; the worker drains a batch, stores it in one transaction, and only then
acknowledges every message of the batch (stored or rejected). A hub killed before the commit
gets the unacknowledged messages again from the broker when it reconnects (persistent
session), and stores each event once (event ids).

Use in the fleet loop (hub/control/worker.py)::

    client = mqtt.Client(..., manual_ack=True)
    inbox = AckAfterCommitInbox(client)
    client.on_message = inbox.on_message
    # later, in the worker thread:
    batch = inbox.drain(timeout=0.2, limit=BATCH_MAX)
    touched = self.handle_batch([(m.topic, m.payload) for m in batch])   # commits
    inbox.ack(batch)

The broker keeps at most `max_inflight_messages` (100 in the managed broker's config)
unacknowledged messages per client, so batches are bounded by it, and acknowledging once per
batch keeps the stream moving.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass

import paho.mqtt.client as mqtt

log = logging.getLogger("edgehub.hub.inbox")


@dataclass(frozen=True)
class InboxMessage:
    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool = False  # as published (the hub subscribes to events with Retain As Published)


class AckAfterCommitInbox:
    """A queue between paho's network thread and the worker that stores messages."""

    def __init__(self, client: mqtt.Client):
        self._client = client
        self._queue: queue.Queue[InboxMessage] = queue.Queue()
        self._retry: list[InboxMessage] = []  # a batch whose storing failed, tried again first
        self._lock = threading.Lock()
        self.acked = 0

    def on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        """paho's on_message: queue only (the network thread must stay fast)."""
        self._queue.put(InboxMessage(message.topic, bytes(message.payload), message.mid, message.qos,
                                     bool(message.retain)))

    def drain(self, timeout: float, limit: int) -> list[InboxMessage]:
        """Up to `limit` messages, waiting at most `timeout` for the first one."""
        with self._lock:
            batch, self._retry = self._retry[:limit], self._retry[limit:]
        if not batch:
            try:
                batch = [self._queue.get(timeout=timeout)]
            except queue.Empty:
                return []
        while len(batch) < limit:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def ack(self, batch: list[InboxMessage]) -> None:
        """Acknowledge a batch once it is stored (or rejected for good)."""
        for message in batch:
            if message.qos > 0:
                self._client.ack(message.mid, message.qos)
        self.acked += len(batch)

    def retry_later(self, batch: list[InboxMessage]) -> None:
        """Storing failed (e.g. the database is down): keep the batch, unacknowledged, for the
        next drain. The broker does not re-send it on this connection."""
        with self._lock:
            self._retry = batch + self._retry
        log.warning("storing %d messages failed; they will be tried again", len(batch))

    def __len__(self) -> int:
        return self._queue.qsize() + len(self._retry)


__all__ = ["AckAfterCommitInbox", "InboxMessage"]
