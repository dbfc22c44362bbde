"""What every part of the protocol shares: the id pattern (devices, fleets) and the
error a rejected body or topic raises.
"""

from __future__ import annotations

import re

ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


_ID_RE = re.compile(ID_PATTERN)


class MessageError(ValueError):
    """A body that must be rejected; the message is one line, safe to log (no secrets)."""
