"""TLS material for the hub: a CA and a server certificate (`edgehub hub certs`), or the user's own.

Everything lives in `<home>/tls/`::

    ca.pem       the CA certificate devices verify the hub with (copied next to each agent config)
    ca.key       the CA's private key (0600; only when the hub made the CA)
    server.pem   the hub's server certificate (MQTT and HTTPS), signed by the CA
    server.key   its private key (0600)
    tls.json     {"enabled": true, "hosts": [...], "source": "generated" | "supplied"}

Keys are ECDSA P-256 (small, fast handshakes on small devices). A supplied set is checked
before it is installed: the certificate must match the key, be signed by the CA and be valid
now, so a mistake shows at `hub certs` time, not as a device that cannot connect.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import tempfile
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, Field

TLS_DIR = "tls"
DEFAULT_DAYS = 825  # what browsers accept for a server certificate; the CA lives 10 years
CA_DAYS = 3650


class CertError(Exception):
    """TLS material that cannot be made or used; the message says what to do."""


class TlsSettings(BaseModel):
    enabled: bool = True
    hosts: list[str] = Field(default_factory=list)
    source: Literal["generated", "supplied"] = "generated"


class TlsPaths:
    """The files of `<home>/tls/`."""

    def __init__(self, home: Path):
        self.root = Path(home) / TLS_DIR
        self.ca_cert = self.root / "ca.pem"
        self.ca_key = self.root / "ca.key"
        self.server_cert = self.root / "server.pem"
        self.server_key = self.root / "server.key"
        self.settings_path = self.root / "tls.json"

    def complete(self) -> bool:
        return all(p.is_file() for p in (self.ca_cert, self.server_cert, self.server_key))

    def read_settings(self) -> TlsSettings | None:
        try:
            return TlsSettings.model_validate_json(self.settings_path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise CertError(f"{self.settings_path} is unreadable ({exc.__class__.__name__}); "
                            "run `edgehub hub certs --force`") from None

    def write_settings(self, settings: TlsSettings) -> None:
        _write(self.settings_path, json.dumps(settings.model_dump(), indent=2).encode() + b"\n", 0o644)

    def enabled(self) -> bool:
        """TLS is on: the material is there and `tls.json` says enabled."""
        settings = self.read_settings()
        return bool(settings and settings.enabled and self.complete())


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomic write with `mode` set before any byte lands."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_hosts(*extra: str | None) -> list[str]:
    """Names the server certificate covers: localhost, loopback addresses, this machine's name,
    and `extra` (bind addresses other than the wildcard, public host names)."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *[e for e in extra if e]]
    return list(dict.fromkeys(n for n in names if n not in ("0.0.0.0", "::", "")))


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(common_name: str = "edgehub hub CA", days: int = CA_DAYS,
            now: dt.datetime | None = None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate that can sign server certificates (path length 0)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_server_cert(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, hosts: list[str],
                     days: int = DEFAULT_DAYS, now: dt.datetime | None = None
                     ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate for `hosts` (DNS names or IP addresses), signed by the CA."""
    if not hosts:
        raise CertError("a server certificate needs at least one host name or address")
    now = now or dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(_san(hosts), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def generate(home: Path, hosts: list[str], *, days: int = DEFAULT_DAYS, force: bool = False) -> TlsPaths:
    """Make (or, with `force`, remake) the CA and a server certificate for `hosts`.

    An existing CA made by the hub is kept (devices already trust it) unless `force`; only the
    server certificate is renewed for the new host list.
    """
    paths = TlsPaths(home)
    current = paths.read_settings()
    if current is not None and current.source == "supplied" and not force:
        raise CertError(f"{paths.root} holds certificates you supplied; use --force to replace them "
                        "with generated ones (devices must then get the new ca.pem)")
    if paths.ca_cert.is_file() and paths.ca_key.is_file() and not force:
        ca_cert = _load_cert(paths.ca_cert)
        ca_key = _load_key(paths.ca_key)
    else:
        ca_cert, ca_key = make_ca()
        _write(paths.ca_key, _pem_key(ca_key), 0o600)
        _write(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    cert, key = make_server_cert(ca_cert, ca_key, hosts, days)
    _write(paths.server_key, _pem_key(key), 0o600)
    _write(paths.server_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    paths.write_settings(TlsSettings(enabled=True, hosts=hosts, source="generated"))
    return paths


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError:
        raise CertError(f"{path}: no such file") from None
    except ValueError:
        raise CertError(f"{path}: not a PEM certificate") from None


def _load_key(path: Path):
    try:
        return serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise CertError(f"{path}: no such file") from None
    except (ValueError, TypeError):
        raise CertError(f"{path}: not an unencrypted PEM private key") from None


def _public_der(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def check_supplied(ca_file: Path, cert_file: Path, key_file: Path,
                   now: dt.datetime | None = None) -> list[str]:
    """Problems with a user-supplied set (empty when it is usable)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    ca, cert, key = _load_cert(ca_file), _load_cert(cert_file), _load_key(key_file)
    problems = []
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        problems.append(f"{Path(key_file).name} is not the key of {Path(cert_file).name}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        problems.append(f"{Path(cert_file).name} is not signed by {Path(ca_file).name}")
    for name, c in ((Path(ca_file).name, ca), (Path(cert_file).name, cert)):
        if not c.not_valid_before_utc <= now <= c.not_valid_after_utc:
            problems.append(f"{name} is not valid now (valid {c.not_valid_before_utc:%Y-%m-%d} to "
                            f"{c.not_valid_after_utc:%Y-%m-%d})")
    return problems


def install_supplied(home: Path, ca_file: Path, cert_file: Path, key_file: Path) -> TlsPaths:
    """Check and copy the user's CA, server certificate and key into `<home>/tls/`."""
    problems = check_supplied(ca_file, cert_file, key_file)
    if problems:
        raise CertError("; ".join(problems))
    paths = TlsPaths(home)
    cert = _load_cert(cert_file)
    hosts = [str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value] \
        if _has_san(cert) else []
    _write(paths.server_key, Path(key_file).read_bytes(), 0o600)
    _write(paths.server_cert, Path(cert_file).read_bytes(), 0o644)
    _write(paths.ca_cert, Path(ca_file).read_bytes(), 0o644)
    paths.ca_key.unlink(missing_ok=True)  # not ours: a later `hub certs` must not sign with a stale key
    paths.write_settings(TlsSettings(enabled=True, hosts=hosts, source="supplied"))
    return paths


def _has_san(cert: x509.Certificate) -> bool:
    try:
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    return True


def fingerprint(path: Path) -> str:
    """SHA-256 fingerprint of a PEM certificate, as colon-separated hex (what people compare)."""
    digest = _load_cert(path).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def server_context(paths: TlsPaths) -> ssl.SSLContext:
    """An SSL context for the hub's HTTPS server (TLS 1.2 or newer)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(paths.server_cert), str(paths.server_key))
    except (OSError, ssl.SSLError) as exc:
        raise CertError(f"cannot load {paths.server_cert} with its key: {exc}") from None
    return context


__all__ = ["CertError", "TlsPaths", "TlsSettings", "check_supplied", "default_hosts", "fingerprint",
           "generate", "install_supplied", "make_ca", "make_server_cert", "server_context"]
