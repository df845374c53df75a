"""How the TUF client reads a model repository, and the limits no mirror can get around.

``resolve_source`` turns ``update.tuf_source`` into base URLs and a fetcher: an
``http(s)://`` repository is read by :class:`HttpFetcher`, a local directory (USB stick,
NFS mirror) by :class:`DirectoryFetcher`. Either is wrapped in a :class:`GuardedFetcher`,
which holds every fetch of one operation (a refresh, a bundle download) to
:class:`FetchLimits`:

- an overall deadline for the whole operation, however many files it reads;
- a minimum rate once a grace period has passed (a mirror dripping 1 byte every 2 s
  fails within seconds, not hours);
- a stall timeout on every socket read (a mirror that sends nothing);
- ``max_metadata_bytes`` for every metadata file, whatever length the signed metadata
  declares for it (ngclient lets a declared snapshot/targets length override its own
  caps, so an attacker holding the timestamp key could make the hub buffer 400 MiB).

Violations raise ngclient's own exceptions (``SlowRetrievalError`` subclasses,
``DownloadLengthMismatchError``), which the client turns into precise errors.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import urllib3
from tuf.api import exceptions as tuf_errors
from tuf.ngclient.fetcher import FetcherInterface
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

from services.kit.errors import InvalidArgument, NotFound

_CHUNK = 1 << 16


@dataclass(frozen=True)
class FetchLimits:
    """Limits of every operation against the model repository (``update.fetch_*``)."""

    deadline_seconds: float = 120.0
    min_bytes_per_second: float = 4096.0
    # The minimum rate applies once a file has been downloading this long.
    grace_seconds: float = 10.0
    # No byte for this long on a socket ends the fetch.
    stall_seconds: float = 10.0
    max_metadata_bytes: int = 4 << 20

    def __post_init__(self) -> None:
        for name in ("deadline_seconds", "grace_seconds", "stall_seconds"):
            if not getattr(self, name) > 0:
                raise InvalidArgument(f"{name} must be > 0, got {getattr(self, name)}")
        if self.min_bytes_per_second < 0:
            raise InvalidArgument("min_bytes_per_second must be >= 0")
        if self.max_metadata_bytes <= 0:
            raise InvalidArgument(
                f"max_metadata_bytes must be positive, got {self.max_metadata_bytes}"
            )


class FetchTooSlow(tuf_errors.SlowRetrievalError):
    """The repository was slower than :class:`FetchLimits` allow."""


class DirectoryFetcher(FetcherInterface):
    """Serves ``file://`` URLs below one directory (a local mirror of the repository).

    Only regular files inside ``root`` are served; a missing file is an HTTP-like 404
    (which ends ngclient's root-chain walk).
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _fetch(self, url: str) -> Iterator[bytes]:
        parsed = urlparse(url)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise tuf_errors.DownloadError(f"{url}: only local file:// URLs are served")
        path = Path(url2pathname(unquote(parsed.path))).resolve()
        if path != self.root and self.root not in path.parents:
            raise tuf_errors.DownloadHTTPError(f"{url}: outside of {self.root}", 403)
        if not path.is_file():
            raise tuf_errors.DownloadHTTPError(f"{url}: not found", 404)
        return self._chunks(path.open("rb"))

    @staticmethod
    def _chunks(f: BinaryIO) -> Iterator[bytes]:
        with f:
            while chunk := f.read(_CHUNK):
                yield chunk


class HttpFetcher(Urllib3Fetcher):
    """ngclient's urllib3 fetcher, yielding whatever arrived instead of waiting for
    full chunks: a dripping mirror then hands over every byte, so the guard can see
    the rate and the deadline (``response.stream`` would block for a whole chunk)."""

    def __init__(self, stall_seconds: float) -> None:
        super().__init__(socket_timeout=stall_seconds, app_user_agent="roost-hub")  # type: ignore[arg-type]

    def _chunks(self, response: urllib3.response.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            while data := response.read1(self.chunk_size):
                yield data
        except urllib3.exceptions.TimeoutError as e:
            raise tuf_errors.SlowRetrievalError(
                f"no data for {self.socket_timeout:g} s (stalled mirror)"
            ) from e
        finally:
            response.release_conn()


class GuardedFetcher(FetcherInterface):
    """Holds every fetch to ``limits`` and remembers the last URL (for messages)."""

    def __init__(self, inner: FetcherInterface, metadata_url: str, limits: FetchLimits) -> None:
        self.inner = inner
        self.metadata_url = metadata_url
        self.limits = limits
        self.last_url = ""
        self._until: float | None = None

    @contextlib.contextmanager
    def operation(self) -> Iterator[None]:
        """One operation (refresh or download): its fetches share one deadline."""
        self._until = time.monotonic() + self.limits.deadline_seconds
        try:
            yield
        finally:
            self._until = None

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.last_url = url
        self._check_deadline()
        return self._guarded(url, self.inner.fetch(url))

    def _guarded(self, url: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        limits = self.limits
        cap = limits.max_metadata_bytes if url.startswith(self.metadata_url) else None
        started = time.monotonic()
        received = 0
        for chunk in chunks:
            received += len(chunk)
            if cap is not None and received > cap:
                raise tuf_errors.DownloadLengthMismatchError(
                    f"more than max_metadata_bytes={cap}, whatever length is declared"
                )
            self._check_deadline()
            elapsed = time.monotonic() - started
            if elapsed > limits.grace_seconds and received < limits.min_bytes_per_second * elapsed:
                raise FetchTooSlow(
                    f"{received} bytes in {elapsed:.0f} s, below the minimum rate of "
                    f"{limits.min_bytes_per_second:g} bytes/s"
                )
            yield chunk

    def _check_deadline(self) -> None:
        if self._until is not None and time.monotonic() > self._until:
            raise FetchTooSlow(
                f"not done within the {self.limits.deadline_seconds:g} s deadline of a fetch"
            )


def resolve_source(source: str | Path, limits: FetchLimits) -> tuple[str, str, FetcherInterface]:
    """(metadata base URL, targets base URL, unguarded fetcher) of ``update.tuf_source``."""
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        base = source.rstrip("/")
        return f"{base}/metadata/", f"{base}/targets/", HttpFetcher(limits.stall_seconds)
    if isinstance(source, str) and "://" in source:
        raise InvalidArgument(
            f"model update source '{source}' must be an http(s):// URL or a local directory"
        )
    root = Path(source).resolve()
    if not (root / "metadata").is_dir():
        raise NotFound(
            f"model update source {root} has no metadata/ directory; point it at the "
            "repository root (the directory holding metadata/ and targets/)"
        )
    return (
        (root / "metadata").as_uri() + "/",
        (root / "targets").as_uri() + "/",
        DirectoryFetcher(root),
    )
