"""Secrets memberflow creates for itself (a vendor token it asked for on first use), kept on disk
outside git and outside any integration file.

A user's own credentials come from environment variables; a secret memberflow obtained from a
vendor has nowhere else to live, and asking the vendor again on every run may not be allowed (a
token can be bound to the first machine that used it). One file per secret, in a directory only
the owner can read: `$MEMBERFLOW_SECRETS_DIR`, else `<data dir>/secrets`. Values never reach a
log line or an exception message; names are safe to show.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

SECRETS_DIR_ENV = "MEMBERFLOW_SECRETS_DIR"
DATA_DIR_ENV = "MEMBERFLOW_DATA_DIR"  # the landing data dir (memberflow.landing.data_dir)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


def default_secrets_dir() -> Path:
    """`$MEMBERFLOW_SECRETS_DIR`, else `secrets/` in the data dir (`$MEMBERFLOW_DATA_DIR`, `data`).

    The data dir rule is the landing module's, restated so a client does not import the core."""
    explicit = os.environ.get(SECRETS_DIR_ENV, "").strip()
    if explicit:
        return Path(explicit).resolve()
    return Path(os.environ.get(DATA_DIR_ENV, "data")).resolve() / "secrets"


class SecretStore:
    """Named secrets, one file each, created 0600 in a 0700 directory; writes are atomic."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory if directory is not None else default_secrets_dir()

    def get(self, name: str) -> str | None:
        """The secret's value, or None when it was never stored (or is empty)."""
        path = self._path(name)
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return value or None

    def put(self, name: str, value: str) -> None:
        """Store `value` under `name`, replacing an old one in one rename (never half-written)."""
        if not value:
            raise ValueError(f"secret {name!r}: refusing to store an empty value")
        path = self._path(name)
        self._ensure_dir()
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=self.directory)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(value)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, name: str) -> bool:
        """Forget a secret; True when there was one."""
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            return False
        return True

    def _path(self, name: str) -> Path:
        if not _NAME.fullmatch(name):
            raise ValueError(f"secret name {name!r}: letters, digits, '_', '.', '-' only")
        return self.directory / name

    def _ensure_dir(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)  # mkdir's mode is masked by the umask; an old dir too
