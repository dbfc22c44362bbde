"""Bytes on the wire <-> protocol bodies (protocol/messages.py): strict JSON in, validated models
out. A body that does not validate, is over MAX_BODY_BYTES, nests deeper than MAX_DEPTH, holds
a NUL or a non-finite number, or names another device than its topic is rejected with a
MessageError (callers log it and go on)."""

from __future__ import annotations

import functools
import json
import math
from typing import TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from edgehub.protocol.base import MessageError
from edgehub.protocol.messages import ActivationResult, AgentError, BenchmarkReport, Event, FieldTelemetry

B = TypeVar("B", bound=BaseModel)

MAX_BODY_BYTES = 256 * 1024
MAX_DEPTH = 32  # JSON nesting; real bodies use under 10
_EVENT_ADAPTER: TypeAdapter = TypeAdapter(Event)


def encode(body: BaseModel) -> bytes:
    return body.model_dump_json().encode()


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ValueError("non-finite number")
    return value


def _check_structure(data: object) -> None:
    # PostgreSQL text columns cannot hold NUL: a "\u0000" in an id would fail the hub's INSERT.
    # Deep nesting (only a manifest's recipe may nest at all) would parse but not re-encode.
    stack = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise MessageError(f"body nests deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            if "\x00" in item:
                raise MessageError("body contains a NUL character")
        elif isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def _load(payload: bytes) -> object:
    if isinstance(payload, str):
        payload = payload.encode()
    if len(payload) > MAX_BODY_BYTES:
        raise MessageError(f"body of {len(payload)} bytes is over the {MAX_BODY_BYTES}-byte limit")
    try:
        # Decode as UTF-8 ourselves: json.loads(bytes) would also guess UTF-16/32.
        # ValueError covers JSONDecodeError, UnicodeDecodeError, non-finite numbers (NaN,
        # Infinity, 1e999: not JSON, and PostgreSQL's json type refuses them) and integers of
        # over 4300 digits; RecursionError is deeply nested arrays or objects.
        data = json.loads(bytes(payload).decode("utf-8"), parse_constant=_reject_constant,
                          parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise MessageError(f"body is not JSON ({exc.__class__.__name__})") from None
    _check_structure(data)
    return data


def _validate(adapter: TypeAdapter, data: object, what: str):
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise MessageError(f"invalid {what}: {_one_line(where)}: {_one_line(first['msg'])}") from None


def _one_line(text: str, limit: int = 160) -> str:
    """Text from a body (a key name, a value in a message) made safe to log: escapes instead of
    newlines and control characters, so a device cannot write lines into the hub's log."""
    return text.encode("unicode_escape").decode("ascii")[:limit]


def _check_device(body: BaseModel, device: str | None) -> None:
    named = getattr(body, "device_id", None)
    if device is not None and named != device:
        raise MessageError(f"body names device {named!r} but came on the topic of {device!r}")


@functools.cache
def _adapter(model: type[BaseModel]) -> TypeAdapter:
    # Building an adapter compiles a validator: once per body type, not once per message.
    return TypeAdapter(model)


def parse_body(payload: bytes, model: type[B], *, device: str | None = None) -> B:
    """Validate a payload as `model`; if `device` is given, the body must name that device."""
    body = _validate(_adapter(model), _load(payload), model.__name__)
    _check_device(body, device)
    return body


def parse_event(payload: bytes, *, device: str) -> BenchmarkReport | ActivationResult | AgentError | FieldTelemetry:
    """Validate an event body from `device`'s events topic."""
    event = _validate(_EVENT_ADAPTER, _load(payload), "event")
    _check_device(event, device)
    return event
