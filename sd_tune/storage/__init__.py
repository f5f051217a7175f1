"""Where results live: a local folder or a URI (``s3://``, ``gs://``, ``file://``, ...).

Locations are plain strings. A URI may carry a query string for its filesystem, e.g.
``s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http``: paths joined to it go
before the ``?``. Files are read and written with ``pyarrow.fs``, as Ray Tune and Train do.

Files written here replace the old ones in one step (a local file: a temporary file in the same
folder, then ``os.replace``; an object store writes an object whole), so a crash or a full disk
leaves the old file or the new one, never a part. :func:`locked` keeps one sd-tune process at a
time in a folder.

A package of one idea a module: ``files`` (locations, reads, atomic writes, copies),
``failures`` (full disks, outages, free space, the write probe), ``lock`` (one process a
folder). ``sd_tune.storage`` re-exports the public names it had as a module; nothing of it is
pickled in an experiment.
"""

from __future__ import annotations

from sd_tune.storage.failures import (
    StorageFailed,
    StorageFull,
    free_space,
    is_disk_full,
    is_unreachable,
    probe_writable,
    says_disk_full,
    says_unreachable,
    unreachable_reason,
)
from sd_tune.storage.files import (
    TooLarge,
    download,
    exists,
    is_uri,
    join,
    list_files,
    move,
    parent,
    read_bytes,
    read_text,
    remove,
    replace_file,
    root,
    upload,
    write_bytes,
    write_text,
)
from sd_tune.storage.lock import (
    LOCK_FILE,
    LockHeld,
    locked,
)

__all__ = [
    "LOCK_FILE",
    "LockHeld",
    "StorageFailed",
    "StorageFull",
    "TooLarge",
    "download",
    "exists",
    "free_space",
    "is_disk_full",
    "is_unreachable",
    "is_uri",
    "join",
    "list_files",
    "locked",
    "move",
    "parent",
    "probe_writable",
    "read_bytes",
    "read_text",
    "remove",
    "replace_file",
    "root",
    "says_disk_full",
    "says_unreachable",
    "unreachable_reason",
    "upload",
    "write_bytes",
    "write_text",
]
