"""ONNX Runtime's quantization tools log through Python's root logger (logging.warning), one line
per tensor: on a real CNN dozens of lines that would land raw on the user's terminal. `OrtLog`
takes them while a block runs and summarises them (a count per kind of message, a few of the
names) for the pass notes. Its sessions' own C++ warnings (e.g. "Removing initializer ... not
used", after a graph edit) go straight to stderr: the block raises ONNX Runtime's default log
severity to errors while it runs."""

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
        self._saved: list[list[logging.Handler]] = []  # a stack: blocks may nest
        self._handler = _Collect(self.records)

    def __enter__(self) -> OrtLog:
        import onnxruntime

        root = logging.getLogger()
        saved = list(root.handlers)
        self._saved.append(saved)
        for h in saved:
            root.removeHandler(h)
        root.addHandler(self._handler)
        onnxruntime.set_default_logger_severity(3)
        return self

    def __exit__(self, *exc) -> None:
        import onnxruntime

        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in self._saved.pop():
            root.addHandler(h)
        if not self._saved:
            onnxruntime.set_default_logger_severity(2)  # ONNX Runtime's own default

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
