"""sd_tune.configurations and the report of a search with seeds per configuration: the front
on the configurations' means, pareto.json's spread against scipy, the tables' mean ± CI and n;
failed seeds, all-failed configurations and records written before seeds existed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy import stats

from sd_tune.config import Objective
from sd_tune.configurations import configurations
from sd_tune.report import configuration_front, format_pareto_table, write_results

OBJECTIVES = [Objective("val_acc", "max"), Objective("train_time_s", "min")]


def seed(trial_id: str, config: str, rate: float, k: int, acc: float | None, secs: float) -> dict:
    status = "failed" if acc is None else "completed"
    final = {} if acc is None else {"val_acc": acc, "train_time_s": secs, "test_acc": acc - 0.01}
    return {
        "trial_id": trial_id,
        "config_id": config,
        "repeat": k,
        "seed": 100 + k,
        "status": status,
        "params": {"stochastic_depth.drop_rate": rate, "train.seed": 100 + k},
        "final": final,
        "history": [{"epoch": 1, **final}] if final else [],
        "error": "boom" if acc is None else None,
    }


RECORDS = [
    # c0: three seeds, the best mean accuracy; one of its seeds is the single worst run
    seed("a0", "c0", 0.1, 0, 0.86, 50.0),
    seed("a1", "c0", 0.1, 1, 0.88, 52.0),
    seed("a2", "c0", 0.1, 2, 0.80, 54.0),
    # c1: its best seed beats every seed of c0, but its mean is lower and it is slower
    seed("b0", "c1", 0.2, 0, 0.90, 60.0),
    seed("b1", "c1", 0.2, 1, 0.70, 62.0),
    seed("b2", "c1", 0.2, 2, None, 0.0),  # failed: n counts the other two
    # c2: fast, less accurate; one seed
    seed("c0s", "c2", 0.3, 0, 0.75, 30.0),
    # c3: every seed failed
    seed("d0", "c3", 0.4, 0, None, 0.0),
    seed("d1", "c3", 0.4, 1, None, 0.0),
]


def test_a_configuration_is_the_mean_of_its_completed_seeds() -> None:
    by_id = {c["trial_id"]: c for c in configurations(RECORDS, OBJECTIVES)}
    assert list(by_id) == ["c0", "c1", "c2", "c3"]
    c0, c1, c2, c3 = by_id.values()
    assert c0["final"]["val_acc"] == pytest.approx(0.84666666) and c0["n"] == 3
    assert c1["final"]["val_acc"] == pytest.approx(0.80) and c1["n"] == 2
    assert c1["seeds"] == ["b0", "b1", "b2"] and c1["status"] == "completed"
    assert c2["n"] == 1 and c2["spread"]["val_acc"]["ci_low"] is None
    assert c3["status"] == "failed" and c3["n"] == 0 and c3["error"] == "boom"
    assert c0["params"] == {"stochastic_depth.drop_rate": 0.1}  # the seed is no setting
    ci = stats.ttest_1samp([0.86, 0.88, 0.80], 0.0).confidence_interval(0.95)
    assert (c0["spread"]["val_acc"]["ci_low"], c0["spread"]["val_acc"]["ci_high"]) == (
        pytest.approx((ci.low, ci.high))
    )


def test_the_front_is_on_the_means_not_on_the_luckiest_seed() -> None:
    front = configuration_front(RECORDS, OBJECTIVES)
    # per seed, b0 (0.90) would lead; on means c0 dominates c1 (more accurate and faster)
    assert [c["trial_id"] for c in front] == ["c0", "c2"]


def test_the_report_files_carry_each_configurations_spread(tmp_path: Path) -> None:
    paths = write_results(tmp_path, "seeds", RECORDS, OBJECTIVES, tensorboard=False)
    pareto = json.loads(paths["pareto_json"].read_text())["trials"]
    c0 = pareto[0]
    assert (c0["config_id"], c0["n"], c0["seeds"]) == ("c0", 3, ["a0", "a1", "a2"])
    assert c0["objectives"]["val_acc"] == pytest.approx(0.84666666)
    s = c0["spread"]["train_time_s"]
    assert (s["mean"], s["std"], s["n"]) == pytest.approx((52.0, 2.0, 3))
    ci = stats.ttest_1samp([50.0, 52.0, 54.0], 0.0).confidence_interval(0.95)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert pareto[1]["spread"]["val_acc"]["std"] is None  # n = 1: no std, no interval
    trials = json.loads(paths["trials_json"].read_text())["trials"]
    assert [r["trial_id"] for r in trials] == [r["trial_id"] for r in RECORDS]  # every seed
    assert [r["status"] for r in trials if r["config_id"] == "c1"] == ["completed"] * 2 + ["failed"]
    summary = paths["summary_md"].read_text()
    half_acc = stats.sem([0.86, 0.88, 0.80]) * stats.t.ppf(0.975, 2)  # 0.1034
    half_time = (ci.high - ci.low) / 2  # 4.968
    acc, time = f"± {half_acc:.4g}", f"± {half_time:.4g}"
    row = f"| 1 | c0 | 0.1 | 0.8467 {acc} | 52 {time} | 0.8367 {acc} | 3 |"
    assert row in summary, summary
    assert "| 2 | c2 | 0.3 | 0.75 | 30 | 0.74 | 1 |" in summary  # n = 1: never ± 0
    best = f"Configuration `c0` (mean ± 95% CI of n = 3 seeds): val_acc 0.8467 ± {half_acc:.4g}"
    assert best in summary, summary


def test_the_terminal_table_shows_mean_and_interval_and_n() -> None:
    table = format_pareto_table(configuration_front(RECORDS, OBJECTIVES), OBJECTIVES)
    header, first, second = table.splitlines()
    assert header.split()[:2] == ["rank", "configuration"] and header.split()[-1] == "n"
    assert "0.8467 ± 0.1034" in first and first.endswith(" 3")
    assert "±" not in second and second.endswith(" 1")


def test_records_without_seeds_are_configurations_of_one() -> None:
    old = [
        {"trial_id": "x", "status": "completed", "params": {"a.b": 1},
         "final": {"val_acc": 0.9, "train_time_s": 10.0}},
        {"trial_id": "y", "status": "failed", "params": {"a.b": 2}, "final": {}},
    ]  # fmt: skip
    x, y = configurations(old, OBJECTIVES)
    assert (x["trial_id"], x["n"], y["n"]) == ("x", 1, 0)
    assert x["spread"]["val_acc"] == {
        "mean": 0.9, "std": None, "n": 1, "ci_low": None, "ci_high": None, "confidence": 0.95,
    }  # fmt: skip
    table = format_pareto_table(configuration_front(old, OBJECTIVES), OBJECTIVES)
    assert table.splitlines()[0].split()[:2] == ["rank", "trial"] and "±" not in table


def test_what_optuna_was_told_is_checked_against_the_report() -> None:
    from sd_tune.configurations import disagreements

    entries = configurations(RECORDS, OBJECTIVES)
    c0 = {"seeds": ["a0", "a1", "a2"], "means": {"val_acc": 0.84666666666666667,
          "train_time_s": 52.0}}  # fmt: skip
    assert disagreements(entries, {"c0": c0}, OBJECTIVES) == []
    assert disagreements(entries, {}, OBJECTIVES) == []  # nothing told: nothing to compare
    fewer = {"seeds": ["a0", "a1"], "means": {"val_acc": 0.87, "train_time_s": 51.0}}
    (line,) = disagreements(entries, {"c0": fewer}, OBJECTIVES)
    assert line.startswith(
        "configuration c0: Optuna was told val_acc 0.87 (mean of 2 seeds), the report's is "
        "0.8467 (of 3): Tune's state was restored from an earlier copy"
    ), line
    other = {"seeds": ["a0", "a1", "a2"], "means": {"val_acc": 0.5, "train_time_s": 52.0}}
    assert len(disagreements(entries, {"c0": other}, OBJECTIVES)) == 1
    failed = {"seeds": [], "means": None}  # every seed of c3 failed: so Optuna was told
    assert disagreements(entries, {"c3": failed}, OBJECTIVES) == []
