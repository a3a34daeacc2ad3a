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
import shutil
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

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
        return str(path.resolve())

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


def remove(recorded: str) -> None:
    """Remove a recorded document (a file, or an object); one already gone is fine. An
    unsafe object key is refused (UnsafeKey), never deleted."""
    if is_object_url(recorded):
        split_object_url(recorded)
        try:
            filesystem().rm_file(recorded)
        except FileNotFoundError:
            pass
        except Exception as error:  # noqa: BLE001 - reported as a file not removed
            raise as_os_error(error, recorded) from error
        return
    Path(recorded).unlink(missing_ok=True)


# --- reading and writing a recorded document back (`billing invoices verify`) ------------

# Objects read at once when documents are checked: each GET waits on the network, and a
# batch is all that is held in memory.
READ_BATCH = 32


def read_recorded(
    recorded: list[str], settings: Settings | None = None
) -> Iterator[bytes | OSError | None]:
    """The bytes of each recorded document, in order: None for one that is not there, the
    OSError for one that cannot be read (permissions, a store that refuses or does not
    answer, an unsafe key). A file is read from its path; objects READ_BATCH at a time, 8
    requests at once, and after one request fails for the store's reasons the rest get its
    error without asking (as uploads do: each would retry for some 11 s). A recorded
    document is looked for only where its record says."""
    objects = any(is_object_url(r) for r in recorded)
    fs = filesystem(settings) if objects else None
    broken: list[OSError] = []

    def fetch(item: str) -> bytes | OSError | None:
        try:
            if not is_object_url(item):
                return Path(item).read_bytes()
            split_object_url(item)
            if broken:
                return OSError(broken[0].errno, broken[0].strerror, item)
            return fs.cat_file(item)
        except FileNotFoundError:
            return None
        except UnsafeKey as error:
            return error
        except Exception as error:  # noqa: BLE001 - the store's or the disk's, reported
            failed = as_os_error(error, item)
            if is_object_url(item):
                broken.append(failed)
            return failed

    if not objects:
        yield from map(fetch, recorded)  # files: one after the other, no threads
        return
    with ThreadPoolExecutor(8, thread_name_prefix="billing-read") as pool:
        for start in range(0, len(recorded), READ_BATCH):
            yield from pool.map(fetch, recorded[start : start + READ_BATCH])


def write_recorded(recorded: str, content: bytes, settings: Settings | None = None) -> None:
    """Write a document where its record says it is (a file, made whole or not at all, its
    folder made if it is gone; an object, with its Content-Type), whatever
    BILLING_OUTPUT_DIR says now: an issued invoice's records are frozen with it."""
    if is_object_url(recorded):
        split_object_url(recorded)
        kind = CONTENT_TYPES.get(recorded.rpartition(".")[2], "application/octet-stream")
        try:
            filesystem(settings).pipe_file(recorded, content, ContentType=kind)
        except Exception as error:  # noqa: BLE001 - reported as a document not written
            raise as_os_error(error, recorded) from error
        return
    path = Path(recorded)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_file(path, content, replace=True)


def set_aside(recorded: str, suffix: str, content: bytes, settings: Settings | None = None) -> str:
    """Keep a recorded document as it is now beside it, named with `suffix` added (before
    it is replaced): a file is copied with its times and permissions, an object written
    again from `content`, the bytes read from it. Returns where it was kept."""
    kept = recorded + suffix
    if is_object_url(recorded):
        write_recorded(kept, content, settings)
    else:
        shutil.copy2(recorded, kept)
    return kept


def document_linker(settings: Settings | None = None) -> Callable[[str], str]:
    """The link a browser opens for a recorded document (one function, built once for a
    table of them):

    - an object: a presigned HTTP(S) URL to GET it, valid BILLING_DOCUMENTS_LINK_EXPIRY
      seconds (default and most: 7 days);
    - a file under BILLING_OUTPUT_DIR, with BILLING_DOCUMENTS_BASE_URL set (the folder
      served by the operator's web server): that URL + its path in the folder, quoted;
    - any other file: a `file://` URL (the Prefect UI does not open those).
    """
    settings = settings or get_settings()
    base = _base_url(settings.documents_base_url)
    root = None if is_object_url(settings.output_dir) else Path(settings.output_dir).resolve()
    signer: list[Any] = []

    def link(recorded: str) -> str:
        if is_object_url(recorded):
            split_object_url(recorded)
            if not signer:
                signer.append(filesystem(settings))
            return signer[0].sign(recorded, expiration=settings.documents_link_expiry)
        path = Path(recorded)
        if base and root is not None and path.is_relative_to(root):
            return base + quote(path.relative_to(root).as_posix())
        return path.as_uri()

    return link


def _base_url(url: str | None) -> str | None:
    """BILLING_DOCUMENTS_BASE_URL ending in one '/'; refused when it is not HTTP(S) or
    carries a user name or password (the links are published in the Prefect UI)."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("BILLING_DOCUMENTS_BASE_URL must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "BILLING_DOCUMENTS_BASE_URL must not carry a user name or password: the links "
            "are published in the Prefect UI"
        )
    return url.rstrip("/") + "/"
