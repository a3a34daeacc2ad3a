"""Documents already recorded (`invoice_documents.path`): whether they are still there,
their bytes, writing one again where it was (`billing invoices verify`), setting an
altered one aside, removing one, and its link for a browser (`document_linker`). A
recorded document is the absolute path of a file or the `s3://bucket/key` URL of an
object (see `document_store`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from billing_core.config import Settings, get_settings
from billing_core.store import files
from billing_core.store.document_store import (
    CONTENT_TYPES,
    UnsafeKey,
    as_os_error,
    filesystem,
    is_object_url,
    split_object_url,
)


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
