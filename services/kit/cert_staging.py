"""The commit protocol of a certificate renewal (cert_renewal.py): stage, mark, move.

New files are staged in ``<certs>/.renew/``; ``.renew/COMMITTED`` marks the set
complete; then each file is renamed over the old one and the staging directory removed.
:func:`finish` completes a committed set and discards an uncommitted one, so after any
interruption the next run leaves either the whole old set or the whole new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from services.kit.files import fsync_dir

STAGING = ".renew"
COMMITTED = "COMMITTED"
LOCK = ".renew.lock"


@contextlib.contextmanager
def locked(certs_dir: Path) -> Iterator[None]:
    fd = os.open(certs_dir / LOCK, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def finish(certs_dir: Path) -> list[str]:
    """Complete a committed renewal, discard an uncommitted one. Returns the files moved."""
    staging = certs_dir / STAGING
    if not staging.is_dir():
        return []
    moved = []
    if (staging / COMMITTED).is_file():
        for f in sorted(staging.iterdir()):
            if f.name != COMMITTED and not f.name.startswith("."):
                os.replace(f, certs_dir / f.name)
                moved.append(f.name)
        fsync_dir(certs_dir)
    shutil.rmtree(staging)
    fsync_dir(certs_dir)
    return moved


def finish_pending(certs_dir: Path) -> list[str]:
    """Complete (or discard) a renewal that was interrupted; the files it moved."""
    if not (certs_dir / STAGING).is_dir():
        return []
    with locked(certs_dir):
        return finish(certs_dir)
