"""Where results live: a local folder or a URI (``s3://``, ``gs://``, ``file://``, ...).

Locations are plain strings. A URI may carry a query string for its filesystem, e.g.
``s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http``: paths joined to it go
before the ``?``. Files are read and written with ``pyarrow.fs``, as Ray Tune and Train do.

Files written here replace the old ones in one step (a local file: a temporary file in the same
folder, then ``os.replace``; an object store writes an object whole), so a crash or a full disk
leaves the old file or the new one, never a part. :func:`locked` keeps one sd-tune process at a
time in a folder.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs

from sd_tune.errors import SdTuneError

LOCK_FILE = ".sd_tune.lock"  # in an experiment's or a run's folder, while sd-tune works there


def is_uri(location: str) -> bool:
    """Whether ``location`` is a URI rather than a local path.

    >>> is_uri("s3://bucket/prefix"), is_uri("results/exp")
    (True, False)
    """
    return "://" in location


def root(storage: str) -> str:
    """A results root as Ray wants it: an absolute local path, or the URI unchanged.

    >>> root("gs://bucket/results")
    'gs://bucket/results'
    >>> root("/tmp/../tmp/results")
    '/tmp/results'
    """
    return storage if is_uri(storage) else str(Path(storage).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path or a URI (parts go before a URI's query string).

    >>> join("s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http", "exp", "a.json")
    's3://bucket/prefix/exp/a.json?endpoint_override=127.0.0.1:9000&scheme=http'
    >>> join("results", "exp")
    'results/exp'
    """
    if not is_uri(base):
        return str(Path(base, *parts))
    head, sep, query = base.partition("?")
    return "/".join([head.rstrip("/"), *(p.strip("/") for p in parts)]) + sep + query


def parent(location: str) -> str:
    """The folder that holds ``location``.

    >>> parent("s3://bucket/prefix/exp/?region=eu-west-1")
    's3://bucket/prefix?region=eu-west-1'
    >>> parent("/tmp/results/exp")
    '/tmp/results'
    """
    if not is_uri(location):
        return str(Path(location).parent)
    head, sep, query = location.partition("?")
    return head.rstrip("/").rsplit("/", 1)[0] + sep + query


def _fs(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The filesystem of ``location`` and the path on it."""
    if is_uri(location):
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), root(location)


def _make_folder(fs: pyarrow.fs.FileSystem, path: str) -> None:
    if path and fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        fs.create_dir(path, recursive=True)


def exists(location: str) -> bool:
    """Whether a file or folder is at ``location``.

    >>> exists("file:///"), exists("/no/such/folder")
    (True, False)
    """
    fs, path = _fs(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


class TooLarge(SdTuneError, ValueError):
    """A file is larger than what its reader accepts."""


def read_bytes(location: str, limit: int | None = None) -> bytes:
    """The bytes of the file at ``location``; :class:`TooLarge` beyond ``limit`` bytes (read
    no further than that, so a planted huge file cannot exhaust memory).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     write_bytes(join(folder, "a.bin"), b"12345")
    ...     read_bytes(join(folder, "a.bin"), limit=5)
    b'12345'
    """
    fs, path = _fs(location)
    with fs.open_input_stream(path) as f:
        data = f.readall() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise TooLarge(f"{location} is larger than {limit:,} bytes")
    return data


def read_text(location: str) -> str:
    """The text of the file at ``location`` (``FileNotFoundError`` or ``OSError`` if none).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     write_text(join("file://" + folder, "a", "b.txt"), "hello")
    ...     read_text(join(folder, "a", "b.txt"))
    'hello'
    """
    return read_bytes(location).decode()


def write_text(location: str, text: str) -> None:
    """Write ``text`` to the file at ``location`` in one step, making its folders (see
    ``read_text``)."""
    write_bytes(location, text.encode())


def write_bytes(location: str, data: bytes) -> None:
    """Write ``data`` to the file at ``location`` in one step (see the module docstring),
    making its folders."""
    fs, path = _fs(location)
    _make_folder(fs, path.rstrip("/").rsplit("/", 1)[0])
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        replace_file(Path(path), data)
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


def replace_file(path: str | Path, data: bytes | str) -> None:
    """Write the local file ``path`` in one step: a temporary file in the same folder, synced,
    then ``os.replace``. On any error (a full disk) the old file stays as it was.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     replace_file(Path(folder, "a.txt"), "new")
    ...     Path(folder, "a.txt").read_text()
    'new'
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode as umask says
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def list_files(location: str, folders: bool = False) -> list[str]:
    """The names of the files (``folders``: of the folders) directly in the folder at
    ``location`` (none if no folder).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     write_text(join(folder, "a.json"), "{}")
    ...     write_text(join(folder, "sub", "b.json"), "{}")
    ...     list_files(folder), list_files(folder, folders=True)
    (['a.json'], ['sub'])
    """
    kind = pyarrow.fs.FileType.Directory if folders else pyarrow.fs.FileType.File
    fs, path = _fs(location)
    selector = pyarrow.fs.FileSelector(path, allow_not_found=True, recursive=False)
    return sorted(info.base_name for info in fs.get_file_info(selector) if info.type == kind)


def move(source: str, target: str) -> None:
    """Rename the file at ``source`` to ``target`` (on an object store: copy, then delete)."""
    fs, src = _fs(source)
    _, dst = _fs(target)
    fs.move(src, dst)


def remove(location: str) -> None:
    """Delete the file or folder tree at ``location``; nothing if there is none.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     write_text(join(folder, "a", "b.txt"), "hello")
    ...     remove(join(folder, "a"))
    ...     exists(join(folder, "a"))
    False
    """
    fs, path = _fs(location)
    kind = fs.get_file_info(path).type
    if kind == pyarrow.fs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pyarrow.fs.FileType.File:
        fs.delete_file(path)


def upload(local: str | Path, location: str) -> None:
    """Copy a local file, or a folder with everything in it, to ``location``.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     write_text(join(folder, "out", "a.txt"), "a")
    ...     upload(join(folder, "out"), join("file://" + folder, "up"))
    ...     read_text(join(folder, "up", "a.txt"))
    'a'
    """
    fs, path = _fs(location)
    local = Path(local).resolve()
    _make_folder(fs, path if local.is_dir() else path.rstrip("/").rsplit("/", 1)[0])
    pyarrow.fs.copy_files(
        str(local), path, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs
    )


def download(location: str, local: str | Path, skip: Iterable[str] = ()) -> list[str]:
    """Copy the folder tree at ``location`` into the local folder ``local``, leaving out
    every file and folder whose name matches a pattern of ``skip`` (folders unopened);
    return the relative paths of the files copied.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     write_text(join(folder, "exp", "trial_1", "result.json"), "{}")
    ...     write_text(join(folder, "exp", "trial_1", "checkpoint_000001", "model.pt"), "")
    ...     download(join("file://" + folder, "exp"), join(folder, "copy"),
    ...              skip=["checkpoint_*"])
    ['trial_1/result.json']
    """
    fs, path = _fs(location)
    skip = list(skip)
    local = Path(local)
    local.mkdir(parents=True, exist_ok=True)
    copied = []
    folders = [""]
    while folders:
        rel = folders.pop()
        selector = pyarrow.fs.FileSelector(f"{path.rstrip('/')}/{rel}" if rel else path)
        for info in sorted(fs.get_file_info(selector), key=lambda i: i.base_name):
            name = info.base_name
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in skip):
                continue
            sub = f"{rel}/{name}" if rel else name
            if info.type == pyarrow.fs.FileType.Directory:
                (local / sub).mkdir(exist_ok=True)
                folders.append(sub)
            elif info.type == pyarrow.fs.FileType.File:
                with fs.open_input_stream(info.path) as f:
                    (local / sub).write_bytes(f.readall())
                copied.append(sub)
    return sorted(copied)


# --------------------------------------------------------------------------- full disks, outages


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


# --------------------------------------------------------------------------- locks


class LockHeld(SdTuneError):
    """Another sd-tune process works in the folder; the message names it."""


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), or None if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(info: dict[str, Any]) -> bool | None:
    """Whether the process a lock names still runs: True, False, or None when this machine
    cannot tell (it ran on another host)."""
    if info.get("host") != socket.gethostname():
        return None
    if info.get("boot_id") and _boot_id() and info["boot_id"] != _boot_id():
        return False  # the machine has restarted since
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user
    started = _start_ticks(pid)
    return info.get("start_ticks") is None or started is None or info["start_ticks"] == started


def _read_lock(location: str) -> dict[str, Any] | None:
    """The lock's content; ``{}`` for one that cannot be read; None when there is none."""
    try:
        data = json.loads(read_bytes(location, limit=64 * 1024))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(info: dict[str, Any]) -> str:
    if not info:
        return "another sd-tune process (its lock file cannot be read)"
    return (
        f"{str(info.get('command', 'sd-tune'))[:60]} (pid {info.get('pid')} on "
        f"{str(info.get('host'))[:60]}, since {str(info.get('since'))[:30]})"
    )


def _create(location: str, data: bytes) -> bool:
    """Create the file at ``location`` unless one is there; whether this call created it
    (atomically on a local file system; on an object store, written and read back)."""
    fs, path = _fs(location)
    _make_folder(fs, path.rstrip("/").rsplit("/", 1)[0])
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        target = Path(path)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(data)
        try:
            os.link(tmp, target)  # atomic create-with-content, also on NFS
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
    if exists(location):
        return False
    with fs.open_output_stream(path) as f:
        f.write(data)
    time.sleep(0.5)  # a writer racing us may have overwritten it: the one that reads back wins
    return read_bytes(location, limit=64 * 1024) == data


@contextlib.contextmanager
def locked(folder: str, command: str) -> Iterator[str]:
    """Hold ``folder``'s lock (``folder/.sd_tune.lock``) while the block runs; yields its
    location. :class:`LockHeld` names the holder when another live process has it. A lock
    left by a process that is gone (killed, or the machine restarted) is taken over. Locks are
    atomic on local and NFS folders, and best effort on object stores.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     with locked(folder, "sd-tune demo"):
    ...         try:
    ...             with locked(folder, "sd-tune other"):
    ...                 pass
    ...         except LockHeld as err:
    ...             print(str(err)[:30])
    is in use by sd-tune demo (pid
    """
    lock = join(folder, LOCK_FILE)
    made = not is_uri(folder) and not Path(root(folder)).exists()
    token = secrets.token_hex(8)
    info = {
        "command": command,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "boot_id": _boot_id(),
        "start_ticks": _start_ticks(os.getpid()),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "token": token,
    }
    data = json.dumps(info).encode()
    for _ in range(3):
        if _create(lock, data):
            break
        holder = _read_lock(lock)
        if holder is None:
            continue  # released in between: try again
        if holder and _alive(holder) is not False:
            raise LockHeld(
                f"is in use by {_describe(holder)}; wait for it to end, or, if that "
                f"process is gone, delete {lock}"
            )
        if not holder and not _old(lock):
            raise LockHeld(
                f"is in use by {_describe(holder)}; wait for it to end, or, if no "
                f"sd-tune works there, delete {lock}"
            )
        _break(lock, holder)
    else:
        raise LockHeld(f"is being locked and unlocked by other processes; try again ({lock})")
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError, ValueError):
            if (_read_lock(lock) or {}).get("token") == token:
                remove(lock)
        if made:  # made for the lock, and nothing else came of it
            with contextlib.suppress(OSError):
                Path(root(folder)).rmdir()


def _old(location: str, seconds: float = 60.0) -> bool:
    """Whether the file at ``location`` was last written more than ``seconds`` ago."""
    fs, path = _fs(location)
    mtime = fs.get_file_info(path).mtime
    return mtime is None or time.time() - mtime.timestamp() > seconds


def _break(lock: str, holder: dict[str, Any]) -> None:
    """Remove a stale lock, unless another process replaced it since it was read."""
    if is_uri(lock):
        if _read_lock(lock) == holder:
            remove(lock)
        return
    aside = f"{root(lock)}.stale.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        os.rename(root(lock), aside)
    except FileNotFoundError:
        return
    try:
        moved = json.loads(Path(aside).read_text())
    except (OSError, ValueError):
        moved = {}
    if moved != holder:
        with contextlib.suppress(OSError):  # a live lock taken meanwhile: put it back
            os.link(aside, root(lock))
    Path(aside).unlink(missing_ok=True)
