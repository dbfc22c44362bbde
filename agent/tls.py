"""TLS for the agent's connections (MQTT and HTTPS): verify the hub with its CA, TLS 1.2+.

The hub's CA (`edgehub hub certs`) is given in the agent config as `ca_file`; without one the
system's trust store is used (a hub with a publicly trusted certificate). The server's name is
always checked against its certificate.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class TlsConfigError(Exception):
    """The CA file cannot be used; the message names it."""


def client_context(ca_file: Path | None) -> ssl.SSLContext:
    """A context that verifies the server's certificate chain and host name."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"cannot load the CA file {ca_file}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def describe(exc: BaseException) -> str:
    """One line for a TLS failure, saying what to check (never a secret: there is none in it)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS: the server's certificate is not trusted ({exc.verify_message or exc.reason}); "
                "check ca_file in the agent config")
    return f"TLS: {exc.__class__.__name__}: {exc}"


__all__ = ["TlsConfigError", "client_context", "describe"]
