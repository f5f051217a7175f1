"""Where results live: a local folder or a URI (``s3://``, ``gs://``, ``file://``, ...).

Locations are plain strings. A URI may carry a query string for its filesystem, e.g.
``s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http``: paths joined to it go
before the ``?``. Files are read and written with ``pyarrow.fs``, as Ray Tune and Train do.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path

import pyarrow.fs


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


def read_text(location: str) -> str:
    """The text of the file at ``location`` (``FileNotFoundError`` or ``OSError`` if none).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     write_text(join("file://" + folder, "a", "b.txt"), "hello")
    ...     read_text(join(folder, "a", "b.txt"))
    'hello'
    """
    fs, path = _fs(location)
    with fs.open_input_stream(path) as f:
        return f.readall().decode()


def write_text(location: str, text: str) -> None:
    """Write ``text`` to the file at ``location``, making its folders (see ``read_text``)."""
    fs, path = _fs(location)
    _make_folder(fs, path.rstrip("/").rsplit("/", 1)[0])
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


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
    pyarrow.fs.copy_files(str(local), path, source_filesystem=pyarrow.fs.LocalFileSystem(),
                          destination_filesystem=fs)


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
