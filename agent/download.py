"""Resumable, verified artifact downloads for the agent.

HTTP goes through the standard library's http.client on purpose: a device needs no extra
dependency, and nothing follows redirects or sends credentials anywhere we did not ask for.
Bytes land in `<dest>.part`; only a file whose sha256 matches is renamed (atomically) to
`dest`, so `dest` is never an unverified file. URLs carry a signature: they are never logged
or put in error messages (see `_safe`).
"""

from __future__ import annotations

import base64
import http.client
import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from edgehub.agent.tls import describe as describe_tls
from edgehub.protocol.files import sha256_file
from edgehub.protocol.manifest import Manifest, SignatureError, SignedManifest, verify_manifest

log = logging.getLogger(__name__)

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$", re.ASCII)


class DownloadError(Exception):
    """The artifact could not be fetched (network, HTTP status, a server that lies)."""


class VerificationError(DownloadError):
    """The bytes or the manifest do not check out; nothing was activated or kept."""


class _Retry(Exception):
    """A transient failure: the loop resumes from the .part after a back-off."""


def _safe(url: str) -> str:
    """The URL without its query string (which holds the signature), for logs and errors."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return  # directories cannot be opened for fsync on Windows
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def download(
    url: str,
    dest: Path,
    *,
    sha256: str,
    size: int | None,
    username: str,
    password: str,
    timeout_s: float = 30,
    chunk: int = 256 * 1024,
    progress: Callable[[int, int | None], None] | None = None,
    max_bytes: int | None = None,
    retries: int = 4,
    backoff_s: float = 0.5,
    ssl_context: ssl.SSLContext | None = None,
) -> Path:
    """Fetch `url` to `dest`, resuming `<dest>.part`, and return `dest` once its sha256 matches.

    `timeout_s` bounds each socket operation (connect, each read), not the whole transfer.
    A cut connection or 5xx is retried `retries` times with exponential back-off, resuming
    each time; 4xx answers and servers that announce the wrong size fail at once.
    """
    dest = Path(dest)
    if not _SHA_RE.match(sha256):
        raise DownloadError(f"not a sha256 digest (64 lower-case hex chars): {sha256!r}")
    if ":" in username:
        raise DownloadError("username must not contain ':' (HTTP Basic auth)")
    bounds = [b for b in (size, max_bytes) if b is not None]
    limit = min(bounds) if bounds else None  # never accept more bytes than this
    if size is not None and max_bytes is not None and size > max_bytes:
        raise DownloadError(f"{dest.name}: artifact is {size} bytes, over the {max_bytes} limit")

    if dest.exists():
        if (size is None or dest.stat().st_size == size) and sha256_file(dest) == sha256:
            return dest  # already downloaded and verified: no network
        log.warning("%s exists but does not match sha256 %s; downloading again", dest, sha256[:12])
        dest.unlink()  # never leave an unverified file at dest, even if the download fails
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_suffix(dest.suffix + ".part")
    token = base64.b64encode(f"{username}:{password}".encode()).decode()

    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, token, size, limit, timeout_s, chunk, progress, ssl_context)
            break
        except _Retry as exc:
            if attempt == retries:
                raise DownloadError(
                    f"{_safe(url)}: giving up after {retries + 1} tries: {exc}") from None
            delay = min(backoff_s * (2**attempt), 30.0)  # capped: a device may wait minutes
            log.info("download of %s interrupted (%s); resuming in %.2fs", dest.name, exc, delay)
            time.sleep(delay)

    got = sha256_file(part)
    if got != sha256:
        part.unlink(missing_ok=True)
        raise VerificationError(f"sha256 mismatch for {dest.name}: expected {sha256}, got {got}")
    os.replace(part, dest)
    _fsync_dir(dest.parent)
    return dest


def _fetch_once(
    url: str,
    part: Path,
    token: str,
    size: int | None,
    limit: int | None,
    timeout_s: float,
    chunk: int,
    progress: Callable[[int, int | None], None] | None,
    ssl_context: ssl.SSLContext | None,
) -> None:
    """One HTTP exchange that brings `part` to completion, or raises _Retry / DownloadError."""
    offset = part.stat().st_size if part.exists() else 0
    if limit is not None and offset > limit:
        log.warning("%s is larger than the artifact; starting over", part.name)
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return  # a previous run fetched every byte; the caller verifies them

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DownloadError(f"unsupported artifact URL {_safe(url)} (need http or https)")
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout_s,
            context=ssl_context or ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    headers = {"Authorization": f"Basic {token}", "Accept-Encoding": "identity",
               "User-Agent": "edgehub-agent"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
        start, total = _check_response(resp, url, offset, size, limit, part)
        _stream(resp, part, start, total if total is not None else size, limit, chunk, progress)
    except ssl.SSLCertVerificationError as exc:
        # Not transient: retrying cannot make an untrusted server trusted.
        raise DownloadError(f"{_safe(url)}: {describe_tls(exc)}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _Retry(f"{type(exc).__name__}: {exc}") from None
    finally:
        conn.close()


def _check_response(
    resp: http.client.HTTPResponse, url: str, offset: int, size: int | None,
    limit: int | None, part: Path,
) -> tuple[int, int | None]:
    """(where the body starts in the file, total object size if known) for a usable answer."""
    where = _safe(url)
    status = resp.status
    if status == 200:
        total = resp.length  # None when the server sent no Content-Length
        start = 0  # the server ignored our Range (or we sent none): start over
    elif status == 206:
        match = _CONTENT_RANGE_RE.match(resp.getheader("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            part.unlink(missing_ok=True)  # an answer we did not ask for: refetch from zero
            raise _Retry(f"unexpected Content-Range {resp.getheader('Content-Range')!r}")
        start = offset
        total = None if match.group(3) == "*" else int(match.group(3))
    elif status == 416:
        match = re.match(r"^bytes \*/(\d+)$", resp.getheader("Content-Range", ""), re.ASCII)
        if match and int(match.group(1)) == offset:
            return offset, offset  # the .part already holds the whole object
        part.unlink(missing_ok=True)
        raise _Retry("server rejected the resume range; starting over")
    elif status in (429, 500, 502, 503, 504):
        raise _Retry(f"HTTP {status} from {where}")
    else:
        raise DownloadError(f"HTTP {status} from {where}: {_reason(resp)}")
    if total is not None and size is not None and total != size:
        raise DownloadError(f"{where}: server announces {total} bytes, expected {size}")
    if total is not None and limit is not None and total > limit:
        raise DownloadError(f"{where}: server announces {total} bytes, over the {limit} limit")
    return start, total


def _reason(resp: http.client.HTTPResponse) -> str:
    """The first line of a (small) error body, printable characters only."""
    try:
        text = resp.read(200).decode("ascii", "replace").splitlines()
    except (OSError, http.client.HTTPException):
        text = []  # the status alone is the error; a broken body must not hide it
    line = text[0] if text else (resp.reason or "")
    return "".join(c for c in line if c.isprintable())[:120] or "no reason given"


def _stream(
    resp: http.client.HTTPResponse, part: Path, start: int, total: int | None,
    limit: int | None, chunk: int, progress: Callable[[int, int | None], None] | None,
) -> None:
    if total is not None and start >= total:
        return
    done = start
    with open(part, "r+b" if start and part.exists() else "wb") as fh:
        fh.seek(start)
        fh.truncate()
        while True:
            block = resp.read(chunk)
            if not block:
                break
            done += len(block)
            if limit is not None and done > limit:
                fh.close()
                part.unlink(missing_ok=True)
                raise DownloadError(f"server sent more than the {limit} bytes expected")
            fh.write(block)
            if progress is not None:
                progress(done, total)
        fh.flush()
        os.fsync(fh.fileno())
    if total is not None and done < total:
        # http.client returns b"" on an early EOF instead of raising: this is a cut connection
        # (`total` falls back to the expected size when the server sent no length).
        raise _Retry(f"connection closed at byte {done} of {total}")


def verify_artifact(path: Path, signed: SignedManifest, public_keys: bytes | Sequence[bytes]) -> Manifest:
    """Return the manifest if it is signed by a trusted key and `path` matches it exactly."""
    try:
        manifest = verify_manifest(signed, public_keys)
    except SignatureError as exc:
        raise VerificationError(f"manifest rejected: {exc}") from exc
    path = Path(path)
    try:
        actual_size = path.stat().st_size
    except FileNotFoundError:
        raise VerificationError(f"artifact {path} is missing") from None
    if actual_size != manifest.size_bytes:
        raise VerificationError(
            f"{path.name} is {actual_size} bytes, manifest says {manifest.size_bytes}")
    got = sha256_file(path)
    if got != manifest.sha256:
        raise VerificationError(
            f"sha256 mismatch for {path.name}: manifest says {manifest.sha256}, file is {got}")
    return manifest


__all__ = ["DownloadError", "VerificationError", "download", "verify_artifact"]
