"""Where invoice documents are kept: a local folder, or an object store that every worker
of a cluster writes to (`BILLING_OUTPUT_DIR=s3://bucket/prefix`, through fsspec/s3fs).

A document is recorded (`invoice_documents.path`) as what finds it again in either: the
absolute path of a file, or the `s3://bucket/key` URL of an object. Everything that reads
a recorded document back goes through here: whether it is still there, its bytes, writing
it again where it was (`billing invoices verify`), removing it, and its link for a browser
(`document_linker`).

The local folder is the hot path of a close writing thousands of documents: it uses the
file system directly (`files.write_file`, `Path`), never fsspec.
"""

from __future__ import annotations

import errno
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from billing_core.config import Settings, get_settings
from billing_core.store import files

OBJECT_SCHEME = "s3://"
# SigV4, which S3 requires of new buckets, signs a link for at most seven days.
LONGEST_LINK_SECONDS = 7 * 24 * 3600
# S3's own rules for a bucket name (lower case letters, digits, '.' and '-').
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")
KEY_LIMIT = 1024  # bytes, S3's longest key
CONTENT_TYPES = {"pdf": "application/pdf", "html": "text/html; charset=utf-8"}


class UnsafeKey(OSError):
    """An object key the product will not write, delete or link to: one that a browser,
    a proxy or a sync tool could read as another path (a `..` or `.` part, an empty part,
    an absolute key, a backslash or a control character)."""

    def __init__(self, url: str, why: str):
        super().__init__(errno.EINVAL, f"unsafe object key ({why})", url)

    def __str__(self) -> str:
        return f"{self.strerror}: {self.filename}"


def is_object_url(text: str | Path) -> bool:
    return isinstance(text, str) and text.startswith(OBJECT_SCHEME)


def _check_key(url: str, key: str) -> None:
    if key.startswith("/"):
        raise UnsafeKey(url, "an absolute key")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise UnsafeKey(url, "an empty, '.' or '..' part")
    if _CONTROL.search(key):
        raise UnsafeKey(url, "a backslash or a control character")
    if len(key.encode("utf-8", "surrogatepass")) > KEY_LIMIT:
        raise UnsafeKey(url, f"longer than {KEY_LIMIT} bytes")


def split_object_url(url: str, prefix: bool = False) -> tuple[str, str]:
    """The bucket and key of `s3://bucket/key`, or UnsafeKey. With `prefix`, the URL is a
    folder: the key may be empty and may end in one '/'."""
    if not is_object_url(url):
        raise UnsafeKey(url, "not an s3:// URL")
    bucket, _, key = url[len(OBJECT_SCHEME) :].partition("/")
    if _BUCKET.fullmatch(bucket) is None:
        raise UnsafeKey(url, "not a bucket name")
    if prefix:
        key = key.removesuffix("/")
        if not key:
            return bucket, ""
    _check_key(url, key)
    return bucket, key


def filesystem(settings: Settings | None = None) -> Any:
    """The object store's file system (s3fs). Credentials, region and endpoint come from
    botocore's usual configuration (AWS_ACCESS_KEY_ID..., AWS_ENDPOINT_URL, ~/.aws, an
    instance role); BILLING_S3_ENDPOINT_URL overrides the endpoint. Listings are not
    cached: other workers write to the same folders."""
    import s3fs

    settings = settings or get_settings()
    return s3fs.S3FileSystem(
        endpoint_url=settings.s3_endpoint_url or None,
        # Signature version 4: what AWS requires of new buckets, and of presigned links.
        config_kwargs={"signature_version": "s3v4"},
        use_listings_cache=False,
    )


class _Listings:
    """Which objects exist, one listing per folder (a billing date's documents) rather
    than one request per document; kept for one render."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.fs: Any = None
        self.folders: dict[str, set[str]] = {}

    def exists(self, url: str) -> bool:
        try:
            split_object_url(url)
        except UnsafeKey:
            return False  # never looked up, so never trusted
        folder = url[len(OBJECT_SCHEME) :].rpartition("/")[0]
        if folder not in self.folders:
            self.fs = self.fs or filesystem(self.settings)
            try:
                self.folders[folder] = set(self.fs.ls(folder, detail=False))
            except FileNotFoundError:
                self.folders[folder] = set()
            except Exception as error:  # noqa: BLE001 - the store's, not a family's
                raise as_os_error(error, OBJECT_SCHEME + folder) from error
        return url[len(OBJECT_SCHEME) :] in self.folders[folder]


class _LocalWrites:
    """Writes each document as it comes (a file write is quick): errors are raised."""

    def put(self, path: Path, content: bytes, replace: bool = True) -> None:
        files.write_file(path, content, replace=replace)

    def finish(self) -> dict[Any, OSError]:
        return {}

    def __enter__(self) -> _LocalWrites:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _Uploads:
    """Writes documents to the object store in the background, a few at once: a PUT waits
    on the network, and the next documents are laid out meanwhile. At most `4 × workers`
    documents wait in memory. An object is replaced whole or not at all (a PUT), so
    `replace` needs nothing more. `finish` waits and returns the ones not written.

    Once an upload has failed, the next ones are refused at once with its reason: s3fs
    and botocore retry a request for some 11 s before giving up on an unreachable store,
    which over a close's thousands of documents would take hours to say the same thing.
    The close reports them missing; the next close (or a Retry) writes them.
    """

    def __init__(self, fs: Any, workers: int = 8):
        self.fs = fs
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="billing-upload")
        self.slots = threading.BoundedSemaphore(4 * workers)
        self.pending: list[tuple[str, Future]] = []
        self.broken: OSError | None = None

    def put(self, url: str, content: bytes, replace: bool = True) -> None:
        if self.broken is not None:
            raise OSError(self.broken.errno, self.broken.strerror, url)
        self.slots.acquire()
        future = self.pool.submit(self._put, url, content)
        future.add_done_callback(lambda _: self.slots.release())
        self.pending.append((url, future))

    def _put(self, url: str, content: bytes) -> None:
        if self.broken is not None:
            raise OSError(self.broken.errno, self.broken.strerror, url)
        kind = CONTENT_TYPES.get(url.rpartition(".")[2], "application/octet-stream")
        try:
            self.fs.pipe_file(url, content, ContentType=kind)
        except Exception as error:
            self.broken = self.broken or as_os_error(error, url)
            raise

    def finish(self) -> dict[str, OSError]:
        failed: dict[str, OSError] = {}
        for url, future in self.pending:
            error = future.exception()
            if error is not None:
                failed[url] = as_os_error(error, url)
        self.pending = []
        return failed

    def __enter__(self) -> _Uploads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True)


def as_os_error(error: BaseException, url: str) -> OSError:
    """A failed request as the OSError the render step reports (s3fs raises OSErrors for
    S3's refusals; a connection error is botocore's own)."""
    if isinstance(error, OSError) and error.strerror:
        return error
    return OSError(errno.EIO, f"{type(error).__name__}: {error}", url)


class LocalFolder:
    """Documents as files under a folder (`BILLING_OUTPUT_DIR`, a path)."""

    def __init__(self, root: str | Path, settings: Settings):
        self.root = Path(root)
        self.folders: dict[Path, OSError | None] = {}
        self.resolved: dict[Path, Path] = {}  # folder -> its absolute path, links resolved
        self.listings = _Listings(settings)  # documents recorded in an object store before

    def target(self, key: str) -> Path:
        return self.root / key

    def prepare(self, path: Path) -> OSError | None:
        """Make the document's folder, each folder once (or refuse it once): the error."""
        if path.parent not in self.folders:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.folders[path.parent] = None
            except OSError as error:
                self.folders[path.parent] = error
        return self.folders[path.parent]

    def record(self, path: Path) -> str:
        """The absolute path a document is recorded as (symbolic links resolved): each
        folder resolved once, the file itself only when it is a link (a close records
        thousands of documents in a few folders)."""
        if path.is_symlink():
            return str(path.resolve())
        folder = self.resolved.get(path.parent)
        if folder is None:
            folder = self.resolved[path.parent] = path.parent.resolve()
        return str(folder / path.name)

    def exists(self, recorded: str) -> bool:
        if is_object_url(recorded):
            return self.listings.exists(recorded)
        return Path(recorded).exists()

    def current(self, recorded: str, path: Path) -> bool:
        """Whether an up-to-date document on record needs no writing: its file is there
        (a preview in an object store is written again here, and the object removed)."""
        return not is_object_url(recorded) and Path(recorded).exists()

    def writer(self) -> _LocalWrites:
        return _LocalWrites()


class ObjectFolder:
    """Documents as objects under `s3://bucket/prefix`. A prefix the product refuses
    (`UnsafeKey`) refuses each document with that reason, as a folder that cannot be
    written does: the close reports them missing and writes nothing."""

    def __init__(self, url: str, settings: Settings):
        self.settings = settings
        self.refused: UnsafeKey | None = None
        self.base = url.removesuffix("/")
        try:
            split_object_url(url, prefix=True)
        except UnsafeKey as error:
            self.refused = error
        self.listings = _Listings(settings)

    def target(self, key: str) -> str:
        return f"{self.base}/{key}"

    def prepare(self, url: str) -> OSError | None:
        if self.refused is not None:
            return self.refused
        try:
            split_object_url(url)
        except UnsafeKey as error:
            return error
        return None

    def record(self, url: str) -> str:
        return url

    def exists(self, recorded: str) -> bool:
        if is_object_url(recorded):
            return self.listings.exists(recorded)
        return Path(recorded).exists()

    def current(self, recorded: str, url: str) -> bool:
        """Whether an up-to-date document on record needs no writing: it is this object,
        and it is there (a preview in a local folder or under another prefix is written
        here, and the old one removed, so that every worker and every link finds it)."""
        return recorded == url and self.listings.exists(recorded)

    def writer(self) -> _Uploads:
        return _Uploads(filesystem(self.settings))


DocumentStore = LocalFolder | ObjectFolder


def document_store(settings: Settings | None = None) -> DocumentStore:
    """Where this process writes documents now (read per render: one listing cache each)."""
    settings = settings or get_settings()
    if is_object_url(settings.output_dir):
        return ObjectFolder(settings.output_dir, settings)
    return LocalFolder(settings.output_dir, settings)
