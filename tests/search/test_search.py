"""The search end to end, as a user runs it: `sd-tune launch` in a subprocess on real Ray,
Optuna and Fashion-MNIST; its files read back (TensorBoard's own reader for the events);
resume after SIGINT, SIGTERM and SIGKILL; a failing trial; storage at a URI (file://, and
s3:// on a local moto server when moto is installed). And what survives what: pickles planted
in the storage, damaged and truncated files, two launches at once, a full disk."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import pickle
import pickletools
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sd_tune.pickled import PICKLED_NAMES

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path("/usr/share/datasets/fashion-mnist").is_dir(),
        reason="needs Debian's dataset-fashion-mnist",
    ),
]


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sd_tune.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sd_tune.cli", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def session(sid: int) -> set[int]:
    """The live processes of the session ``sid``: a command started with
    ``start_new_session=True`` and everything it started. Ray gives each worker a process
    group of its own, so ``os.killpg`` on the command's group leaves the workers running."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.add(int(stat.parent.name))
    return pids


def kill_session(sid: int, timeout: float = 60) -> None:
    """SIGKILL every process of the session ``sid`` (Ray's workers too), as a crashed machine
    would, and wait until none is left: a worker that outlived the driver could otherwise
    still write into the experiment."""
    deadline = time.time() + timeout
    while left := session(sid):
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert time.time() < deadline, f"processes {sorted(left)} outlived SIGKILL"
        time.sleep(0.1)


def tensorboard_runs(root: Path) -> dict[str, object]:
    """Every run folder under ``root`` that holds event files, loaded by TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = {}
    for events in root.rglob("events.out.tfevents.*"):
        run = events.parent
        if str(run) not in runs:
            acc = EventAccumulator(str(run), size_guidance={"images": 0, "tensors": 0})
            acc.Reload()
            runs[str(run)] = acc
    return runs


def finished_trials(exp_dir: Path, epochs: int) -> int:
    n = 0
    for result in exp_dir.glob("trial_*/result.json"):
        lines = [ln for ln in result.read_text().splitlines() if ln.strip()]
        n += len(lines) >= epochs
    return n


def pickled_names(exp: Path) -> set[str]:
    """Every ``sd_tune.*`` global that the pickles of the experiment at ``exp`` reference:
    Tune's ``*.pkl`` files and the pickles its JSON state files embed (hex or base64)."""
    names: set[str] = set()
    for path in exp.rglob("*"):
        if path.is_file() and "train_runs" not in path.parts:
            data = path.read_bytes()
            if data[:1] == b"\x80":
                names |= _globals(data)
            elif path.suffix == ".json":
                with contextlib.suppress(ValueError):  # result.json is JSON lines: no pickle
                    _embedded(json.loads(data), names)
    return {n for n in names if n.split(".")[0] == "sd_tune"}


def _embedded(value: object, names: set[str]) -> None:
    if isinstance(value, dict):
        for v in value.values():
            _embedded(v, names)
    elif isinstance(value, list):
        for v in value:
            _embedded(v, names)
    elif isinstance(value, str) and len(value) > 16:
        for decode in (bytes.fromhex, base64.b64decode):
            with contextlib.suppress(ValueError):
                data = decode(value)
                if data[:1] == b"\x80":
                    names |= _globals(data)
                    return
        with contextlib.suppress(ValueError):
            _embedded(json.loads(value), names)


def _globals(data: bytes) -> set[str]:
    """The ``module.name`` references of one pickle, memoised strings included."""
    names, strings, memo, last = set(), [], {}, None
    for op, arg, _ in pickletools.genops(data):
        if "UNICODE" in op.name:
            strings.append(arg)
            last = arg
            continue
        if op.name == "MEMOIZE":
            memo[len(memo)] = last
        elif op.name.endswith("PUT"):
            memo[arg] = last
        elif op.name.endswith("GET") and isinstance(memo.get(arg), str):
            strings.append(memo[arg])
            last = memo[arg]
            continue
        elif op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            names.add(f"{strings[-2]}.{strings[-1]}")
        last = None
    return names


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """One real search of the 3 smoke trials, finished, and its output: the end-to-end test
    checks it, the tests under "what survives what" damage copies of it (never it)."""
    storage = tmp_path_factory.mktemp("smoke") / "my results – Zürich"  # spaces, non-ASCII
    result = cli("launch", "--space", "search_spaces/smoke.yaml", "--storage", str(storage))
    assert result.returncode == 0, result.stdout + result.stderr
    return result, storage / "smoke"


def test_launch_smoke_end_to_end(smoke: tuple[subprocess.CompletedProcess, Path]) -> None:
    result, exp = smoke
    out = result.stdout
    assert "Pareto front" in out and f"tensorboard --logdir {shlex.quote(str(exp))}" in out
    assert "trials: 3 done, 0 running, 0 failed of 3" in out
    # The status line names each objective's best so far with its direction.
    assert re.search(
        r"trials: 3 done, 0 running, 0 failed of 3 \| best of each objective so far: "
        r"val_acc 0\.\d+ \(max\), train_time_s [\d.]+ \(min\)$",
        out,
        re.M,
    ), out
    # While the first trial runs, its epoch reports show before any trial has ended.
    lines = out.splitlines()
    first_end = next(i for i, line in enumerate(lines) if "trials: 1 done" in line)
    progress = [
        i
        for i, line in enumerate(lines)
        if re.search(
            r"trial \w+ epoch 1/2 val_acc 0\.\d{4} \| \d+ img/s \| trial "
            r"~\d:\d\d:\d\d left",
            line,
        )
    ]
    assert progress and progress[0] < first_end, out
    records = json.loads((exp / "trials.json").read_text())
    records = records["trials"] if isinstance(records, dict) else records
    assert len(records) == 3 and {r["status"] for r in records} == {"completed"}
    configs = {json.dumps(r["params"], sort_keys=True) for r in records}
    assert len(configs) == 3, "Optuna proposed the same configuration twice"
    for r in records:
        assert r["final"]["epoch"] == 2 and 0 <= r["final"]["val_acc"] <= 1
    csv_rows = (exp / "trials.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 1 + 3
    pareto = json.loads((exp / "pareto.json").read_text())
    front = pareto["trials"]
    ids = {r["trial_id"] for r in records}
    assert front and {p["trial_id"] for p in front} <= ids
    tta = json.loads((exp / "time_to_accuracy.json").read_text())
    points = tta["points"] if isinstance(tta, dict) else tta
    assert points and {p["trial_id"] for p in points} <= ids
    best = max(r["final"]["val_acc"] for r in records)
    assert points[-1]["val_acc"] == pytest.approx(
        max(h["val_acc"] for r in records for h in r["history"])
    )
    assert best <= points[-1]["val_acc"] + 1e-12
    assert front[0]["trial_id"] in (exp / "summary.md").read_text()
    runs = tensorboard_runs(exp / "tensorboard")
    sessions = [
        acc
        for acc in runs.values()
        if "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    ]
    assert len(sessions) == 3
    assert any(acc.Tags()["images"] for acc in runs.values())
    # Resume unpickles these: each must be listed where moves keep them resolving.
    names = pickled_names(exp)
    for held in ("Progress", "TrialRecords", "SpaceFile"):  # wherever they live now
        assert any(name.endswith(f".{held}") for name in names), (held, names)
    assert names <= set(PICKLED_NAMES), names - set(PICKLED_NAMES)


@dataclass
class Stage:
    """One interruption of the shared search: the command's output and exit code, where the
    experiment was, and the finished seeds' epoch reports at that moment."""

    out: str
    returncode: int
    exp: Path
    before: dict[str, list[tuple[float, ...]]]


@dataclass
class Interrupted:
    """The shared search after its four interruptions and its last resume."""

    stages: dict[str, Stage]
    exp: Path  # the moved copy, which the last two resumes continued
    original: Path
    original_there_during_copy_resume: bool
    original_untouched: bool
    final: subprocess.CompletedProcess[str]


def interrupt(
    proc: subprocess.Popen[str], sig: int, done: Callable[[], bool], exp: Path, what: str
) -> Stage:
    """Wait until ``done()``, then send ``sig`` to ``proc`` (SIGKILL: to its whole session,
    Ray's workers too, as a crashed machine would) and collect what it printed."""
    deadline = time.time() + 300
    try:
        while not done():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.time() < deadline, f"{what} in 300 s"
            time.sleep(1)
        before = finished_epochs(exp)
        kill_session(proc.pid) if sig == signal.SIGKILL else proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            kill_session(proc.pid)
    return Stage(out, proc.returncode, exp, before)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Interrupted:
    """One search (2 configurations x 2 seeds, then the baseline's 2 seeds) stopped four
    ways, each resumed: SIGINT once a seed has finished, SIGTERM (as `ray job stop` sends)
    once two have, SIGKILL of the whole session once three have; then a copy of the
    experiment is resumed with the original out of the way (as after a move) and killed
    again once a baseline seed has finished, and resumed to the end. The four tests below
    each check their interruption on it (one search instead of four: issue 25)."""
    root = tmp_path_factory.mktemp("signals")
    args = ("--set", "search.num_samples=2", "--set", "search.repeats=2")
    proc = start("launch", "--space", "search_spaces/smoke.yaml", "--storage", str(root), *args)
    exp = root / "smoke"
    stages = {}

    def seeds(n: int) -> Callable[[], bool]:
        return lambda: finished_trials(exp, epochs=2) >= n

    stages["SIGINT"] = interrupt(proc, signal.SIGINT, seeds(1), exp, "no seed finished")
    proc = start("resume", str(exp))
    stages["SIGTERM"] = interrupt(proc, signal.SIGTERM, seeds(2), exp, "no second seed finished")
    proc = start("resume", str(exp))
    stages["SIGKILL"] = interrupt(proc, signal.SIGKILL, seeds(3), exp, "no third seed finished")
    # Resume a copy with the original out of the way (as after a move): it neither reads
    # from the original nor writes to it, and the original stays as it was, byte for byte.
    original, exp = exp, root / "moved" / "smoke"
    shutil.copytree(original, exp, symlinks=True)
    untouched = _files(original)
    away = original.rename(original.with_name("smoke.away"))
    proc = start("resume", str(exp))
    stages["SIGKILL in the baseline"] = interrupt(
        proc,
        signal.SIGKILL,
        lambda: any(is_baseline_trial(exp, t) for t in finished_epochs(exp)),
        exp,
        "no baseline seed finished",
    )
    there = original.exists()
    away.rename(original)
    final = cli("resume", str(exp))
    return Interrupted(stages, exp, original, there, _files(original) == untouched, final)


def check_stopped_cleanly(stage: Stage) -> None:
    """SIGINT and SIGTERM: the search saved, exit 2, one line saying how to go on."""
    assert stage.returncode == 2, stage.out
    last = stage.out.splitlines()[-1]
    assert f"continue with `sd-tune resume {stage.exp}`" in last, stage.out
    for noise in ("Traceback", "Aborted", "*** SIG", "core dumped"):
        assert noise not in stage.out, stage.out


def check_resumed_losing_nothing(done: Interrupted, stage: Stage) -> None:
    """The last resume finished every seed, and each seed that had finished before ``stage``
    kept its epochs with the same numbers (training time included: not trained again)."""
    result, exp = done.final, done.exp
    assert stage.before, "a finished seed is needed before the interruption"
    assert result.returncode == 0, result.stdout + result.stderr
    assert "View detailed results here" not in result.stdout  # Tune's banner stays off
    records = trials_json(exp)
    assert len(records) == 6, sorted(records)
    assert all(r["status"] == "completed" for r in records.values()), records
    for trial_dir, epochs in stage.before.items():
        assert _epochs(exp / trial_dir / "result.json") == epochs, trial_dir
    for r in records.values():
        assert [h["epoch"] for h in r["history"]] == [1, 2], r["history"]
    assert sorted(p.stem for p in (exp / "sd_tune" / "trials").glob("*.json")) == sorted(records)


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (its path relative to it) with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _epochs(result_json: Path) -> list[tuple[float, ...]]:
    keys = ("epoch", "val_acc", "train_loss", "train_time_s")
    rows = [json.loads(line) for line in result_json.read_text().splitlines() if line.strip()]
    return [tuple(row[k] for k in keys) for row in rows]


def test_resume_after_sigint(interrupted: Interrupted) -> None:
    stage = interrupted.stages["SIGINT"]
    check_stopped_cleanly(stage)
    assert len(stage.before) == 1, stage.before
    check_resumed_losing_nothing(interrupted, stage)


def test_resume_after_sigterm(interrupted: Interrupted) -> None:
    """`ray job stop` sends SIGTERM: the search stops as on Ctrl-C, and resume loses nothing."""
    stage = interrupted.stages["SIGTERM"]
    check_stopped_cleanly(stage)
    assert len(stage.before) == 2, stage.before
    check_resumed_losing_nothing(interrupted, stage)


def test_resume_after_sigkill(interrupted: Interrupted) -> None:
    """SIGKILL of the whole session, then a resume of a copy with the original moved away."""
    stage = interrupted.stages["SIGKILL"]
    assert len(stage.before) == 3, stage.before
    assert not interrupted.original_there_during_copy_resume, (
        "resuming a copy wrote into the original's folder"
    )
    assert interrupted.original_untouched, "resuming a copy changed the original"
    for out in (interrupted.stages["SIGKILL in the baseline"].out, interrupted.final.stdout):
        assert str(interrupted.original) not in out, out
    check_resumed_losing_nothing(interrupted, stage)


def test_failed_trial_is_reported_and_left_out_of_the_front(tmp_path: Path) -> None:
    space = yaml.safe_load((REPO / "search_spaces/smoke.yaml").read_text())
    space["name"] = "failing"
    space["space"] = {
        "train.fail_at_epoch": {"choice": [None, 1]},
        "stochastic_depth.drop_rate": {"uniform": [0.0, 0.5]},
    }
    # seed 3: the first trial completes, the second fails
    space["search"] = {"sampler": "random", "seed": 3, "num_samples": 2}
    path = tmp_path / "failing.yaml"
    path.write_text(yaml.safe_dump(space))
    result = cli("launch", "--space", str(path), "--storage", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    records = json.loads((tmp_path / "failing" / "trials.json").read_text())
    records = records["trials"] if isinstance(records, dict) else records
    failed = [r for r in records if r["status"] == "failed"]
    completed = [r for r in records if r["status"] == "completed"]
    assert failed and completed, [r["status"] for r in records]
    for r in failed:
        assert "non-finite" in r["error"] and "epoch 1" in r["error"]
        assert f"failed {r['trial_id']}" in result.stdout
    pareto = json.loads((tmp_path / "failing" / "pareto.json").read_text())
    front = pareto["trials"]
    assert {p["trial_id"] for p in front} <= {r["trial_id"] for r in completed}


def test_repeats_and_the_baseline_train_each_configuration_with_its_seeds(
    tmp_path: Path,
) -> None:
    """search.repeats 2: 2 configurations x 2 seeds, then the better one again with drop rate
    0 and the same seeds (the baseline, on by default). Each seed is a row with its
    configuration id, its repeat and its seed derived from train.seed; the Optuna study in the
    searcher state Tune saved holds one trial per configuration, told the means of its seeds,
    and none for the baseline; the comparison and its sentence reach the terminal,
    comparison.json, summary.md and TensorBoard."""
    from statistics import fmean

    from tensorboard.backend.event_processing import event_accumulator

    from sd_tune.comparison import BASELINE_KEY
    from sd_tune.configurations import TOLD_FILE
    from sd_tune.repeats import repeat_seed
    from sd_tune.search import load_spec, make_searcher

    result = cli(
        "launch", "--space", "search_spaces/smoke.yaml", "--storage", str(tmp_path),
        "--set", "search.num_samples=2", "--set", "search.repeats=2", "--set", "train.seed=5",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "experiment smoke: 6 trials (2 configurations x 2 seeds, then the best again without "
        "stochastic depth: 2 baseline seeds), 1 at a time"
    ) in result.stdout
    assert "trials: 6 done, 0 running, 0 failed of 6" in result.stdout
    exp = tmp_path / "smoke"
    groups: dict[str, list[dict]] = {}
    for r in trials_json(exp).values():
        assert r["status"] == "completed", r
        groups.setdefault(r["config_id"], []).append(r)
    searched = {c: rows for c, rows in groups.items() if not c.endswith("-baseline")}
    assert sorted(searched) == ["c00000", "c00001"]
    for rows in groups.values():
        assert sorted(r["repeat"] for r in rows) == [0, 1]
        for r in rows:
            assert r["seed"] == r["params"]["train.seed"] == repeat_seed(5, r["repeat"])
        settings = [{k: v for k, v in r["params"].items() if k != "train.seed"} for r in rows]
        assert settings[0] == settings[1] and settings[0]
    # The baseline: the configuration with the higher mean val_acc, drop rate 0, same seeds.
    winner = max(searched, key=lambda c: fmean(r["final"]["val_acc"] for r in searched[c]))
    base = groups[f"{winner}-baseline"]
    assert {r[BASELINE_KEY] for r in base} == {winner}
    assert {r["params"]["stochastic_depth.drop_rate"] for r in base} == {0.0}
    assert sorted(r["seed"] for r in base) == sorted(r["seed"] for r in searched[winner])
    unchanged = {
        k: v for k, v in searched[winner][0]["params"].items()
        if k not in ("stochastic_depth.drop_rate", "train.seed")
    }  # fmt: skip
    assert all(unchanged.items() <= r["params"].items() for r in base)
    assert all(r["config"]["stochastic_depth.drop_rate"] == 0.0 for r in base)
    header, *rows = (exp / "trials.csv").read_text().strip().splitlines()
    assert header.startswith(f"trial_id,config_id,repeat,{BASELINE_KEY},status,")
    assert len(rows) == 6 and sum(f",{winner},completed," in row for row in rows) == 2
    assert "param.train.seed" in header.split(",")
    spec, _ = load_spec(str(exp))
    searcher = make_searcher(spec)
    searcher.restore_from_dir(str(exp))
    told = searcher.inner._ot_study.trials
    assert len(told) == 2  # the baseline is not told to Optuna
    for trial in told:
        (rows,) = [
            g
            for g in searched.values()
            if g[0]["params"]["stochastic_depth.drop_rate"]
            == trial.params["stochastic_depth.drop_rate"]
        ]
        means = [fmean(r["final"][m] for r in rows) for m in ("val_acc", "train_time_s")]
        assert trial.values == pytest.approx(means)
    # The report: the front on the configurations' means, with their spread and n.
    pareto = json.loads((exp / "pareto.json").read_text())["trials"]
    assert pareto and {p["config_id"] for p in pareto} <= set(searched)
    for p in pareto:
        rows = groups[p["config_id"]]
        assert p["n"] == 2 and sorted(p["seeds"]) == sorted(r["trial_id"] for r in rows)
        s = p["spread"]["val_acc"]
        assert s["mean"] == pytest.approx(fmean(r["final"]["val_acc"] for r in rows))
        assert s["n"] == 2 and s["ci_low"] <= s["mean"] <= s["ci_high"]
    assert re.search(r"^rank\s+configuration\s.*\sn$", result.stdout, re.M), result.stdout
    assert " ± " in result.stdout.split("Pareto front", 1)[1]
    best = max(fmean(r["final"]["val_acc"] for r in rows) for rows in searched.values())
    status = [line for line in result.stdout.splitlines() if "trials: 6 done" in line][-1]
    assert f"val_acc {best:.4g} (max)" in status, status  # the best configuration's mean
    assert f"baseline: configuration {winner} again without stochastic depth" in result.stdout
    # The comparison: its numbers, and its sentence in the last lines, summary.md, TensorBoard.
    comparison = json.loads((exp / "comparison.json").read_text())
    (c,) = comparison["comparisons"]
    assert c["config_id"] == winner and c["depth"] == 8
    assert c["n"] == {"stochastic_depth": 2, "baseline": 2}
    assert sorted(c["baseline_seeds"]) == sorted(r["trial_id"] for r in base)
    test = c["differences"]["test_acc"]
    delta = fmean(r["final"]["test_acc"] for r in searched[winner]) - fmean(
        r["final"]["test_acc"] for r in base
    )
    assert test["delta"] == pytest.approx(delta)
    assert test["ci_low"] <= test["delta"] <= test["ci_high"] and 0 <= test["p"] <= 1
    (said,) = comparison["sentences"]
    print(said)
    assert said.startswith("depth 8, drop rate ")
    last = result.stdout.strip().splitlines()[-1]
    assert last == f"against no stochastic depth: {said}", result.stdout
    assert f"- {said}." in (exp / "summary.md").read_text()
    acc = event_accumulator.EventAccumulator(
        str(exp / "tensorboard"), size_guidance={event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    text = acc.Tensors("summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert said in text
    # What Optuna was told agrees with the report; once it does not (as after a state roll-back
    # or a seed run again), the report says so.
    assert "Optuna was told" not in result.stdout
    told = json.loads((exp / TOLD_FILE).read_text())
    assert sorted(told) == sorted(searched)
    told["c00000"]["seeds"] = told["c00000"]["seeds"][:1]
    told["c00000"]["means"]["val_acc"] = 0.5
    (exp / TOLD_FILE).write_text(json.dumps(told))
    report = cli("report", str(exp))
    assert report.returncode == 0, report.stdout + report.stderr
    assert "note: configuration c00000: Optuna was told val_acc 0.5 (mean of 1 seed), the " in (
        report.stdout
    ), report.stdout


def finished_epochs(exp: Path) -> dict[str, list[tuple[float, ...]]]:
    """Each trial that finished its 2 epochs: its epoch reports."""
    return {
        p.parent.name: _epochs(p) for p in exp.glob("trial_*/result.json") if len(_epochs(p)) >= 2
    }


def is_baseline_trial(exp: Path, trial_dir: str) -> bool:
    params = exp / trial_dir / "params.json"
    return params.is_file() and "baseline_of" in json.loads(params.read_text())


def test_sigkill_in_a_configuration_and_in_the_baseline_then_resume_loses_no_seed(
    interrupted: Interrupted,
) -> None:
    """search.repeats 2 with the baseline, killed (the whole session, Ray's workers too) once
    a configuration's seed has finished and again once a baseline seed has: the last resume
    keeps every finished seed as it was (none trained again), ends the baseline phase, and
    Optuna holds both means and no baseline."""
    from statistics import fmean

    from sd_tune.search import load_spec, make_searcher

    in_config = interrupted.stages["SIGKILL"].before
    in_baseline = interrupted.stages["SIGKILL in the baseline"].before
    exp, result = interrupted.exp, interrupted.final
    assert not any(is_baseline_trial(exp, t) for t in in_config), in_config
    assert len(in_baseline) == 5, in_baseline  # 4 seeds of 2 configurations, 1 baseline seed
    assert all(in_baseline[t] == epochs for t, epochs in in_config.items())
    assert result.returncode == 0, result.stdout + result.stderr
    records = trials_json(exp)
    assert len(records) == 6 and {r["status"] for r in records.values()} == {"completed"}
    for trial_dir, epochs in in_baseline.items():
        assert _epochs(exp / trial_dir / "result.json") == epochs, trial_dir  # not again
    groups: dict[str, list[dict]] = {}
    for r in records.values():
        groups.setdefault(r["config_id"], []).append(r)
    (base,) = [c for c in groups if c.endswith("-baseline")]
    assert sorted(groups) == sorted(["c00000", "c00001", base])
    assert all(sorted(r["repeat"] for r in rows) == [0, 1] for rows in groups.values())
    winner = base.removesuffix("-baseline")
    assert sorted(r["seed"] for r in groups[base]) == sorted(r["seed"] for r in groups[winner])
    spec, _ = load_spec(str(exp))
    searcher = make_searcher(spec)
    searcher.restore_from_dir(str(exp))
    told = {
        t.params["stochastic_depth.drop_rate"]: t.values for t in searcher.inner._ot_study.trials
    }
    assert len(told) == 2
    for config_id in ("c00000", "c00001"):
        rows = groups[config_id]
        means = [fmean(r["final"][m] for r in rows) for m in ("val_acc", "train_time_s")]
        assert told[rows[0]["params"]["stochastic_depth.drop_rate"]] == pytest.approx(means)
    assert "smoke: 6 trials (6 completed)" in result.stdout
    assert result.stdout.strip().splitlines()[-1].startswith("against no stochastic depth: ")
    names = pickled_names(exp)  # the seed-grouping searcher is pickled too
    assert {"sd_tune.repeats.RepeatSearcher", "sd_tune.repeats.Group"} <= names, names
    assert names <= set(PICKLED_NAMES), names - set(PICKLED_NAMES)


def test_launch_and_report_at_a_uri(tmp_path: Path) -> None:
    """The whole experiment at a ``file://`` URI with a query string (as an ``s3://`` one with
    ``endpoint_override`` has): sd-tune's own files go through the URI, not a local path."""
    store = tmp_path / "store"
    query = "?sd_tune_test=1"
    uri = f"file://{store}/smoke{query}"
    result = cli(
        "launch",
        "--space",
        "search_spaces/smoke.yaml",
        "--storage",
        f"file://{store}{query}",
        "--set",
        "search.num_samples=2",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"results in {uri}" in result.stdout
    assert f"tensorboard --logdir '{uri}'" in result.stdout
    exp = store / "smoke"
    assert sorted(p.name for p in store.iterdir()) == ["smoke"]
    for name in (
        "sd_tune_space.json",
        "trials.csv",
        "trials.json",
        "pareto.json",
        "time_to_accuracy.json",
        "summary.md",
        "pareto.png",
        "tensorboard",
    ):
        assert (exp / name).exists(), name
    records = json.loads((exp / "trials.json").read_text())["trials"]
    assert len(records) == 2 and {r["status"] for r in records} == {"completed"}
    for r in records:
        assert r["logdir"] == f"file://{exp}/trial_{r['trial_id']}{query}"
        assert (exp / f"trial_{r['trial_id']}" / "result.json").is_file()
        assert list((exp / "train_runs" / f"train_{r['trial_id']}").glob("checkpoint_*"))
    assert len((exp / "trials.csv").read_text().strip().splitlines()) == 1 + 2
    front = json.loads((exp / "pareto.json").read_text())["trials"]
    assert front and {p["trial_id"] for p in front} <= {r["trial_id"] for r in records}
    assert f"--logdir '{uri}'" in (exp / "summary.md").read_text()

    again = cli(
        "launch", "--space", "search_spaces/smoke.yaml", "--storage", f"file://{store}{query}"
    )
    assert again.returncode == 2 and "experiment 'smoke' already exists" in again.stderr

    report = cli("report", uri)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "smoke: 2 trials (2 completed)" in report.stdout
    rebuilt = json.loads((exp / "trials.json").read_text())["trials"]
    assert [(r["trial_id"], r["final"]) for r in rebuilt] == [
        (r["trial_id"], r["final"]) for r in records
    ]
    runs = tensorboard_runs(exp / "tensorboard")
    sessions = [
        acc
        for acc in runs.values()
        if "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    ]
    assert len(sessions) == 2, "the report's TensorBoard entries were doubled"


# The last commit before sd_tune.config became a package (issue 28): experiments it wrote
# name the space's dataclasses sd_tune.config.<Class> in their pickles.
BEFORE_THE_MOVES = "8f5fea9"


def code_at(commit: str, folder: Path) -> Path:
    """sd-tune's package and shipped spaces as of ``commit``, from this clone's history."""
    found = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True
    )
    if found.returncode != 0:
        pytest.skip(f"this clone's history lacks {commit} (a shallow clone?): clone it whole")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "sd_tune", "search_spaces"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def test_an_experiment_written_before_the_moves_resumes_and_reports(tmp_path: Path) -> None:
    """The code of the commit before the package moves launches an experiment; this code
    resumes it (which unpickles Tune's state, sd-tune's callbacks and the space they keep by
    their old module paths) and reports it, keeping its trial as it was."""
    old = code_at(BEFORE_THE_MOVES, tmp_path / "old")
    store = tmp_path / "store"
    launched = subprocess.run(
        [sys.executable, "-m", "sd_tune.cli", "launch", "--space", "search_spaces/smoke.yaml",
         "--storage", str(store), "--set", "search.num_samples=1", "--set", "train.epochs=1"],
        cwd=old,
        env={**os.environ, "PYTHONPATH": str(old)},
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert launched.returncode == 0, launched.stdout + launched.stderr
    exp = store / "smoke"
    names = pickled_names(exp)
    assert "sd_tune.config.SpaceFile" in names, names  # written by the old code indeed
    assert not any(".config.settings." in name for name in names), names
    before = trials_json(exp)
    resumed = cli("resume", str(exp))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "smoke: 1 trials (1 completed)" in resumed.stdout, resumed.stdout
    report = cli("report", str(exp))
    assert report.returncode == 0, report.stdout + report.stderr
    after = trials_json(exp)
    assert {t: r["final"] for t, r in after.items()} == {t: r["final"] for t, r in before.items()}


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A local S3 server (moto), with the credentials pointed at it; yields its port."""
    pytest.importorskip("moto.server", reason="needs moto: pip install 'moto[server]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert server.poll() is None and time.time() < deadline, "moto did not start"
            time.sleep(0.2)
        for key, value in (
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ):
            monkeypatch.setenv(key, value)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def s3_bucket(port: int) -> str:
    """An empty bucket on the S3 server at ``port``; the ``s3://`` storage URI in it, with the
    query string that points pyarrow (and so Ray) at the server."""
    import pyarrow.fs

    query = f"?endpoint_override=127.0.0.1:{port}&scheme=http"
    fs, _ = pyarrow.fs.FileSystem.from_uri(f"s3://bucket{query}&allow_bucket_creation=true")
    fs.create_dir("bucket")
    return f"s3://bucket/store{query}"


@pytest.fixture
def s3_server(moto: int) -> str:
    """The ``s3://`` storage URI of an empty bucket on a local S3 server (moto)."""
    return s3_bucket(moto)


class Outage:
    """A TCP relay to a local server that can be cut (its port then refuses connections and
    every open one is closed, as when the server is down) and restored on the same port."""

    def __init__(self, target: int) -> None:
        self.target = target
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.listener: socket.socket | None = None
        self.open: list[socket.socket] = []

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        assert self.listener is not None
        self.listener.close()
        for conn in self.open:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self.open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)


def test_launch_report_resume_on_s3(s3_server: str) -> None:
    """Ray Tune and Train, and sd-tune's own files, on a real S3 protocol (moto)."""
    from sd_tune import storage

    result = cli(
        "launch",
        "--space",
        "search_spaces/smoke.yaml",
        "--storage",
        s3_server,
        "--set",
        "search.num_samples=2",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    exp = storage.join(s3_server, "smoke")
    assert f"tensorboard --logdir '{exp}'" in result.stdout
    records = json.loads(storage.read_text(storage.join(exp, "trials.json")))["trials"]
    assert len(records) == 2 and {r["status"] for r in records} == {"completed"}
    for name in (
        "trials.csv",
        "pareto.json",
        "time_to_accuracy.json",
        "summary.md",
        "pareto.png",
        "tensorboard",
    ):
        assert storage.exists(storage.join(exp, name)), name
    for r in records:
        assert r["logdir"] == storage.join(exp, f"trial_{r['trial_id']}")
        assert storage.exists(storage.join(exp, "train_runs", f"train_{r['trial_id']}"))
    for command in ("report", "resume"):
        again = cli(command, exp)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "smoke: 2 trials (2 completed)" in again.stdout


def test_an_unreachable_storage_stops_the_search_and_resume_continues_it(
    moto: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The S3 server goes away while the second of 3 trials runs: the search stops at the
    first failed write with one message and exit 2, starting no other trial; once the server
    is back, resume continues the unfinished trials and runs the rest."""
    from sd_tune import storage

    monkeypatch.setenv("PYTHONUNBUFFERED", "1")  # each progress line as it is printed
    outage = Outage(moto)
    outage.restore()
    uri = s3_bucket(outage.port)
    proc = start(
        "launch", "--space", "search_spaces/smoke.yaml", "--storage", uri,
        "--set", "search.num_samples=3",
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 300
        while sum("epoch 1/2" in line for line in list(lines)) < 2:
            assert proc.poll() is None, "".join(lines)
            assert time.time() < deadline, "the second trial did not report in 300 s"
            time.sleep(0.05)
        outage.cut()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            kill_session(proc.pid)
    reader.join(timeout=30)
    out = "".join(lines)
    exp = storage.join(uri, "smoke")
    assert proc.returncode == 2, out
    assert "Traceback" not in out, out
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"sd-tune launch: error: the storage {uri} cannot be reached ("), out
    assert last.endswith(f"once the storage is back, continue with `sd-tune resume {exp}`"), out
    started = set(re.findall(r"trial (\w+) epoch", out))
    assert len(started) == 2, out  # no trial was started on the storage that was gone
    outage.restore()
    result = cli("resume", exp)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke: 3 trials (3 completed)" in result.stdout, result.stdout


def test_fractional_gpu_trials_run_together_on_logical_gpus() -> None:
    """As far as Ray goes without CUDA: on a Ray that declares 1 logical GPU, the concurrency
    sd-tune computes for 0.25-GPU single-worker trials is 4, and Ray runs 4 tasks holding the
    workers' resources (sd_tune.cluster.worker_resources) at the same time."""
    script = textwrap.dedent("""
        import time, ray
        from sd_tune.config import space_from_dict
        from sd_tune import cluster, search
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR")
        spec = space_from_dict({"resources": {"num_workers": 1, "use_gpu": True,
                                              "gpus_per_worker": 0.25, "cpus_per_worker": 0.5},
                                "search": {"num_samples": 8}})
        print("concurrency", search.concurrency(spec, cluster.node_resources()))
        res = cluster.worker_resources(spec.trial)
        @ray.remote(num_cpus=res["CPU"], num_gpus=res["GPU"])
        def hold():
            start = time.time(); time.sleep(3); return start, time.time()
        spans = ray.get([hold.remote() for _ in range(4)])
        overlap = min(e for _, e in spans) - max(s for s, _ in spans)
        print("overlap", round(overlap, 2))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "concurrency 4" in proc.stdout, proc.stdout
    overlap = float(proc.stdout.split("overlap")[1])
    assert overlap > 1.0, proc.stdout  # all four held their quarter GPU at once


# --------------------------------------------------------------------------- what survives what


@pytest.fixture(scope="module")
def finished(smoke: tuple[subprocess.CompletedProcess, Path]) -> Path:
    """The smoke search of 3 trials, finished; the tests below damage copies of it."""
    return smoke[1]


def copy_of(finished: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished.parent, tmp_path / "store")
    return tmp_path / "store" / "smoke"


def trials_json(exp: Path) -> dict[str, dict]:
    return {r["trial_id"]: r for r in json.loads((exp / "trials.json").read_text())["trials"]}


class Planted:
    """Unpickling this creates ``marker``: the code a planted pickle would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def test_report_never_unpickles_what_the_storage_holds(finished: Path, tmp_path: Path) -> None:
    exp = copy_of(finished, tmp_path)
    marker = tmp_path / "ran"
    planted = pickle.dumps(Planted(marker))
    for state_file in exp.glob("experiment_state-*.json"):
        state = json.loads(state_file.read_text())
        for entry in state["trial_data"]:
            trial = json.loads(entry[0])
            trial["placement_group_factory"] = planted.hex()
            trial["storage"] = {"_type": "CLOUDPICKLE_FALLBACK", "value": planted.hex()}
            entry[0] = json.dumps(trial)
        state_file.write_text(json.dumps(state))
    pickles = [
        exp / "tuner.pkl",
        *exp.glob("searcher-state-*.pkl"),
        *exp.glob("search_gen_state-*.json"),
        *exp.glob("trial_*/params.pkl"),
        *(trial / "error.pkl" for trial in exp.glob("trial_*")),
    ]
    for path in pickles:
        path.write_bytes(planted)
    assert len(pickles) == 3 + 2 * 3  # Tune's three, and two for each of the 3 trials
    for where in (str(exp), f"file://{exp}"):
        result = cli("report", where)
        assert not marker.exists(), f"report of {where} ran a pickle from the storage"
        assert result.returncode == 0, result.stdout + result.stderr
        assert trials_json(exp).keys() == trials_json(finished).keys()
        assert all(r["status"] == "completed" for r in trials_json(exp).values())


def test_report_keeps_what_sd_tune_recorded_when_files_are_damaged(
    finished: Path, tmp_path: Path
) -> None:
    exp = copy_of(finished, tmp_path)
    first, second, _ = trials_json(finished)
    result_json = exp / f"trial_{first}" / "result.json"
    result_json.write_bytes(result_json.read_bytes()[:100])  # cut short
    shutil.rmtree(exp / f"trial_{second}")  # deleted
    for state_file in exp.glob("experiment_state-*.json"):
        state_file.write_bytes(state_file.read_bytes()[: state_file.stat().st_size // 3])
    result = cli("report", str(exp))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke: 3 trials (3 completed)" in result.stdout
    for trial_id, record in trials_json(exp).items():
        assert record["final"] == trials_json(finished)[trial_id]["final"]
        assert record["history"] == trials_json(finished)[trial_id]["history"]
    # without sd-tune's record either, a deleted trial is what it is: missing
    (exp / "sd_tune" / "trials" / f"{second}.json").unlink()
    shutil.copy(next(finished.glob("experiment_state-*.json")), exp)
    result = cli("report", str(exp))
    assert result.returncode == 0, result.stdout + result.stderr
    assert trials_json(exp)[second]["status"] == "missing"
    assert f"missing {second}: its folder trial_{second} is gone" in result.stdout


def test_report_leaves_out_a_record_of_a_trial_the_state_does_not_know(
    finished: Path, tmp_path: Path
) -> None:
    """A record that came with a copy of the experiment's folder from another copy of it
    (no folder here, not in this state) is not counted, and the report says so."""
    exp = copy_of(finished, tmp_path)
    first = next(iter(trials_json(finished)))
    record = json.loads((exp / "sd_tune" / "trials" / f"{first}.json").read_text())
    record["trial_id"] = "f0reign1"
    record["final"]["val_acc"] = 1.0  # it would top the front
    (exp / "sd_tune" / "trials" / "f0reign1.json").write_text(json.dumps(record))
    result = cli("report", str(exp))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke: 3 trials (3 completed)" in result.stdout
    assert trials_json(exp).keys() == trials_json(finished).keys()
    assert "note: sd_tune/trials/f0reign1.json left out: this experiment's state" in result.stdout


def test_resume_sets_aside_a_garbage_trial_record_before_it_starts(
    finished: Path, tmp_path: Path
) -> None:
    """A trial record overwritten with garbage is found before Tune starts, set aside and
    written anew from the trial's folder; report and resume then run clean."""
    exp = copy_of(finished, tmp_path)
    first = next(iter(trials_json(finished)))
    garbage = b"\x00\xffnot json at all" * 10
    (exp / "sd_tune" / "trials" / f"{first}.json").write_bytes(garbage)
    result = cli("resume", str(exp))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"note: sd_tune/trials/{first}.json cannot be read ("), lines
    assert lines[0].endswith(f", and written anew from trial_{first}"), lines[0]
    (aside,) = (exp / "sd_tune" / "trials").glob(f"{first}.json.set-aside-*")
    assert aside.read_bytes() == garbage
    rebuilt = json.loads((exp / "sd_tune" / "trials" / f"{first}.json").read_text())
    original = json.loads((finished / "sd_tune" / "trials" / f"{first}.json").read_text())
    for key in ("status", "params", "final", "history"):
        assert rebuilt[key] == original[key], key
    assert "smoke: 3 trials (3 completed)" in result.stdout
    again = cli("report", str(exp))
    assert again.returncode == 0 and "unreadable" not in again.stdout, again.stdout


def test_resume_rebuilds_a_train_checkpoint_list_cut_short(finished: Path, tmp_path: Path) -> None:
    """Ray Train's checkpoint list of an unfinished trial cut short (as a full disk does): resume
    finds it before Tune starts, rebuilds it from the run's checkpoint folders, and the trial
    continues from its last epoch; no finished epoch's metrics are lost."""
    exp = copy_of(finished, tmp_path)
    (state_file,) = exp.glob("experiment_state-*.json")
    state = json.loads(state_file.read_text())
    trial = json.loads(state["trial_data"][0][0])
    trial_id = trial["trial_id"]
    trial["status"] = "PENDING"  # unfinished, as when the driver was killed while it ran
    state["trial_data"][0][0] = json.dumps(trial)
    state_file.write_text(json.dumps(state))
    run = exp / "train_runs" / f"train_{trial_id}"
    snapshot = run / "checkpoint_manager_snapshot.json"
    whole = snapshot.read_bytes()
    snapshot.write_bytes(whole[: len(whole) // 2])
    before = _epochs(exp / f"trial_{trial_id}" / "result.json")
    assert len(before) == 2
    result = cli("resume", str(exp))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0].startswith(
        f"note: train_runs/train_{trial_id}/checkpoint_manager_snapshot.json is not a whole "
        "checkpoint list ("
    ), result.stdout
    assert "rebuilt from the run's checkpoints: the trial continues after epoch 2" in result.stdout
    assert "smoke: 3 trials (3 completed)" in result.stdout, result.stdout
    assert _epochs(exp / f"trial_{trial_id}" / "result.json") == before

    def history(records: dict[str, dict]) -> list[dict]:  # the node ids are this Ray's
        return [
            {k: v for k, v in h.items() if k != "worker_node_ids"}
            for h in records[trial_id]["history"]
        ]

    assert history(trials_json(exp)) == history(trials_json(finished))
    (aside,) = run.glob("checkpoint_manager_snapshot.json.set-aside-*")
    assert aside.read_bytes() == whole[: len(whole) // 2]
    rebuilt, original = json.loads(snapshot.read_text()), json.loads(whole)
    for key in ("checkpoint_report_indices", "current_report_index"):
        assert rebuilt[key] == original[key], key
    assert [r["checkpoint_dir_name"] for r in rebuilt["checkpoint_results"]] == [
        r["checkpoint_dir_name"] for r in original["checkpoint_results"]
    ]


def test_resume_after_a_truncated_state_keeps_every_finished_trial(
    finished: Path, tmp_path: Path
) -> None:
    exp = copy_of(finished, tmp_path / "a")
    (state_file,) = exp.glob("experiment_state-*.json")
    state_file.write_bytes(state_file.read_bytes()[: state_file.stat().st_size // 3])
    result = cli("resume", str(exp))
    for trial_id, record in trials_json(finished).items():
        assert trials_json(exp)[trial_id]["final"] == record["final"], result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke: 3 trials (3 completed)" in result.stdout
    assert "restored the copy sd-tune kept at" in result.stdout
    # with no good copy to restore, resume changes nothing and says what is kept
    exp = copy_of(finished, tmp_path / "b")
    (state_file,) = exp.glob("experiment_state-*.json")
    state_file.write_bytes(state_file.read_bytes()[: state_file.stat().st_size // 3])
    (exp / "sd_tune" / "tune_state.json").unlink()
    before = sorted(p.relative_to(exp) for p in exp.rglob("*"))
    result = cli("resume", str(exp))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert (
        "no whole copy of it is there; nothing was changed. The 3 finished trial(s)"
        in result.stderr
    )
    assert sorted(p.relative_to(exp) for p in exp.rglob("*")) == before


def test_two_launches_into_one_name_exactly_one_runs(tmp_path: Path) -> None:
    """Two launches into one folder and name, 1 s apart: one runs, the other exits 2 at once
    naming it."""
    args = (
        "launch",
        "--space",
        "search_spaces/smoke.yaml",
        "--storage",
        str(tmp_path),
        "--set",
        "search.num_samples=1",
        "--set",
        "train.epochs=1",
        "--set",
        "train.warmup_epochs=0",
    )
    first = start(*args)
    time.sleep(1)
    second = start(*args)
    outs = {}
    try:
        for proc in (first, second):
            outs[proc.pid] = proc.communicate(timeout=600)[0]
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                kill_session(proc.pid)
    ran, refused = sorted((first, second), key=lambda p: p.returncode)
    assert (ran.returncode, refused.returncode) == (0, 2), outs
    assert outs[refused.pid].count("\n") == 1, outs[refused.pid]
    assert (
        f"is in use by sd-tune launch (pid {ran.pid} on {socket.gethostname()}" in outs[refused.pid]
    )
    assert len(list((tmp_path / "smoke").glob("trial_*"))) == 1
    assert len(trials_json(tmp_path / "smoke")) == 1
    assert not (tmp_path / "smoke" / ".sd_tune.lock").exists()


def test_a_full_disk_ends_in_one_message_and_loses_nothing(
    tmp_path: Path, tmpfs: Callable[..., Path]
) -> None:
    """The storage fills up after the first trial: the search stops with one message naming
    the storage and its free space; after freeing space, report and resume keep that trial
    (same metrics) and finish the search."""
    disk = tmpfs("48m")
    proc = start(
        "launch",
        "--space",
        "search_spaces/smoke.yaml",
        "--storage",
        str(disk),
        "--set",
        "search.num_samples=2",
    )
    exp = disk / "smoke"
    deadline = time.time() + 300
    try:
        while not list((exp / "sd_tune" / "trials").glob("*.json")):
            assert proc.poll() is None and time.time() < deadline, "no trial finished"
            time.sleep(1)
        filler = disk / "filler"
        # Unbuffered: a buffered file keeps a short write's rest and raises ENOSPC again when
        # it is closed (that made this test flaky).
        with filler.open("wb", buffering=0) as f, pytest.raises(OSError, match="No space left"):
            while True:
                f.write(b"\0" * 65536)
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            kill_session(proc.pid)
    assert proc.returncode == 2, out
    message = out.splitlines()[-1]
    assert (
        message.startswith(f"sd-tune launch: error: the storage {disk} is full (")
        and "free of 48.0 MiB): the search stopped" in message
    ), out
    assert f"continue with `sd-tune resume {exp}`" in message
    assert "Traceback" not in out, out
    kept = {p.stem: json.loads(p.read_text()) for p in (exp / "sd_tune" / "trials").glob("*")}
    assert any(r["status"] == "completed" for r in kept.values())
    filler.unlink()
    report = cli("report", str(exp))
    assert "Traceback" not in report.stdout + report.stderr
    for trial_id, record in kept.items():
        assert trials_json(exp)[trial_id]["final"] == record["final"]
    resumed = cli("resume", str(exp))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    records = trials_json(exp)
    for trial_id, record in kept.items():
        if record["status"] == "completed":
            assert records[trial_id]["final"] == record["final"]
    assert sum(r["status"] == "completed" for r in records.values()) == 2, records


def test_an_error_file_too_large_to_read_is_skipped(tmp_path: Path) -> None:
    """A trial's error.txt over the size limit gives no error line (it crashed the progress
    callback and `report` before: store.TooLarge is a ValueError, not an OSError)."""
    from types import SimpleNamespace

    from sd_tune import search

    trial_dir = tmp_path / "trial_abc12"
    trial_dir.mkdir()
    with (trial_dir / "error.txt").open("wb") as f:
        f.truncate(search.MAX_TRIAL_FILE_BYTES + 1)  # sparse: nothing is written
    trial = SimpleNamespace(path=str(trial_dir))
    assert search.results._error_txt(trial_dir) is None
    assert search.trial_error(trial) == ""
    (trial_dir / "error.txt").write_text(
        "Traceback (most recent call last):\n  x\nValueError: boom\n"
    )
    assert search.results._error_txt(trial_dir) == "ValueError: boom"
    assert search.trial_error(trial) == "ValueError: boom"


def test_a_full_storage_aborts_the_search_instead_of_finishing_its_trials() -> None:
    """Tune's stop_all would mark every running and pending trial finished (and the searcher
    done), so resume could not continue them: the stopper raises instead, leaving Tune's
    saved state as it was."""
    from sd_tune import search
    from sd_tune import storage as store

    stopper = search.StopWhenStorageFails()
    search.STORAGE_FAILED.clear()
    assert stopper.stop_all() is False
    for kind in ("full", "unreachable"):
        search.STORAGE_FAILED.set(kind)
        try:
            with pytest.raises(store.StorageFailed, match=f"the storage failed: {kind}"):
                stopper.stop_all()
        finally:
            search.STORAGE_FAILED.clear()
