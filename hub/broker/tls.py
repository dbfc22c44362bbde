"""How the hub verifies an mqtts:// broker: the system's CAs, or a private CA (`hub serve --broker-ca`).

paho retries a failed TLS connection without saying why; `TlsDiagnosis` probes the handshake
itself and logs the reason (an untrusted certificate names --broker-ca), so a hub that cannot
reach its broker does not just sit there silently.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass

from edgehub.hub.serve.certs import CertError

log = logging.getLogger("edgehub.hub.fleet")

DIAGNOSE_EVERY = 10  # failures between two logged diagnoses (the first is always logged)


def broker_tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A client context that trusts `ca_file` (PEM; None: the system's CAs), TLS 1.2 or newer, and
    checks the broker's host name. A CA file that cannot be loaded is a one-line CertError."""
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise CertError(f"cannot load the broker CA {ca_file} ({exc.__class__.__name__}: "
                        f"{getattr(exc, 'strerror', None) or exc}); check --broker-ca") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass
class TlsDiagnosis:
    """paho's on_connect_fail for a TLS connection: logs why it fails, the first time and every
    DIAGNOSE_EVERY-th; the last reason is kept in `last_error`."""

    host: str
    port: int
    context: ssl.SSLContext
    ca_file: str | None
    who: str  # e.g. "hub worker 0"
    failures: int = 0
    last_error: str | None = None

    def on_connect_fail(self, client, userdata) -> None:
        self.failures += 1
        if self.failures % DIAGNOSE_EVERY != 1:
            return
        self.last_error = self.probe()
        log.warning("%s cannot connect to the broker %s:%d: %s; retrying", self.who, self.host, self.port,
                    self.last_error)

    def probe(self, timeout: float = 5.0) -> str:
        """The reason, from a TLS handshake of our own with the same context."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as sock, \
                    self.context.wrap_socket(sock, server_hostname=self.host):
                return "the TLS handshake succeeds; the MQTT handshake failed"
        except ssl.SSLCertVerificationError as exc:
            hint = f"check --broker-ca ({self.ca_file})" if self.ca_file else "give its CA with --broker-ca FILE"
            return f"TLS: the broker's certificate is not trusted ({exc.verify_message or exc.reason}); {hint}"
        except OSError as exc:
            return f"{exc.__class__.__name__}: {exc}"


__all__ = ["TlsDiagnosis", "broker_tls_context"]
