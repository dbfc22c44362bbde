"""An agent's delivery path, alone, as a process: the real MqttLink and on-disk Outbox.

    python tests/support/fault_publisher.py AGENT.toml COUNT [--prefix P] [--linger S]

Publishes COUNT events (AgentError bodies, ids P-000000...) as fast as the outbox takes them,
then waits until the broker has acknowledged every one (the outbox is empty) and exits 0.
Started again after a kill -9, it publishes nothing new that the outbox already holds or that
was acknowledged before (it reads progress.json) and re-sends what the outbox still holds, as
the agent does after a reboot. Prints one JSON line per 100 events to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from edgehub.agent.config import load_config
from edgehub.agent.mqtt_link import MqttLink
from edgehub.agent.outbox import Outbox
from edgehub.protocol.messages import AgentError


def event_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:06d}" for i in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("count", type=int)
    parser.add_argument("--prefix", default="evt")
    parser.add_argument("--linger", type=float, default=0.0, help="seconds to stay connected at the end")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    config = load_config(args.config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    progress = config.data_dir / "progress.json"
    start = json.loads(progress.read_text())["next"] if progress.exists() else 0
    outbox = Outbox(config.data_dir / "outbox.db")
    link = MqttLink(config, outbox, on_desired=lambda desired: None)
    link.start()
    ids = event_ids(args.prefix, args.count)
    for i in range(start, args.count):
        link.publish_event(AgentError(event_id=ids[i], device_id=config.device_id, generation=0,
                                      error=f"fault-injection event {i}"))
        # Progress is written after the outbox holds the event: a kill between the two re-sends it.
        # Atomic (temp + rename): a kill -9 mid-write must not leave an empty progress file.
        tmp = progress.with_suffix(".tmp")
        tmp.write_text(json.dumps({"next": i + 1}))
        os.replace(tmp, progress)
        if (i + 1) % 100 == 0:
            print(json.dumps({"published": i + 1, "acked": link.acked, "pending": len(outbox)}), flush=True)
    deadline = time.monotonic() + args.timeout
    while len(outbox) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = len(outbox)
    print(json.dumps({"done": True, "pending": left, "acked": link.acked, "connects": link.connects}), flush=True)
    time.sleep(args.linger)
    link.stop()
    outbox.close()
    return 0 if left == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
