"""The CLI's list of bad-input errors names real classes: a stale module path there would turn every
such error into a silent exit 1 (the handler itself would fail)."""

import importlib

from edgehub.hub.cli.common import _ERROR_CLASSES, known_errors


def test_every_known_error_class_resolves():
    for module, name in _ERROR_CLASSES:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, Exception), (module, name)
    assert len(known_errors()) == len(_ERROR_CLASSES)
