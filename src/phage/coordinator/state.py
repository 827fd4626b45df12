"""The coordinator's data directory: database, CA, blobs, secrets."""

from __future__ import annotations

import os
from pathlib import Path

from phage.pki.ca import new_token


class DataDir:
    """Paths under the data directory, and the secrets kept there."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.pki = self.root / "pki"
        self.blobs = self.root / "blobs"
        self.admin_key_file = self.root / "admin-key"
        self.join_token_file = self.root / "join-token"
        self.info_file = self.root / "coordinator.json"
        """Addresses, join token and CA fingerprint, for tools and tests (a secret: it holds the token)."""

    @property
    def secret_files(self) -> tuple[Path, ...]:
        """Files only the coordinator's user may read."""
        return (self.admin_key_file, self.join_token_file, self.info_file)

    def prepare(self) -> None:
        """Create the directory (mode 0700: it holds the CA key); make older secret files private."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.pki.mkdir(exist_ok=True)
        self.blobs.mkdir(exist_ok=True)
        for path in self.secret_files:
            if path.exists():
                os.chmod(path, 0o600)

    def join_token(self) -> str:
        """The pool's join token, generated on first start."""
        return read_or_create_secret(self.join_token_file, new_token)


def read_or_create_secret(path: Path, make: object) -> str:
    """Read a one-line secret, or create it with mode 0600."""
    if path.exists():
        return path.read_text().strip()
    assert callable(make)
    value = str(make())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value
