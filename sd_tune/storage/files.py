"""Locations and files: a local folder or a URI, read with a bound, written in one step
(a temporary file, then a rename), listed, moved, removed, uploaded and downloaded.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

import pyarrow.fs

from sd_tune.errors import SdTuneError


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
