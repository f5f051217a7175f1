"""Reports of a search: Pareto fronts, time to accuracy, files and TensorBoard event files.

Fixed, hand-made trial tables; TensorBoard output is read back with TensorBoard's own reader
and its HParams plugin, from real event files.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hp_meta

from sd_tune.config import Objective
from sd_tune.report import (
    format_pareto_table,
    load_records,
    pareto_front,
    time_to_accuracy,
    write_results,
)

ACC_TIME = [Objective("val_acc", "max"), Objective("train_time_s", "min")]
FAIL_REASON = "FloatingPointError: non-finite training loss at epoch 2"
LONG_ID = "train_trial_" + "x" * 70 + "/odd name"


def rec(
    trial_id: str,
    status: str,
    final: dict[str, Any] | None = None,
    *,
    params: dict[str, Any] | None = None,
    history: list[dict] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    return {
        "trial_id": trial_id,
        "status": status,
        "final": final or {},
        "params": params or {},
        "history": history or [],
        "error": error,
    }


def at(acc: float, secs: float, **more: float) -> dict[str, float]:
    return {"val_acc": acc, "train_time_s": secs, **more}


def ids(records: list[dict]) -> list[str]:
    return [r["trial_id"] for r in records]


# A hand-made result table for max val_acc / min train_time_s. Front: A and F (identical), B, E.
TABLE = [
    rec("A", "completed", at(0.90, 100)),
    rec("B", "completed", at(0.85, 60)),
    rec("C", "completed", at(0.85, 80)),  # B: same accuracy, faster
    rec("D", "completed", at(0.80, 60)),  # B: same time, more accurate
    rec("E", "completed", at(0.70, 30)),
    rec("F", "completed", at(0.90, 100)),  # a tie with A: both kept
    rec("G", "stopped_early", at(0.95, 20)),  # would dominate everything
    rec("H", "failed", at(0.99, 10), error=FAIL_REASON),
    rec("I", "completed", at(math.nan, 5)),  # NaN: no value
    rec("J", "completed", {"val_acc": 0.99}),  # no train_time_s
    rec("K", "running", at(0.5, 5)),
    rec("L", "pending"),
]


# --------------------------------------------------------------------------- Pareto


def test_pareto_max_min_keeps_ties_drops_dominated_and_partial_trials() -> None:
    assert ids(pareto_front(TABLE, ACC_TIME)) == ["A", "F", "B", "E"]
    assert ids(pareto_front(TABLE)) == ["A", "F", "B", "E"]  # the default objectives
    # order of the input does not matter
    assert ids(pareto_front(TABLE[::-1], ACC_TIME)) == ["A", "F", "B", "E"]


def test_pareto_front_only_from_completed_trials_even_if_others_dominate() -> None:
    table = [
        rec("slow", "completed", at(0.80, 100)),
        rec("early", "stopped_early", at(0.90, 10)),
        rec("broken", "failed", at(0.95, 5)),
        rec("live", "running", at(0.99, 1)),
    ]
    assert ids(pareto_front(table, ACC_TIME)) == ["slow"]
    assert pareto_front([r for r in table if r["status"] != "completed"], ACC_TIME) == []
    assert pareto_front([], ACC_TIME) == []


def test_pareto_three_objectives() -> None:
    objectives = [
        Objective("val_acc", "max"),
        Objective("train_time_s", "min"),
        Objective("images_per_s", "max"),
    ]
    table = [
        rec("p", "completed", at(0.9, 100, images_per_s=500)),
        rec("q", "completed", at(0.8, 50, images_per_s=400)),
        rec("r", "completed", at(0.8, 60, images_per_s=900)),  # faster images than q
        rec("s", "completed", at(0.8, 60, images_per_s=800)),  # r
        rec("t", "completed", at(0.7, 50, images_per_s=400)),  # q
        rec("u", "completed", at(0.9, 120, images_per_s=600)),  # faster images than p
        rec("v", "completed", at(0.99, 1)),
    ]  # no images_per_s
    assert ids(pareto_front(table, objectives)) == ["p", "u", "q", "r"]
    assert ids(pareto_front(table[:-1], ACC_TIME)) == ["p", "q"]


def test_pareto_single_objective_is_the_argmax_with_ties() -> None:
    table = [
        rec("a", "completed", at(0.90, 10)),
        rec("b", "completed", at(0.95, 30)),
        rec("c", "completed", at(0.95, 20)),
        rec("d", "failed", at(0.99, 5)),
    ]
    assert ids(pareto_front(table, [Objective("val_acc", "max")])) == ["b", "c"]
    assert ids(pareto_front(table, [Objective("train_time_s", "min")])) == ["a"]
    assert ids(pareto_front(table, [("val_acc", "max")])) == ["b", "c"]
    assert ids(pareto_front(table, [{"metric": "val_acc", "mode": "max"}])) == ["b", "c"]


def test_pareto_rejects_bad_objectives_and_records() -> None:
    with pytest.raises(ValueError, match=r"'max', 'min'.*'maximise'"):
        pareto_front(TABLE, [Objective("val_acc", "maximise")])
    with pytest.raises(ValueError, match="must not be empty"):
        pareto_front(TABLE, [])
    with pytest.raises(ValueError, match=r"trial record 1 .*trial_id"):
        pareto_front([TABLE[0], {"status": "completed"}], ACC_TIME)
    with pytest.raises(ValueError, match=r"unique.*'A'"):
        pareto_front([TABLE[0], TABLE[0]], ACC_TIME)


# --------------------------------------------------------------------------- time to accuracy


def epochs(*points: tuple[float, float]) -> list[dict[str, float]]:
    return [
        {"epoch": i + 1, "train_time_s": t, "val_acc": a, "wall_time_s": t + 1}
        for i, (t, a) in enumerate(points)
    ]


TTA_TABLE = [
    rec("a", "completed", history=epochs((10, 0.40), (20, 0.55), (30, 0.70), (40, 0.72))),
    rec("b", "stopped_early", history=epochs((5, 0.30), (15, 0.60), (25, 0.58))),
    rec("c", "failed", history=epochs((12, 0.40), (20, 0.65), (35, math.nan)), error="boom"),
    rec("d", "pending"),
]


def test_time_to_accuracy_step_function_over_every_epoch_of_every_trial() -> None:
    points = time_to_accuracy(TTA_TABLE)
    expected = [
        (5, 0.30, "b", 1),  # the stopped-early trial's first epoch
        (10, 0.40, "a", 1),  # c reaches 0.40 at 12: no strict improvement
        (15, 0.60, "b", 2),
        (20, 0.65, "c", 2),  # a also reports at 20 (0.55): the better one is kept
        (30, 0.70, "a", 3),  # b's 0.58 at 25 is no improvement; c's NaN is skipped
        (40, 0.72, "a", 4),
    ]
    assert [(p["time_s"], p["val_acc"], p["trial_id"], p["epoch"]) for p in points] == expected
    assert time_to_accuracy(TTA_TABLE[::-1]) == points
    assert time_to_accuracy([]) == []


def test_time_to_accuracy_other_metric_and_mode() -> None:
    table = [
        rec(
            "a",
            "completed",
            history=[
                {"epoch": 1, "wall_time_s": 3, "val_loss": 2.0},
                {"epoch": 2, "wall_time_s": 6, "val_loss": 2.5},
                {"epoch": 3, "wall_time_s": 9, "val_loss": 1.0},
            ],
        )
    ]
    points = time_to_accuracy(table, "val_loss", "wall_time_s", mode="min")
    assert [(p["time_s"], p["val_loss"]) for p in points] == [(3, 2.0), (9, 1.0)]


# --------------------------------------------------------------------------- tables


def test_format_pareto_table_fixed_width_with_long_ids_and_int_params() -> None:
    front = [
        rec(
            LONG_ID,
            "completed",
            at(0.9123, 120.34, test_acc=0.9),
            params={"stochastic_depth.drop_rate": 0.25, "model.depth": 56},
        ),
        rec(
            "b",
            "completed",
            at(0.8, 60.0),
            params={"stochastic_depth.drop_rate": 0.5, "model.depth": 110},
        ),
    ]
    text = format_pareto_table(front, ACC_TIME, ["stochastic_depth.drop_rate", "model.depth"])
    lines = text.splitlines()
    assert lines[0].split() == [
        "rank",
        "trial",
        "drop_rate",
        "depth",
        "val_acc",
        "(max)",
        "train_time_s",
        "(min)",
        "test_acc",
    ]
    assert len(lines) == 3 and len({len(line) for line in lines[:2]}) == 1
    assert lines[1].split() == ["1", "train_trial_xxxxxxx~", "0.25", "56", "0.9123", "120.3", "0.9"]
    assert lines[2].split() == ["2", "b", "0.5", "110", "0.8", "60", "-"]
    assert "empty" in format_pareto_table([], ACC_TIME)


# --------------------------------------------------------------------------- files + TB


def full_table() -> list[dict[str, Any]]:
    """A small experiment: two front trials, a dominated one, stopped early, two failed."""

    def params(rate: float, dist: str, depth: int) -> dict[str, Any]:
        return {
            "stochastic_depth.drop_rate": rate,
            "stochastic_depth.drop_distribution": dist,
            "model.depth": depth,
        }

    return [
        rec(
            "t_fast",
            "completed",
            at(0.85, 60, epoch=3, test_acc=0.84),
            params=params(0.5, "linear", 20),
            history=epochs((20, 0.7), (40, 0.8), (60, 0.85)),
        ),
        rec(
            "t_best",
            "completed",
            at(0.90, 100, epoch=2, test_acc=0.89),
            params=params(0.1, "uniform", 56),
            history=epochs((50, 0.8), (100, 0.9)),
        ),
        rec(
            "t_dom",
            "completed",
            at(0.80, 90, epoch=2),
            params=params(0.2, "linear", 20),
            history=epochs((45, 0.7), (90, 0.8)),
        ),
        rec(
            "t_early",
            "stopped_early",
            at(0.75, 25, epoch=1),
            params=params(0.9, "uniform", 110),
            history=epochs((25, 0.75)),
        ),
        rec(
            "t_nan",
            "failed",
            at(math.nan, 30, epoch=1),
            params=params(0.8, "linear", 32),
            history=epochs((30, math.nan)),
            error=FAIL_REASON,
        ),
        rec(
            LONG_ID,
            "failed",
            {},
            params=params(0.3, "linear", 44),
            error="Traceback (most recent call last):\n  File x\nRuntimeError: worker died",
        ),
        rec("t_wait", "pending", params=params(0.4, "uniform", 20)),
    ]


def strict_json(path: Path) -> Any:
    def bad(name: str) -> None:
        raise AssertionError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=bad)


def accumulator(path: Path) -> event_accumulator.EventAccumulator:
    acc = event_accumulator.EventAccumulator(
        str(path),
        size_guidance={
            event_accumulator.TENSORS: 0,
            event_accumulator.IMAGES: 0,
            event_accumulator.SCALARS: 0,
        },
    )
    acc.Reload()
    return acc


def session_groups(logdir: Path) -> tuple[dict, dict]:
    """What TensorBoard's HParams dashboard asks its plugin for: the experiment and sessions."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import hparams_plugin
    from werkzeug.test import Client

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    context = base_plugin.TBContext(
        logdir=str(logdir),
        multiplexer=mux,
        data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir)),
    )
    apps = hparams_plugin.HParamsPlugin(context).get_plugin_apps()

    def post(route: str, body: dict) -> dict:
        response = Client(apps[route]).post("/", json=body)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()

    statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
    return (
        post("/experiment", {"experimentName": ""}),
        post(
            "/session_groups",
            {
                "experimentName": "",
                "allowedStatuses": statuses,
                "colParams": [],
                "startIndex": 0,
                "sliceSize": 100,
            },
        ),
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], list]:
    exp_dir = tmp_path_factory.mktemp("exp")
    records = full_table()
    paths = write_results(exp_dir, "sd-demo", records, ACC_TIME)
    return exp_dir, paths, records


def test_write_results_files_exist_and_agree(written: tuple) -> None:
    exp_dir, paths, records = written
    for key in (
        "trials_csv",
        "trials_json",
        "pareto_json",
        "time_to_accuracy_json",
        "summary_md",
        "figure_png",
        "tensorboard",
    ):
        assert paths[key].exists() and paths[key].parent == exp_dir, key
    assert paths["figure_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = strict_json(paths["trials_json"])
    assert data["name"] == "sd-demo"
    assert data["objectives"] == [
        {"metric": "val_acc", "mode": "max"},
        {"metric": "train_time_s", "mode": "min"},
    ]
    assert ids(data["trials"]) == ids(records)
    assert data["trials"][4]["final"]["val_acc"] is None  # NaN written as null
    assert data["trials"][0]["history"] == records[0]["history"]

    with paths["trials_csv"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial_id"] for r in rows] == ids(records)
    for row, record in zip(rows, data["trials"]):
        assert row["status"] == record["status"]
        assert row["error"] == (record["error"] or "")
        assert row["epochs_reported"] == str(len(record["history"]))
        for key, value in record["params"].items():
            assert row[f"param.{key}"] == str(value)
        for key in ("val_acc", "train_time_s", "test_acc"):
            value = record["final"].get(key)
            assert row[key] == ("" if value is None else str(value)), (row, key)

    pareto = strict_json(paths["pareto_json"])
    front = [t["trial_id"] for t in pareto["trials"]]
    completed = {r["trial_id"] for r in records if r["status"] == "completed"}
    assert front == ["t_best", "t_fast"] and set(front) <= completed
    assert pareto["trials"][0] == {
        "rank": 1,
        "trial_id": "t_best",
        "params": records[1]["params"],
        "objectives": {"val_acc": 0.9, "train_time_s": 100},
        "test_acc": 0.89,
        "n": 1,  # one seed: its mean, no std and no interval
        "spread": {
            m: {"mean": v, "std": None, "n": 1, "ci_low": None, "ci_high": None, "confidence": 0.95}
            for m, v in (("val_acc", 0.9), ("train_time_s", 100), ("test_acc", 0.89))
        },
    }

    tta = strict_json(paths["time_to_accuracy_json"])["points"]
    assert [(p["time_s"], p["val_acc"], p["trial_id"]) for p in tta] == [
        (20, 0.7, "t_fast"),
        (25, 0.75, "t_early"),
        (40, 0.8, "t_fast"),
        (60, 0.85, "t_fast"),
        (100, 0.9, "t_best"),
    ]

    assert ids(load_records(exp_dir)) == ids(records)
    assert load_records(paths["trials_json"])[0]["history"] == records[0]["history"]


def test_summary_markdown(written: tuple) -> None:
    exp_dir, paths, records = written
    text = paths["summary_md"].read_text()
    assert "sd-demo" in text
    assert "7 trials: 3 completed, 1 stopped early, 2 failed, 1 pending." in text
    assert FAIL_REASON in text and "RuntimeError: worker died" in text
    for record in records:
        if record["status"] == "failed":
            assert record["trial_id"] in text
    assert "Trial `t_best`: val_acc 0.9, train_time_s 100, test_acc 0.89" in text
    table = [line for line in text.splitlines() if line.startswith("| 1 |")]
    assert table and "t_best" in table[0] and "| 56 |" in table[0]
    assert f"tensorboard --logdir {exp_dir}" in text


def test_tensorboard_hparams_image_and_text_read_back(written: tuple) -> None:
    _, paths, records = written
    tb_dir = paths["tensorboard"]

    root = accumulator(tb_dir)
    assert "pareto_front" in root.Tags()["images"]
    image = root.Images("pareto_front")[0]
    assert image.encoded_image_string[:4] == b"\x89PNG" and image.width > 100
    text_tag = "summary/text_summary"
    assert text_tag in root.PluginTagToContent("text")
    text = root.Tensors(text_tag)[0].tensor_proto.string_val[0].decode()
    assert text == paths["summary_md"].read_text()
    experiment = hp_meta.parse_experiment_plugin_data(
        root.PluginTagToContent(hp_meta.PLUGIN_NAME)[hp_meta.EXPERIMENT_TAG]
    )
    hparams = {h.name: h for h in experiment.hparam_infos}
    assert set(hparams) == {
        "stochastic_depth.drop_rate",
        "stochastic_depth.drop_distribution",
        "model.depth",
        "status",
    }
    assert hparams["model.depth"].type == api_pb2.DATA_TYPE_FLOAT64
    assert [v.number_value for v in hparams["model.depth"].domain_discrete.values] == [
        20,
        32,
        44,
        56,
        110,
    ]
    assert {m.name.tag for m in experiment.metric_infos} >= {
        "final/val_acc",
        "final/train_time_s",
        "final/test_acc",
    }

    runs = sorted(p.parent for p in (tb_dir / "trials").rglob("events.out.tfevents.*"))
    assert len(runs) == len(records)  # the long id with "/" and a space became one folder
    sessions = {}
    for run in runs:
        acc = accumulator(run)
        content = acc.PluginTagToContent(hp_meta.PLUGIN_NAME)
        assert hp_meta.EXPERIMENT_TAG in content  # every session run repeats the experiment
        start = hp_meta.parse_session_start_info_plugin_data(
            content[hp_meta.SESSION_START_INFO_TAG]
        )
        sessions[start.group_name] = acc, content, start  # the group is the full trial id
    assert set(sessions) == set(ids(records))
    for record in records:
        acc, content, start = sessions[record["trial_id"]]
        assert start.hparams["status"].string_value == record["status"]
        assert start.hparams["model.depth"].number_value == record["params"]["model.depth"]
        assert (
            start.hparams["stochastic_depth.drop_distribution"].string_value
            == record["params"]["stochastic_depth.drop_distribution"]
        )
        assert start.hparams["stochastic_depth.drop_rate"].number_value == pytest.approx(
            record["params"]["stochastic_depth.drop_rate"]
        )
        if record["status"] == "pending":
            assert hp_meta.SESSION_END_INFO_TAG not in content
        else:
            end = hp_meta.parse_session_end_info_plugin_data(content[hp_meta.SESSION_END_INFO_TAG])
            expected = (
                api_pb2.STATUS_FAILURE if record["status"] == "failed" else api_pb2.STATUS_SUCCESS
            )
            assert end.status == expected
        value = record["final"].get("val_acc")
        if value is not None and math.isfinite(value):
            assert acc.Scalars("final/val_acc")[0].value == pytest.approx(value)
            assert len(acc.Scalars("epoch/val_acc")) == len(record["history"])
        else:
            assert "final/val_acc" not in acc.Tags()["scalars"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_hparams_dashboard_lists_every_trial(written: tuple) -> None:
    """The HParams plugin itself (what the dashboard calls) sees every trial with its values."""
    _, paths, records = written
    experiment, groups = session_groups(paths["tensorboard"])
    assert {h["name"] for h in experiment["hparamInfos"]} >= {"model.depth", "status"}
    assert groups["totalSize"] == len(records)
    by_status: dict[str, int] = {}
    for group in groups["sessionGroups"]:
        by_status[group["hparams"]["status"]] = by_status.get(group["hparams"]["status"], 0) + 1
        if group["name"] == "t_best":
            metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
            assert metrics["final/val_acc"] == pytest.approx(0.9)
            assert group["sessions"][0]["status"] == "STATUS_SUCCESS"
    assert by_status == {"completed": 3, "stopped_early": 1, "failed": 2, "pending": 1}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_write_results_twice_does_not_double_events(tmp_path: Path) -> None:
    records = full_table()[:2]
    write_results(tmp_path, "again", records, ACC_TIME)
    write_results(tmp_path, "again", records, ACC_TIME)
    assert len(list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))) == 3
    _, groups = session_groups(tmp_path / "tensorboard")
    assert groups["totalSize"] == 2


def test_write_results_with_zero_trials(tmp_path: Path) -> None:
    paths = write_results(tmp_path / "empty", "nothing", [])
    assert "No trials" in paths["summary_md"].read_text()
    assert "Empty" in paths["summary_md"].read_text()
    assert paths["trials_csv"].read_text().splitlines() == ["trial_id,status,epochs_reported,error"]
    assert strict_json(paths["pareto_json"])["trials"] == []
    assert strict_json(paths["time_to_accuracy_json"])["points"] == []
    assert load_records(paths["trials_json"]) == []
    root = accumulator(paths["tensorboard"])
    assert "pareto_front" in root.Tags()["images"]
    assert "summary/text_summary" in root.PluginTagToContent("text")


def test_hparam_types_bool_mixed_and_lists(tmp_path: Path) -> None:
    """Choices of any JSON type reach TensorBoard: bools as bools, mixed types as text."""
    records = [
        rec("a", "completed", at(0.9, 10), params={"flag": True, "mix": 1, "lst": [1, 2]}),
        rec("b", "completed", at(0.8, 5), params={"flag": False, "mix": "auto"}),
        rec("c", "failed", params={"flag": None, "mix": math.nan}),
    ]
    paths = write_results(tmp_path, "types", records, figure=False)
    experiment = hp_meta.parse_experiment_plugin_data(
        accumulator(paths["tensorboard"]).PluginTagToContent("hparams")[hp_meta.EXPERIMENT_TAG]
    )
    types = {h.name: h.type for h in experiment.hparam_infos}
    assert types == {
        "flag": api_pb2.DATA_TYPE_BOOL,
        "mix": api_pb2.DATA_TYPE_STRING,
        "lst": api_pb2.DATA_TYPE_STRING,
        "status": api_pb2.DATA_TYPE_STRING,
    }
    starts = {}
    for run in (paths["tensorboard"] / "trials").iterdir():
        content = accumulator(run).PluginTagToContent("hparams")
        start = hp_meta.parse_session_start_info_plugin_data(
            content[hp_meta.SESSION_START_INFO_TAG]
        )
        starts[start.group_name] = start.hparams
    assert starts["a"]["flag"].bool_value is True and starts["a"]["mix"].string_value == "1"
    assert starts["a"]["lst"].string_value == "[1, 2]"
    assert starts["b"]["mix"].string_value == "auto"
    assert set(starts["c"]) == {"status"}  # None and NaN are left out
    with paths["trials_csv"].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["param.lst"] == "[1, 2]" and rows[2]["param.mix"] == ""


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_report_that_does_not_fit_leaves_the_previous_one_whole(tmpfs) -> None:
    """Every report file is replaced in one step: on a full disk the old ones stay readable."""
    disk = tmpfs("600k")
    records = full_table()[:2]
    write_results(disk, "fits", records, ACC_TIME)
    before = {p.relative_to(disk): p.read_bytes() for p in disk.rglob("*") if p.is_file()}
    big = [rec(f"t{i}", "completed", at(0.5, i), params={"note": "x" * 2000}) for i in range(400)]
    with pytest.raises(OSError, match="No space left on device"):
        write_results(disk, "does not fit", big, ACC_TIME)
    after = {p.relative_to(disk): p.read_bytes() for p in disk.rglob("*") if p.is_file()}
    assert after == before  # whole, and no temporary file or folder left behind
    assert [r["trial_id"] for r in load_records(disk)] == [r["trial_id"] for r in records]


def test_the_baseline_comparison_in_every_file_and_tensorboard(tmp_path: Path) -> None:
    """Seeds of two configurations and the winner's baseline: the baseline stays off the
    front, and its comparison reaches comparison.json, summary.md, trials.csv and TensorBoard's
    summary text (read back with TensorBoard's reader)."""
    from sd_tune.comparison import BASELINE_KEY, compare
    from sd_tune.verdict import sentence

    def seed(trial_id: str, config_id: str, rate: float, acc: float, secs: float) -> dict:
        settings = {
            "stochastic_depth.drop_rate": rate,
            "stochastic_depth.drop_distribution": "linear",
            "model.depth": 20,
        }
        final = {"val_acc": acc, "train_time_s": secs, "test_acc": acc - 0.01}
        return rec(trial_id, "completed", final, params=settings) | {"config_id": config_id}

    records = [
        *(seed(f"a{i}", "c00000", 0.2, a, 50 + i) for i, a in enumerate((0.91, 0.92, 0.915))),
        *(seed(f"b{i}", "c00001", 0.4, a, 40 + i) for i, a in enumerate((0.80, 0.81, 0.805))),
        *(
            seed(f"z{i}", "c00000-baseline", 0.0, a, 60 + i) | {BASELINE_KEY: "c00000"}
            for i, a in enumerate((0.99, 0.98, 0.985))  # better and slower: off the front
        ),
    ]
    paths = write_results(tmp_path, "with-baseline", records, ACC_TIME)
    front = strict_json(paths["pareto_json"])["trials"]
    assert {p["config_id"] for p in front} == {"c00000", "c00001"}
    data = strict_json(paths["comparison_json"])
    (c,) = data["comparisons"]
    assert c["config_id"] == "c00000" and c["depth"] == 20 and c["drop_rate"] == 0.2
    assert c["n"] == {"stochastic_depth": 3, "baseline": 3}
    assert sorted(c["baseline_seeds"]) == ["z0", "z1", "z2"]
    test = c["differences"]["test_acc"]
    assert test["delta"] == pytest.approx(0.915 - 0.985)
    assert test["ci_low"] < test["delta"] < test["ci_high"] < 0 and test["p"] < 0.05
    assert test["p_holm"] == pytest.approx(test["p"])  # one depth
    assert set(c["differences"]) == {"test_acc", "val_acc", "train_time_s"}
    (said,) = data["sentences"]
    assert said.startswith("depth 20, drop rate 0.2 linear: stochastic depth did worse: ")
    summary = paths["summary_md"].read_text()
    assert "## Against no stochastic depth" in summary and f"- {said}." in summary
    assert "| 20 | `c00000` | 3 / 3 | \u22127.00 ± " in summary
    header, *rows = paths["trials_csv"].read_text().strip().splitlines()
    assert header.startswith(f"trial_id,config_id,{BASELINE_KEY},status,")
    assert [row.split(",")[2] for row in rows] == [""] * 6 + ["c00000"] * 3
    root = accumulator(paths["tensorboard"])
    text = root.Tensors("summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert said in text
    assert said == sentence(compare(records)[0])
    _, groups = session_groups(paths["tensorboard"])
    marks = {
        session["name"].rsplit("/", 1)[-1]: group["hparams"]["baseline_of"]
        for group in groups["sessionGroups"]
        for session in group["sessions"]
    }
    assert marks == {r["trial_id"]: r.get(BASELINE_KEY, "") for r in records}, marks
