"""The ``sd-tune`` command as a user runs it: a real subprocess, its output and exit code."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sd_tune.cli", *args], capture_output=True, text=True, timeout=120
    )


def call(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``sd_tune.cli.main`` in this process (no interpreter start-up: the same code and exit
    code as ``run``, for the checks that need many calls)."""
    from sd_tune.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def test_rates_prints_every_block() -> None:
    result = run("rates", "--arch", "resnet50", "--drop-rate", "0.2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split()[1:] == ["layer1.0", "Bottleneck", "0.0125"]
    assert lines[16].split()[1:] == ["layer4.2", "Bottleneck", "0.2000"]
    assert lines[-1] == "16 blocks, expected depth 14.30 of 16"


@pytest.mark.slow  # 8-12 s of interpreter start-ups: CI runs it, the quick loop does not
def test_user_error_is_one_line_and_exit_2() -> None:
    result = run("rates", "--arch", "resnet51")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "sd-tune rates: error: `arch` must be one of" in result.stderr
    assert "Traceback" not in result.stderr
    bad_rate = run("rates", "--drop-rate", "1.5")
    assert bad_rate.returncode == 2
    assert "`0 <= drop_rate <= 1` must hold, but got drop_rate=1.5" in bad_rate.stderr


def write_space(tmp_path: Path, text: str) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("command", ["validate", "launch", "train"])
def test_bad_space_file_lists_every_problem_and_exits_2(tmp_path: Path, command: str) -> None:
    space = write_space(
        tmp_path,
        "name: bad\nmodel: {family: resnet, depth: 51}\n"
        "train: {epochs: 0, warmup_epochs: 0, lr: fast}\nbogus: 1\n",
    )
    result = run(command, "--space", space)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{space}: 4 problems:" in result.stderr
    for key in ("bogus", "model.depth", "train.epochs", "train.lr"):
        assert f"  {key}: " in result.stderr


def test_missing_file_and_bad_set_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = call(capsys, "validate", "--space", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    bad_set = call(capsys, "validate", "--space", "search_spaces/smoke.yaml", "--set", "epochs")
    assert bad_set.returncode == 2 and "--set takes section.key=value" in bad_set.stderr
    for key, flag in (("name", "--name"), ("storage", "--storage")):
        own = call(capsys, "validate", "--space", "search_spaces/smoke.yaml", "--set", f"{key}=x")
        assert own.returncode == 2
        assert f"--set {key}=x: {key} is not a section.key setting; give it with {flag}" in (
            own.stderr
        )
    wrong = call(
        capsys,
        "validate",
        "--space",
        "search_spaces/smoke.yaml",
        "--set",
        "stochastic_depth.drop_rate=2",
    )
    assert wrong.returncode == 2 and "stochastic_depth.drop_rate" in wrong.stderr


def test_validate_ok_for_every_shipped_space(capsys: pytest.CaptureFixture[str]) -> None:
    for path in sorted(Path("search_spaces").glob("*.yaml")):
        result = call(capsys, "validate", "--space", str(path))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"{path}: ok:")


@pytest.mark.slow  # 8-12 s of interpreter start-ups: CI runs it, the quick loop does not
def test_missing_data_fails_before_ray_with_the_fix(tmp_path: Path) -> None:
    space = write_space(
        tmp_path,
        f"name: nodata\ndataset: {{name: cifar10, root: {tmp_path}}}\n"
        f"space: {{train.lr: {{loguniform: [0.01, 0.1]}}}}\n",
    )
    for command in ("launch", "train"):
        result = run(command, "--space", space, "--storage", str(tmp_path))
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and str(tmp_path) in result.stderr
        assert "not found" in result.stderr, result.stderr
        assert not (tmp_path / "nodata").exists()


@pytest.mark.slow  # 8-12 s of interpreter start-ups: CI runs it, the quick loop does not
def test_an_address_where_nothing_listens_exits_2_at_once(tmp_path: Path) -> None:
    """--address and $RAY_ADDRESS (plain and ray://) to a closed port: one message naming
    the address given and exit 2 within 30 s, instead of Ray's retries for many minutes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "sd_tune.cli", "launch", "--space", "search_spaces/smoke.yaml"]
    cases = {
        f"127.0.0.1:{port}": (["--address", f"127.0.0.1:{port}"], {}),
        f"ray://127.0.0.1:{port}": ([], {"RAY_ADDRESS": f"ray://127.0.0.1:{port}"}),
    }
    procs = {
        address: subprocess.Popen(
            [*command, "--storage", str(tmp_path / str(i)), *extra],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, (address, (extra, env)) in enumerate(cases.items())
    }
    for address, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == 2, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"cannot connect to the Ray cluster at {address}: nothing answers" in err, err


@pytest.mark.parametrize("command", ["report", "resume"])
def test_no_experiment_at_a_folder_or_uri_exits_2(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for where in (
        "file:///nonexistent/smoke",
        str(tmp_path),
        f"file://{tmp_path}?endpoint_override=127.0.0.1:9000&scheme=http",
    ):
        result = call(capsys, command, where)
        assert result.returncode == 2, result.stdout + result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert "is not an sd-tune experiment folder (no sd_tune_space.json)" in result.stderr
        assert where.split("?")[0] in result.stderr
    unknown = call(capsys, command, "nosuch://bucket/smoke")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "cannot read nosuch://bucket/smoke/sd_tune_space.json" in unknown.stderr


def test_storage_defaults_to_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """$SD_TUNE_STORAGE (what the launcher configs and the RayJob set) stands in for
    --storage; --storage wins. Seen before Ray starts: the experiment exists there."""
    for root in ("env", "flag"):
        (tmp_path / root / "smoke").mkdir(parents=True)
        (tmp_path / root / "smoke" / "sd_tune_space.json").write_text("{}")
    monkeypatch.setenv("SD_TUNE_STORAGE", str(tmp_path / "env"))
    space = ("launch", "--space", "search_spaces/smoke.yaml")
    result = call(capsys, *space)
    assert result.returncode == 2
    assert f"already exists in {tmp_path / 'env' / 'smoke'}" in result.stderr
    result = call(capsys, *space, "--storage", str(tmp_path / "flag"))
    assert result.returncode == 2
    assert f"already exists in {tmp_path / 'flag' / 'smoke'}" in result.stderr


@pytest.mark.slow
def test_gpu_space_on_a_cpu_cluster_fails_with_the_numbers(tmp_path: Path) -> None:
    space = write_space(
        tmp_path,
        "name: gpu\nresources: {num_workers: 2, use_gpu: true}\n"
        "space: {train.lr: {loguniform: [0.01, 0.1]}}\n",
    )
    result = run("launch", "--space", space, "--storage", str(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "needs 2 workers x 1.0 GPU = 2.0 GPUs but the Ray cluster has 0.0 GPUs" in result.stderr
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- hostile input

SMOKE = "search_spaces/smoke.yaml"


def one_line_exit_2(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_an_alias_bomb_and_a_huge_list_end_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [
        f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi")
    ]
    bomb = write_space(tmp_path, "\n".join([*lines, "name: *i"]) + "\n")
    huge = tmp_path / "huge.yaml"
    huge.write_text("space:\n  train.lr: {choice: [" + "0.1, " * 10_000_000 + "0.1]}\n")
    for path in (bomb, str(huge)):
        for command in ("validate", "launch", "train"):
            start = time.perf_counter()
            storage = [] if command == "validate" else ["--storage", str(tmp_path)]
            result = call(capsys, command, "--space", path, *storage)
            assert time.perf_counter() - start < 5
            assert result.returncode == 2 and len(result.stderr) < 500, result.stderr
            assert "Traceback" not in result.stderr
            assert (
                "found an alias (*a)"
                if path == bomb
                else "is 48,828 KiB, but a space file is at most 256 KiB"
            ) in result.stderr


@pytest.mark.parametrize("command", ["launch", "train"])
def test_names_that_leave_the_storage_are_refused(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    for name in ("../../escape", "../x", "/abs/path", "a/b", ".", "x" * 300):
        result = call(capsys, command, "--space", SMOKE, "--storage", str(store), "--name", name)
        one_line_exit_2(result, "--name must be one folder name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    assert list(store.iterdir()) == []


@pytest.mark.parametrize("command", ["launch", "train"])
def test_what_used_to_end_in_a_traceback_is_one_line(
    tmp_path: Path, command: str, tmpfs: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    for value, why in (
        ("[1,", "expected the node content"),
        ("*x", "found an alias"),
        ("!!python/object/apply:os.system ['true']", "constructor for the tag"),
    ):
        result = call(capsys, command, "--space", SMOKE, "--set", f"train.epochs={value}")
        one_line_exit_2(result, "--set train.epochs: ", why)
    (tmp_path / "file").write_text("")
    result = call(capsys, command, "--space", SMOKE, "--storage", str(tmp_path / "file"))
    one_line_exit_2(result, "cannot write to --storage", "a file is in the way")
    result = call(capsys, command, "--space", SMOKE, "--max-failures", "-5")
    one_line_exit_2(result, "`0 <= max_failures <= 100` must hold, but got '-5'")
    for seconds in ("nan", "inf", "-5", "soon"):
        result = call(capsys, command, "--space", SMOKE, "--wait-for-nodes", seconds)
        one_line_exit_2(result, f"`wait_for_nodes >= 0` (seconds) must hold, but got '{seconds}'")
    ro = tmpfs("64k", "ro")
    result = call(capsys, command, "--space", SMOKE, "--storage", str(ro))
    one_line_exit_2(result, f"cannot write to --storage {ro}: Read-only file system")


def test_launch_refuses_a_space_with_nothing_to_search(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = write_space(tmp_path, "name: same\nspace: {train.lr: 0.2}\n")
    result = call(capsys, "launch", "--space", space, "--storage", str(tmp_path))
    one_line_exit_2(
        result,
        "space: lists no setting to search (only fixed values), so all 8 "
        "trials would train the same settings",
    )
    assert "searching nothing" in call(capsys, "validate", "--space", space).stdout


# ----------------------------------------------------------------------------- report


def fake_experiment(folder: Path, trials: int, epochs: int = 2) -> list[dict]:
    """An experiment folder as sd-tune leaves it, without running anything: the saved space
    and a finished-trial record per trial (what `report` needs)."""
    from sd_tune import search
    from sd_tune.config import load_yaml, space_from_dict

    raw = load_yaml(SMOKE)
    raw["search"]["num_samples"] = trials
    spec = space_from_dict(raw, SMOKE)
    search.save_spec(spec, str(folder), raw)
    records = []
    for i in range(trials):
        history = [
            {"epoch": e, "val_acc": 0.5 + 0.01 * i + 0.1 * e, "train_time_s": 10.0 * e}
            for e in range(1, epochs + 1)
        ]
        history[-1]["test_acc"] = 0.6
        record = search.records._record(
            f"t{i:05d}",
            {"stochastic_depth.drop_rate": i / (10 * trials)},
            search.base_config(spec),
            history,
            "TERMINATED",
            None,
        )
        (folder / search.RECORDS_DIR).mkdir(parents=True, exist_ok=True)
        (folder / search.RECORDS_DIR / f"t{i:05d}.json").write_text(json.dumps(record))
        records.append(record)
    return records


def test_report_names_a_trial_the_restored_state_no_longer_lists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A trial folder that Tune's state does not list is `abandoned` when the state was
    saved after the folder last changed (restored from an earlier copy), else `running`."""
    exp = tmp_path / "smoke"
    fake_experiment(exp, 1)  # t00000, finished
    entry = {"trial_id": "t00000", "status": "TERMINATED", "config": {}}
    state = exp / "experiment_state-2026-01-01_00-00-00.json"
    state.write_text(json.dumps({"trial_data": [[json.dumps(entry), "{}"]]}))
    for trial_id, when in (("old00", 1_000), ("new00", 3_000)):
        folder = exp / f"trial_{trial_id}"
        folder.mkdir()
        (folder / "result.json").write_text('{"epoch": 1, "val_acc": 0.4, "train_time_s": 5}\n')
        os.utime(folder, (when, when))
    os.utime(state, (2_000, 2_000))
    result = call(capsys, "report", str(exp))
    assert "Traceback" not in result.stdout + result.stderr
    trials = {t["trial_id"]: t for t in json.loads((exp / "trials.json").read_text())["trials"]}
    assert {k: t["status"] for k, t in trials.items()} == {
        "t00000": "completed",
        "old00": "abandoned",
        "new00": "running",
    }


def test_report_reads_what_it_can_and_names_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = tmp_path / "smoke"
    fake_experiment(exp, 2)
    cut = exp / "trial_cut00"  # a trial without a record, its result.json cut short
    cut.mkdir()
    (cut / "result.json").write_text(
        '{"epoch": 1, "val_acc": 0.4, "train_time_s": 5}\n{"epoch": 2, "val_a'
    )
    result = call(capsys, "report", str(exp))
    one_line_exit_2(result, "1 file(s) of the experiment could not be read")
    assert "unreadable: trial_cut00/result.json: line 2 is not valid JSON" in result.stdout
    assert "smoke: 3 trials (2 completed, 1 running)" in result.stdout
    trials = json.loads((exp / "trials.json").read_text())["trials"]
    assert [len(t["history"]) for t in trials] == [2, 2, 1]

    (exp / "sd_tune_space.json").write_text('{"raw": {"name": "smo')
    result = call(capsys, "report", str(exp))
    assert (
        "note: sd_tune_space.json cannot be read (not valid JSON); used its copy" in result.stdout
    )
    (exp / "sd_tune" / "space.json").write_text("[]")
    result = call(capsys, "report", str(exp))
    one_line_exit_2(result, "the experiment's saved space file cannot be read")


@pytest.mark.slow
def test_ctrl_c_during_report_is_one_line_and_keeps_the_old_report(tmp_path: Path) -> None:
    import os
    import signal

    exp = tmp_path / "smoke"
    fake_experiment(exp, 2000)
    assert run("report", str(exp)).returncode == 0
    before = (exp / "trials.json").read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sd_tune.cli", "report", str(exp)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as in a terminal: a suite started in the background (`cmd &`) hands its
        # children SIGINT ignored, and Python then installs no handler (it exited 0).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while not list(exp.glob(".tensorboard.new-*")):  # it is writing the TensorBoard entries
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, out + err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "sd-tune report: error: interrupted (Ctrl-C); the report files are whole" in err
    assert (exp / "trials.json").read_bytes() == before
    assert not list(exp.glob(".tensorboard.*"))


@pytest.mark.slow
@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="needs Debian's dataset-fashion-mnist",
)
def test_train_again_under_a_name_keeps_every_earlier_metric(tmp_path: Path) -> None:
    args = ("train", "--space", SMOKE, "--storage", str(tmp_path), "--name", "run1")
    first = run(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    metrics = tmp_path / "run1" / "metrics.jsonl"
    rows = metrics.read_text()
    assert len(rows.splitlines()) == 2
    again = run(*args)
    one_line_exit_2(
        again, "a run named 'run1' is in", "continue it with the same command with --resume"
    )
    assert metrics.read_text() == rows
    changed = run(*args, "--resume", "--set", "train.epochs=3")
    one_line_exit_2(
        changed, "the run 'run1' was started with other settings (train.epochs: 2 -> 3)"
    )
    resumed = run(*args, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    last = json.loads(rows.splitlines()[-1])
    assert f"done: val_acc {last['val_acc']:.4f}, test_acc {last['test_acc']:.4f}" in resumed.stdout
    assert metrics.read_text() == rows
    summary = json.loads((tmp_path / "run1" / "summary.json").read_text())
    assert summary["final"] == last


@pytest.mark.parametrize("command", ["validate", "launch"])
def test_bad_repeats_end_in_one_message_and_exit_2(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for value, why in (
        ("0", "search.repeats: must be >= 1, but got 0"),
        ("-1", "search.repeats: must be >= 1, but got -1"),
        ("1.5", "search.repeats: must be an integer, but got 1.5"),
        ('"3"', "search.repeats: must be an integer, but got '3'"),
        ("1000000000", "search.repeats: must be <= 100 ("),
    ):
        result = call(capsys, command, "--space", SMOKE, "--set", f"search.repeats={value}")
        assert result.returncode == 2 and why in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and not result.stdout
    seeded = call(
        capsys, command, "--space", SMOKE, "--set", "search.repeats=3",
        "--set", "space.train.seed={choice: [1, 2]}",
    )  # fmt: skip
    assert seeded.returncode == 2, seeded.stdout + seeded.stderr
    assert "space.train.seed: cannot be searched with search.repeats 3" in seeded.stderr
    asha = call(
        capsys, command, "--space", SMOKE, "--set", "search.repeats=2",
        "--set", "search.scheduler={kind: asha}",
    )  # fmt: skip
    assert asha.returncode == 2, asha.stdout + asha.stderr
    assert "search.scheduler: ASHA stops seeds one by one" in asha.stderr


def test_validate_counts_configurations_and_seeds(capsys: pytest.CaptureFixture[str]) -> None:
    result = call(capsys, "validate", "--space", SMOKE, "--set", "search.repeats=2")
    assert result.returncode == 0, result.stderr
    assert (
        "experiment 'smoke', 8 trials (3 configurations x 2 seeds, then the best again without "
        "stochastic depth: 2 baseline seeds) of cifar_resnet"
    ) in result.stdout
    off = call(
        capsys, "validate", "--space", SMOKE, "--set", "search.repeats=2",
        "--set", "search.baseline=false",
    )  # fmt: skip
    assert "experiment 'smoke', 6 trials (3 configurations x 2 seeds) of cifar_resnet" in (
        off.stdout
    )


@pytest.mark.parametrize("command", ["validate", "launch"])
def test_a_baseline_that_cannot_compare_ends_in_one_message_and_exit_2(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for sets, why in (
        (["search.baseline=true"], "search.baseline: needs search.repeats 2 or more (got 1)"),
        (
            ["search.baseline=true", "search.repeats=3", "space.stochastic_depth.drop_rate=0"],
            "search.baseline: compares stochastic depth with drop rate 0, but the drop rate "
            "is fixed at 0",
        ),
    ):
        args = [a for s in sets for a in ("--set", s)]
        result = call(capsys, command, "--space", SMOKE, *args)
        assert result.returncode == 2 and why in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and not result.stdout


def test_an_experiment_saved_before_baselines_reports_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seeds per configuration landed before the baseline: such an experiment's saved space
    has no `baseline`, so it is finished without one; a new one saves `baseline: true` and
    is unfinished until its baseline seeds have run."""
    from sd_tune import search
    from sd_tune.config import load_yaml, space_from_dict

    for folder, old in ((tmp_path / "old", True), (tmp_path / "new", False)):
        raw = load_yaml(SMOKE)
        raw["search"].update(num_samples=2, repeats=2)
        spec = space_from_dict(raw, SMOKE)
        assert spec.search.baseline is True
        search.save_spec(spec, str(folder), raw)
        if old:
            saved = json.loads((folder / search.SPEC_FILE).read_text())
            del saved["baseline"]
            for name in (search.SPEC_FILE, search.SPEC_COPY):
                (folder / name).write_text(json.dumps(saved))
        for i in range(4):
            config = {
                "stochastic_depth.drop_rate": 0.1 * (i // 2),
                "config_id": f"c{i // 2:05d}",
                "repeat": i % 2,
            }
            history = [{"epoch": e, "val_acc": 0.5, "train_time_s": 1.0} for e in (1, 2)]
            record = search.records._record(
                f"t{i}", config, search.base_config(spec), history, "TERMINATED", None
            )
            (folder / search.RECORDS_DIR).mkdir(parents=True, exist_ok=True)
            (folder / search.RECORDS_DIR / f"t{i}.json").write_text(json.dumps(record))
        assert search.load_spec(str(folder))[0].search.baseline is not old
        result = call(capsys, "report", str(folder))
        assert result.returncode == 0, result.stderr
        unfinished = "the search is unfinished (4 of 6 trials started, 0 unfinished)"
        assert (unfinished in result.stdout) is not old, result.stdout
