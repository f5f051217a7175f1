"""Telling a full disk and a storage that cannot be reached from other errors, the free
space, and the probe that a storage can be written before anything starts.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from sd_tune.errors import SdTuneError
from sd_tune.storage.files import is_uri, join, remove, root, write_bytes


def says_disk_full(text: str) -> bool:
    """Whether an error's text (a message, or a trial's ``error.txt``) is a full disk's.

    >>> says_disk_full("OSError: [Errno 28] No space left on device: '/data/x'")
    True
    """
    return "No space left on device" in text or "[Errno 28]" in text


# What pyarrow's S3 client (curl), NFS and FUSE say when the storage cannot be reached.
_UNREACHABLE = (
    "AWS Error NETWORK_CONNECTION",
    "Could not connect to server",
    "Couldn't connect to server",
    "Stale file handle",
    "Transport endpoint is not connected",
)


def says_unreachable(text: str) -> bool:
    """Whether an error's text says the storage could not be reached (an object store's
    server down or unreachable, a network file system gone).

    >>> says_unreachable("OSError: When reading 'x': AWS Error NETWORK_CONNECTION during "
    ...     "GetObject operation: curlCode: 7, Could not connect to server")
    True
    """
    return any(phrase in text for phrase in _UNREACHABLE)


def unreachable_reason(text: str, limit: int = 160) -> str:
    """The part of an error's text that says why the storage could not be reached, for a
    message: from the first phrase :func:`says_unreachable` knows, at most ``limit`` chars.

    >>> unreachable_reason("When reading key 'a/b' in bucket 'x': AWS Error "
    ...     "NETWORK_CONNECTION during GetObject operation", limit=40)
    'AWS Error NETWORK_CONNECTION during G...'
    """
    starts = [i for phrase in _UNREACHABLE if (i := text.find(phrase)) >= 0]
    part = text[min(starts) :] if starts else text
    part = " ".join(part.split())
    return part if len(part) <= limit else part[: limit - 3] + "..."


def _raised_from(err: BaseException | None, errnos: set[int], says: Any) -> bool:
    """Whether ``err``, or an error it was raised from, has one of ``errnos`` or a text that
    ``says``, however Ray or pyarrow wrapped it."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in errnos:
            return True
        if says(str(err)):
            return True
        err = err.__cause__ or err.__context__
    return False


def is_disk_full(err: BaseException | None) -> bool:
    """Whether ``err``, or an error it was raised from, is a full disk (``ENOSPC``), however
    Ray or pyarrow wrapped it.

    >>> is_disk_full(OSError(errno.ENOSPC, "No space left on device")), is_disk_full(None)
    (True, False)
    """
    return _raised_from(err, {errno.ENOSPC}, says_disk_full)


def is_unreachable(err: BaseException | None) -> bool:
    """Whether ``err``, or an error it was raised from, says the storage could not be reached.

    >>> is_unreachable(OSError(errno.ESTALE, "Stale file handle")), is_unreachable(None)
    (True, False)
    """
    return _raised_from(err, {errno.ESTALE, errno.ENOTCONN}, says_unreachable)


def _size(n: float) -> str:
    """``n`` bytes, readably.

    >>> _size(512), _size(3 * 2**20)
    ('512 B', '3.0 MiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def free_space(location: str) -> str:
    """``"12.0 KiB free of 3.0 MiB"`` for the file system of a local ``location``; for a URI,
    that the store does not say.

    >>> free_space("s3://bucket/x")
    'free space unknown (an object store)'
    """
    if is_uri(location):
        return "free space unknown (an object store)"
    path = Path(root(location))
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return "free space unknown"
    return f"{_size(usage.free)} free of {_size(usage.total)}"


class StorageFailed(SdTuneError):
    """A write to the storage failed as every later one would: the storage is full, or it
    cannot be reached. The message names it and says what to do."""


class StorageFull(StorageFailed):
    """The storage filled up; the message names it and its free space and says what to do."""


def probe_writable(location: str, what: str = "--storage") -> str | None:
    """Why sd-tune cannot write at ``location`` (a folder, made if missing, or a URI), or None;
    ``what`` names it in the message. A probe file is created and removed there.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = Path(folder, "file").write_text("")
    ...     probe_writable(folder), "a file is in the way" in probe_writable(join(folder, "file"))
    (None, True)
    """
    probe = join(location, f".sd_tune_probe_{os.getpid()}_{secrets.token_hex(4)}")
    try:
        write_bytes(probe, b"sd-tune storage probe\n")
        remove(probe)
    except (OSError, ValueError) as err:
        if isinstance(err, OSError) and err.errno in (errno.ENOTDIR, errno.EEXIST):
            why = "a file is in the way (it must be a folder)"
        else:
            why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        why = " ".join(why.split())
        if len(why) > 200:
            why = why[:197] + "..."
        shown = location if len(location) <= 200 else location[:100] + "..." + location[-40:]
        extra = f" ({free_space(location)})" if is_disk_full(err) else ""
        return f"cannot write to {what} {shown}: {why}{extra}; give a folder you can write"
    return None
