"""Locations as paths and URIs: ``file://`` URIs (with and without a query string) in
tmp_path go through pyarrow's filesystems as ``s3://`` and ``gs://`` ones do."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sd_tune import storage

QUERY = "?endpoint_override=127.0.0.1:9000&scheme=http"


@pytest.fixture(params=["path", "uri", "uri+query"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``tmp_path`` as a local path, a ``file://`` URI, and one with a query string
    (which pyarrow's local filesystem ignores, as ``s3://`` keeps it for the connection)."""
    return {
        "path": str(tmp_path),
        "uri": f"file://{tmp_path}",
        "uri+query": f"file://{tmp_path}{QUERY}",
    }[request.param]


def test_join_and_parent_keep_the_query_string_last() -> None:
    uri = f"s3://bucket/prefix/{QUERY}"
    assert storage.join(uri, "exp", "trial_1/") == f"s3://bucket/prefix/exp/trial_1{QUERY}"
    assert storage.join(uri) == f"s3://bucket/prefix{QUERY}"
    assert storage.parent(storage.join(uri, "exp")) == f"s3://bucket/prefix{QUERY}"
    assert storage.join("gs://bucket", "a") == "gs://bucket/a"
    assert storage.join("results", "exp", "a.json") == "results/exp/a.json"
    assert storage.parent("results/exp") == "results"


def test_root_is_absolute_for_paths_and_unchanged_for_uris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage.root("results") == str(tmp_path / "results")
    assert storage.root(f"s3://bucket/p{QUERY}") == f"s3://bucket/p{QUERY}"
    assert storage.is_uri("file:///x") and not storage.is_uri("/x")


def test_write_read_exists_remove(base: str, tmp_path: Path) -> None:
    target = storage.join(base, "exp", "deep", "spec.json")
    assert not storage.exists(target)
    storage.write_text(target, '{"a": 1}')
    assert storage.exists(target) and storage.exists(storage.join(base, "exp"))
    assert storage.read_text(target) == '{"a": 1}'
    assert (tmp_path / "exp" / "deep" / "spec.json").read_text() == '{"a": 1}'
    storage.write_text(target, "again")
    assert storage.read_text(target) == "again"
    storage.remove(storage.join(base, "exp"))
    assert not storage.exists(target) and not (tmp_path / "exp").exists()
    storage.remove(storage.join(base, "exp"))  # nothing there: no error
    with pytest.raises(FileNotFoundError):
        storage.read_text(target)


def test_upload_then_download_skips_the_big_folders(base: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    files = {
        "sd_tune_space.json": "{}",
        "experiment_state-1.json": "{}",
        "trial_a/result.json": "{}\n",
        "trial_a/params.json": "{}",
        "trial_a/checkpoint_000001/model.pt": "weights",
        "trial_a/events.out.tfevents.1.host": "events",
        "train_runs/train_a/checkpoint_2026/checkpoint.pt": "weights",
        "tensorboard/events.out.tfevents.2.host": "events",
    }
    for rel, text in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    exp = storage.join(base, "store", "exp")
    storage.upload(out, exp)
    for rel, text in files.items():
        assert (tmp_path / "store" / "exp" / rel).read_text() == text
    copy = tmp_path / "copy"
    got = storage.download(
        exp, copy, skip=["train_runs", "checkpoint_*", "tensorboard", "events.out.tfevents.*"]
    )
    small = [
        "experiment_state-1.json",
        "sd_tune_space.json",
        "trial_a/params.json",
        "trial_a/result.json",
    ]
    assert got == small
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == small
    assert (
        not (copy / "train_runs").exists() and (copy / "trial_a/result.json").read_text() == "{}\n"
    )


def test_upload_a_file_and_download_everything(base: str, tmp_path: Path) -> None:
    one = tmp_path / "one.txt"
    one.write_text("1")
    storage.upload(one, storage.join(base, "up", "one.txt"))
    assert storage.read_text(storage.join(base, "up", "one.txt")) == "1"
    assert storage.download(storage.join(base, "up"), tmp_path / "down") == ["one.txt"]
    with pytest.raises(FileNotFoundError):
        storage.download(storage.join(base, "nothing"), tmp_path / "none")


# --------------------------------------------------------------------------- full disks


def test_a_write_that_does_not_fit_leaves_the_old_file_whole(
    tmpfs: Callable[..., Path],
) -> None:
    disk = tmpfs("64k")
    target = disk / "trials.json"
    storage.write_text(str(target), '{"old": true}')
    with pytest.raises(OSError) as info:
        storage.write_text(str(target), "x" * 200_000)
    assert storage.is_disk_full(info.value)
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in disk.iterdir()) == ["trials.json"]  # no temporary left
    assert "free of 64.0 KiB" in storage.free_space(str(disk))


def test_is_unreachable_knows_an_object_store_down_and_a_network_file_system_gone() -> None:
    aws = (
        "When getting information for key 'store/smoke/train_runs/train_1' in bucket 'b': AWS "
        "Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Could not connect "
        "to server; Details: Failed to connect to 127.0.0.1:9 after 0 ms"
    )
    try:
        try:
            raise OSError(aws)
        except OSError as inner:
            raise RuntimeError("the trial failed") from inner
    except RuntimeError as outer:
        assert storage.is_unreachable(outer) and not storage.is_disk_full(outer)
    assert storage.unreachable_reason(aws).startswith("AWS Error NETWORK_CONNECTION during")
    assert storage.is_unreachable(OSError(errno.ENOTCONN, "Transport endpoint is not connected"))
    assert storage.says_unreachable("OSError: [Errno 116] Stale file handle: '/nfs/r/x'")
    for other in ("Permission denied", "No space left on device", "Connection refused"):
        assert not storage.is_unreachable(OSError(other)), other


def test_is_disk_full_sees_through_wrapping() -> None:
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as inner:
            raise RuntimeError("the trial failed") from inner
    except RuntimeError as outer:
        assert storage.is_disk_full(outer)
    assert storage.is_disk_full(OSError("pyarrow: IOError: [Errno 28] error writing"))
    assert not storage.is_disk_full(OSError("Permission denied"))


def test_probe_refuses_a_file_and_a_read_only_folder(
    tmp_path: Path, tmpfs: Callable[..., Path]
) -> None:
    (tmp_path / "file").write_text("")
    assert "a file is in the way" in storage.probe_writable(str(tmp_path / "file"))
    ro = tmpfs("64k", "ro")
    problem = storage.probe_writable(str(ro))
    assert problem is not None and "Read-only file system" in problem
    assert storage.probe_writable(str(tmp_path / "new" / "folder")) is None


# --------------------------------------------------------------------------- locks


def test_lock_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    folder = str(tmp_path / "exp")
    with storage.locked(folder, "sd-tune launch"):
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from sd_tune import storage\n"
                "try:\n"
                f"    with storage.locked({folder!r}, 'sd-tune launch'): pass\n"
                "except storage.LockHeld as err:\n"
                "    print(err); sys.exit(3)",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.returncode == 3, other.stderr
        assert (
            f"is in use by sd-tune launch (pid {os.getpid()} on {socket.gethostname()}"
            in other.stdout
        )
        assert f"delete {folder}/{storage.LOCK_FILE}" in other.stdout
    assert not (tmp_path / "exp").exists()  # made for the lock, removed with it


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock = tmp_path / storage.LOCK_FILE
    lock.write_text(
        json.dumps(
            {
                "command": "sd-tune launch",
                "pid": gone.pid,
                "host": socket.gethostname(),
                "since": "earlier",
            }
        )
    )
    with storage.locked(str(tmp_path), "sd-tune resume"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_a_lock_of_another_machine_is_not_broken(tmp_path: Path) -> None:
    lock = tmp_path / storage.LOCK_FILE
    lock.write_text(
        json.dumps({"command": "sd-tune launch", "pid": 1, "host": "elsewhere", "since": "earlier"})
    )
    with (
        pytest.raises(storage.LockHeld, match=r"pid 1 on elsewhere, since earlier"),
        storage.locked(str(tmp_path), "sd-tune launch"),
    ):
        pass
    assert lock.exists()
