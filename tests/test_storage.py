"""Locations as paths and URIs: ``file://`` URIs (with and without a query string) in
tmp_path go through pyarrow's filesystems as ``s3://`` and ``gs://`` ones do."""

from __future__ import annotations

from pathlib import Path

import pytest

from sd_tune import storage

QUERY = "?endpoint_override=127.0.0.1:9000&scheme=http"


@pytest.fixture(params=["path", "uri", "uri+query"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``tmp_path`` as a local path, a ``file://`` URI, and one with a query string
    (which pyarrow's local filesystem ignores, as ``s3://`` keeps it for the connection)."""
    return {"path": str(tmp_path), "uri": f"file://{tmp_path}",
            "uri+query": f"file://{tmp_path}{QUERY}"}[request.param]


def test_join_and_parent_keep_the_query_string_last() -> None:
    uri = f"s3://bucket/prefix/{QUERY}"
    assert storage.join(uri, "exp", "trial_1/") == f"s3://bucket/prefix/exp/trial_1{QUERY}"
    assert storage.join(uri) == f"s3://bucket/prefix{QUERY}"
    assert storage.parent(storage.join(uri, "exp")) == f"s3://bucket/prefix{QUERY}"
    assert storage.join("gs://bucket", "a") == "gs://bucket/a"
    assert storage.join("results", "exp", "a.json") == "results/exp/a.json"
    assert storage.parent("results/exp") == "results"


def test_root_is_absolute_for_paths_and_unchanged_for_uris(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
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
    files = {"sd_tune_space.json": "{}", "experiment_state-1.json": "{}",
             "trial_a/result.json": "{}\n", "trial_a/params.json": "{}",
             "trial_a/checkpoint_000001/model.pt": "weights",
             "trial_a/events.out.tfevents.1.host": "events",
             "train_runs/train_a/checkpoint_2026/checkpoint.pt": "weights",
             "tensorboard/events.out.tfevents.2.host": "events"}
    for rel, text in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    exp = storage.join(base, "store", "exp")
    storage.upload(out, exp)
    for rel, text in files.items():
        assert (tmp_path / "store" / "exp" / rel).read_text() == text
    copy = tmp_path / "copy"
    got = storage.download(exp, copy, skip=["train_runs", "checkpoint_*", "tensorboard",
                                            "events.out.tfevents.*"])
    small = ["experiment_state-1.json", "sd_tune_space.json", "trial_a/params.json",
             "trial_a/result.json"]
    assert got == small
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == small
    assert not (copy / "train_runs").exists() and (copy / "trial_a/result.json").read_text() \
        == "{}\n"


def test_upload_a_file_and_download_everything(base: str, tmp_path: Path) -> None:
    one = tmp_path / "one.txt"
    one.write_text("1")
    storage.upload(one, storage.join(base, "up", "one.txt"))
    assert storage.read_text(storage.join(base, "up", "one.txt")) == "1"
    assert storage.download(storage.join(base, "up"), tmp_path / "down") == ["one.txt"]
    with pytest.raises(FileNotFoundError):
        storage.download(storage.join(base, "nothing"), tmp_path / "none")
