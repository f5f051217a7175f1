"""One sd-tune process at a time in a folder: a lock file that names its holder (host,
pid, command), broken only when its holder is known to be gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs

from sd_tune.errors import SdTuneError
from sd_tune.storage.files import _fs, _make_folder, exists, is_uri, join, read_bytes, remove, root

LOCK_FILE = ".sd_tune.lock"  # in an experiment's or a run's folder, while sd-tune works there


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
