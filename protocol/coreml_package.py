"""The Core ML variant package: a zip holding one `model.mlpackage`, written by
the hub's converter and unpacked (safely) by the device.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path, PurePosixPath

PACKAGE_NAME = "model.mlpackage"


MAX_UNPACKED_BYTES = 8 << 30  # a package larger than this is refused rather than filling the disk


class PackageError(ValueError):
    """A zip that is not a well-formed edgehub Core ML package."""


def _safe_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    members, total = [], 0
    for info in archive.infolist():
        parts = PurePosixPath(info.filename).parts
        if not parts or parts[0] != PACKAGE_NAME or ".." in parts or info.filename.startswith("/") or "\\" in info.filename:
            raise PackageError(f"unexpected entry {info.filename!r} (entries must lie under {PACKAGE_NAME}/)")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise PackageError(f"entry {info.filename!r} is a symbolic link")
        total += info.file_size
        if total > MAX_UNPACKED_BYTES:
            raise PackageError(f"unpacks to more than {MAX_UNPACKED_BYTES >> 30} GiB")
        members.append(info)
    return members


def extract_mlpackage(zip_path: Path, dest_dir: Path) -> Path:
    """Unpack an edgehub Core ML zip into dest_dir; returns the .mlpackage directory."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = _safe_members(archive)
            target = Path(dest_dir) / PACKAGE_NAME
            if target.exists():
                shutil.rmtree(target)
            for info in members:
                archive.extract(info, dest_dir)
    except zipfile.BadZipFile as exc:
        raise PackageError(f"{Path(zip_path).name}: not a zip file ({exc})") from None
    if not (target / "Manifest.json").is_file():
        raise PackageError(f"{Path(zip_path).name}: no {PACKAGE_NAME}/Manifest.json inside")
    return target
