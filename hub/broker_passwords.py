"""The managed broker's password file, edited only through the real ``mosquitto_passwd`` tool.

Passwords are handed to ``mosquitto_passwd`` on its stdin, never on its command line, so they
do not show up in ``ps``; the file is edited on a copy and moved into place atomically, under a
lock, so a concurrent reload never sees half a file and two editors never lose an update.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgehub.hub.broker_tools import (
    BrokerError,
    find_mosquitto_passwd,
    locked,
    validate_password,
    validate_username,
    write_private,
)

log = logging.getLogger("edgehub.hub.broker")


class PasswordFile:
    """`path` (a Mosquitto password file) inside the broker `directory`, whose lock it shares."""

    def __init__(self, path: Path, directory: Path):
        self.path = path
        self.directory = directory

    def users(self) -> list[str]:
        """User names in the password file, in file order."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        names = []
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#") and ":" in line:
                names.append(line.split(":", 1)[0])
        return names

    def has_user(self, user: str) -> bool:
        return validate_username(user) in self.users()

    def ensure_exists(self) -> None:
        with locked(self.directory):
            if not self.path.exists():
                write_private(self.path, "")

    @staticmethod
    def _run(args: list[str], *, stdin: str | None, what: str) -> subprocess.CompletedProcess:
        tool = find_mosquitto_passwd()
        try:
            return subprocess.run([tool, *args], input=stdin, capture_output=True, text=True,
                                  timeout=30, check=False)
        except subprocess.TimeoutExpired:
            raise BrokerError(f"mosquitto_passwd timed out while {what}") from None

    @staticmethod
    def _tool_message(result: subprocess.CompletedProcess) -> str:
        # stdout holds only the "Password:" prompts; stderr the error. Neither echoes the password.
        text = " ".join(line.strip() for line in (result.stderr or "").splitlines() if line.strip())
        return text[:300] or f"exit code {result.returncode}"

    def _edit(self, build_args, what: str, stdin: str | None) -> None:
        """Run mosquitto_passwd on a private copy, then move the copy into place."""
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".passwd.")
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            exists = self.path.exists() and self.path.stat().st_size > 0
            if exists:
                shutil.copyfile(self.path, tmp_path)
            else:
                tmp_path.unlink()
            result = self._run(build_args(tmp_path, exists), stdin=stdin, what=what)
            if result.returncode != 0:
                raise BrokerError(f"mosquitto_passwd failed {what}: {self._tool_message(result)}")
            os.chmod(tmp_path, 0o600)
            os.replace(tmp_path, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()

    def set_password(self, user: str, password: str) -> None:
        """Add `user` or change its password (hashed by mosquitto_passwd, sha512-pbkdf2).

        Takes effect in a running broker after a reload (SIGHUP).
        """
        validate_username(user)
        validate_password(password)
        self.directory.mkdir(parents=True, exist_ok=True)
        with locked(self.directory):
            # On stdin (twice: the tool asks to confirm), so it never appears in `ps`.
            self._edit(lambda tmp, exists: [str(tmp), user] if exists else ["-c", str(tmp), user],
                       f"setting the password of {user}", f"{password}\n{password}\n")
        log.info("broker: password set for user %s", user)

    def remove_user(self, user: str) -> bool:
        """Remove `user` from the password file; False if it was not there."""
        validate_username(user)
        with locked(self.directory):
            if user not in self.users():
                return False
            self._edit(lambda tmp, exists: ["-D", str(tmp), user], f"removing user {user}", None)
        log.info("broker: user %s removed", user)
        return True


__all__ = ["PasswordFile"]
