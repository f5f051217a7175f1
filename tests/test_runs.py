"""A `sd-tune train` run's life around its training (sd_tune/runs.py), on real folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sd_tune import runs
from sd_tune.config import make_trial
from sd_tune.errors import UsageError

AGAIN = "the same command with --resume"


def test_a_new_run_is_refused_where_one_is_and_a_resume_where_none_is(tmp_path: Path) -> None:
    trial = make_trial({})
    local = tmp_path / "r1"
    runs.check_run("r1", str(local), local, trial, resume=False, again=AGAIN)  # nothing there
    with pytest.raises(UsageError, match="there is no run named 'r1'"):
        runs.check_run("r1", str(local), local, trial, resume=True, again=AGAIN)
    runs.start_run(local, "r1", trial)
    saved = json.loads((local / runs.RUN_FILE).read_text())
    assert saved["name"] == "r1" and saved["config"] == trial.to_dict()
    with pytest.raises(UsageError, match=f"never overwrites one; continue it with {AGAIN}"):
        runs.check_run("r1", str(local), local, trial, resume=False, again=AGAIN)
    runs.check_run("r1", str(local), local, trial, resume=True, again=AGAIN)  # same settings


def test_a_resume_with_other_settings_names_each_change(tmp_path: Path) -> None:
    local = tmp_path / "r2"
    runs.start_run(local, "r2", make_trial({"train": {"epochs": 3}}))
    other = make_trial({"train": {"epochs": 5, "lr": 0.2}})
    with pytest.raises(UsageError) as err:
        runs.check_run("r2", str(local), local, other, resume=True, again=AGAIN)
    assert "train.epochs: 3 -> 5" in str(err.value) and "train.lr: 0.1 -> 0.2" in str(err.value)


def test_a_run_of_an_older_sd_tune_is_read_from_its_summary_or_refused(tmp_path: Path) -> None:
    local = tmp_path / "old"
    local.mkdir()
    (local / "metrics.jsonl").write_text("")
    with pytest.raises(UsageError, match=f"it has no {runs.RUN_FILE}"):
        runs.check_run("old", str(local), local, make_trial({}), resume=True, again=AGAIN)
    (local / "summary.json").write_text(json.dumps({"config": {"train": {"epochs": 2}}}))
    assert runs.saved_config(local) == {"train": {"epochs": 2}}


def test_a_lock_alone_is_no_run(tmp_path: Path) -> None:
    local = tmp_path / "r3"
    local.mkdir()
    (local / ".sd_tune.lock").write_text("{}")
    assert not runs.run_exists(str(local), local)
    (local / "run.json").write_text("{}")
    assert runs.run_exists(str(local), local)


def test_finish_run_writes_the_summary_and_prints_the_last_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trial = make_trial({})
    rows = [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.75, "train_time_s": 12.25}]
    code = runs.finish_run(tmp_path, str(tmp_path), str(tmp_path), "r4", trial, rows)
    assert code == 0
    assert "done: val_acc 0.7500, train_time_s 12.2 (2 epoch reports)" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final"] == rows[-1] and summary["name"] == "r4"
