"""ONNX Runtime's quantization tools log through Python's root logger (logging.warning), one line
per tensor: on a real CNN dozens of lines that would land raw on the user's terminal. `OrtLog`
takes them while a block runs and summarises them (a count per kind of message, a few of the
names) for the pass notes."""

from __future__ import annotations

import logging
import re

_NAME = re.compile(r"`[^`]*`|'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\b\d+(\.\d+)?(e[-+]?\d+)?\b")


class _Collect(logging.Handler):
    def __init__(self, sink: list[logging.LogRecord]):
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record)


class OrtLog:
    """Reusable context manager: `with log: quantize_static(...)`, then `log.summary()`."""

    def __init__(self) -> None:
        self.records: list[logging.LogRecord] = []
        self._saved: list[logging.Handler] = []
        self._handler = _Collect(self.records)

    def __enter__(self) -> OrtLog:
        root = logging.getLogger()
        self._saved = list(root.handlers)
        for h in self._saved:
            root.removeHandler(h)
        root.addHandler(self._handler)
        return self

    def __exit__(self, *exc) -> None:
        root = logging.getLogger()
        root.removeHandler(self._handler)
        for h in self._saved:
            root.addHandler(h)

    def summary(self) -> dict[str, dict]:
        """{message with names and numbers blanked: {"count": n, "examples": [first names]}}."""
        out: dict[str, dict] = {}
        for r in self.records:
            if r.levelno < logging.WARNING:
                continue
            text = r.getMessage()
            names = [m.strip("`'\"") for m in _NAME.findall(text)]
            key = _NUMBER.sub("N", _NAME.sub("…", text)).strip()[:200]
            entry = out.setdefault(key, {"count": 0, "examples": []})
            entry["count"] += 1
            if names and len(entry["examples"]) < 3:
                entry["examples"].append(names[0][:120])
        return out
