"""Keeping the artifact URLs in stored desired states valid: re-sign them before they expire.

A desired state is retained and can sit unchanged for longer than its URLs live (a device that
is offline for a week, a fleet nobody publishes to). A device given an expired URL gets 403
"expired" and can download nothing until the hub writes it a new desired state. These pure
functions let the fleet loop find such states and make fresh copies, same generation (nothing
about what the device should do changed), with every URL signed again for the same device,
object and a new deadline. The loop publishes the copy (retained) and stores it.

The fleet loop (hub/control/worker.py, `FleetService.refresh_urls`) runs this at start-up and once
an hour: `stored_needs_refresh` screens the stored JSON bodies cheaply (no model parsing, 10,000
devices in a few milliseconds), and only the states it flags are parsed, re-signed, stored and
published.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from edgehub.hub.control.url_signing import sign_artifact_url
from edgehub.protocol.messages import DesiredState, now_utc

# Re-sign when a URL has less than this left: a day, so a device that reconnects after a nap
# of up to a day still finds working URLs, and a hub that was down for hours catches up.
REFRESH_MARGIN_S = 24 * 3600


def url_expiry(url: str | None) -> int | None:
    """The `exp` deadline (unix seconds) of a signed artifact URL; None if it has none."""
    if not url:
        return None
    values = parse_qs(urlsplit(url).query).get("exp")
    if not values or not values[0].isdigit():
        return None
    return int(values[0])


def _any_expiring(urls, now: float, margin_s: float) -> bool:
    for url in urls:
        if url is None:
            continue
        exp = url_expiry(url)
        if exp is None or exp - now < margin_s:
            return True
    return False


def needs_refresh(desired: DesiredState, now: float, margin_s: float = REFRESH_MARGIN_S) -> bool:
    """True if any URL in `desired` expires within `margin_s` of `now` (or carries no deadline)."""
    return _any_expiring((u for c in desired.candidates for u in (c.url, c.references_url)), now, margin_s)


def stored_needs_refresh(body: dict, now: float, margin_s: float = REFRESH_MARGIN_S) -> bool:
    """`needs_refresh` on a stored desired-state body (its JSON form), without parsing the model."""
    candidates = body.get("candidates") or ()
    return _any_expiring((c.get(k) for c in candidates for k in ("url", "references_url")), now, margin_s)


def refreshed(desired: DesiredState, base_url: str, secret: bytes, ttl_s: int, now: float) -> DesiredState:
    """A copy of `desired` whose URLs are all signed again, valid `ttl_s` from `now`."""
    device = desired.device_id
    candidates = []
    for c in desired.candidates:
        refs_sha = c.manifest.manifest.references_sha256
        update = {"url": sign_artifact_url(base_url, c.sha256, device, secret, ttl_s=ttl_s, now=now)}
        if c.references_url is not None and refs_sha:
            update["references_url"] = sign_artifact_url(base_url, refs_sha, device, secret, ttl_s=ttl_s, now=now)
        candidates.append(c.model_copy(update=update))
    return desired.model_copy(update={"candidates": candidates, "at": now_utc()})


__all__ = ["REFRESH_MARGIN_S", "needs_refresh", "refreshed", "stored_needs_refresh", "url_expiry"]
