"""sd_tune.repeats: seeds per configuration around the real OptunaSearch that `search` builds
(each sampler), read back from the Optuna study: the means it is told, once per
configuration; failures; no barrier between configurations; save and restore mid-group."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from sd_tune.config import space_from_dict
from sd_tune.configurations import TOLD_FILE
from sd_tune.repeats import CONFIG_KEY, REPEAT_KEY, SEED_KEY, RepeatSearcher, repeat_seed
from sd_tune.search import make_searcher

SPACE = {
    "name": "repeats",
    "dataset": {"name": "synthetic"},
    "model": {"family": "cifar_resnet", "depth": 8},
    "space": {
        "stochastic_depth.drop_rate": {"uniform": [0.0, 0.5]},
        "stochastic_depth.drop_distribution": {"choice": ["linear", "uniform"]},
    },
}


def searcher(sampler: str = "tpe", repeats: int = 3, seed: int = 7) -> RepeatSearcher:
    spec = space_from_dict({**SPACE, "search": {"sampler": sampler, "seed": 0, "num_samples": 4}})
    return RepeatSearcher(make_searcher(spec), repeats=repeats, seed=seed)


def study(s: RepeatSearcher) -> optuna.Study:
    return s.inner._ot_study


def result(val_acc: float, train_time_s: float) -> dict[str, float]:
    return {"val_acc": val_acc, "train_time_s": train_time_s, "epoch": 2}


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random"])
def test_each_configuration_runs_its_seeds_and_optuna_gets_the_means(sampler: str) -> None:
    s = searcher(sampler)
    configs = [s.suggest(f"t{i}") for i in range(6)]  # two configurations, three seeds each
    assert [c[CONFIG_KEY] for c in configs] == ["c00000"] * 3 + ["c00001"] * 3
    assert [c[REPEAT_KEY] for c in configs] == [0, 1, 2] * 2
    assert [c[SEED_KEY] for c in configs] == [repeat_seed(7, k) for k in (0, 1, 2)] * 2
    for group in (configs[:3], configs[3:]):
        settings = [
            {k: v for k, v in c.items() if k.startswith("stochastic_depth.")} for c in group
        ]
        assert settings[0] == settings[1] == settings[2] and settings[0]
    assert configs[0]["stochastic_depth.drop_rate"] != configs[3]["stochastic_depth.drop_rate"]

    s.on_trial_complete("t0", result(0.80, 10.0))
    s.on_trial_complete("t4", result(0.50, 30.0))  # seeds end in any order
    s.on_trial_complete("t1", result(0.84, 12.0))
    assert study(s).trials[0].state == optuna.trial.TrialState.RUNNING  # a seed still runs
    s.on_trial_complete("t2", result(0.86, 14.0))
    first = study(s).trials[0]
    assert first.state == optuna.trial.TrialState.COMPLETE
    assert first.values == pytest.approx([0.8333333333, 12.0])
    assert first.params["stochastic_depth.drop_rate"] == configs[0]["stochastic_depth.drop_rate"]
    s.on_trial_complete("t3", result(0.52, 32.0))
    s.on_trial_complete("t5", result(0.54, 34.0))
    assert study(s).trials[1].values == pytest.approx([0.52, 32.0])
    assert len(study(s).trials) == 2  # one Optuna trial per configuration, not per seed


def test_failed_seeds_leave_the_mean_to_the_others_and_all_failed_is_a_failure() -> None:
    s = searcher(repeats=2)
    for i in range(4):
        s.suggest(f"t{i}")
    s.on_trial_complete("t0", None, error=True)
    s.on_trial_complete("t1", result(0.7, 5.0))
    s.on_trial_complete("t2", None, error=True)
    s.on_trial_complete("t3", None, error=True)
    first, second = study(s).trials
    assert first.state == optuna.trial.TrialState.COMPLETE and first.values == [0.7, 5.0]
    assert second.state == optuna.trial.TrialState.FAIL and second.values is None


def test_the_next_configuration_fills_a_free_slot_without_waiting_for_a_group() -> None:
    s = searcher(repeats=2)
    first, second, third = (s.suggest(f"t{i}") for i in range(3))
    assert (first[CONFIG_KEY], second[CONFIG_KEY], third[CONFIG_KEY]) == (
        "c00000",
        "c00000",
        "c00001",
    )
    assert len(study(s).trials) == 2  # both asked, none told


def test_a_repeat_seed_is_no_neighbouring_seed_shifted() -> None:
    """The data order is seeded with seed + epoch: train.seed + k would make repeat k at epoch
    e shuffle as repeat k+1 at epoch e-1."""
    seeds = {repeat_seed(s, k) for s in range(20) for k in range(5)}
    assert len(seeds) == 100
    assert all(repeat_seed(s, k) + 1 != repeat_seed(s, k + 1) for s in range(20) for k in range(4))


def test_save_and_restore_in_the_middle_of_a_configuration(tmp_path: Path) -> None:
    s = searcher(repeats=3)
    configs = [s.suggest(f"t{i}") for i in range(3)]
    s.on_trial_complete("t0", result(0.80, 10.0))
    path = tmp_path / "searcher.pkl"
    s.save(str(path))

    again = searcher(repeats=3)
    again.restore(str(path))
    again.on_trial_complete("t0", result(0.10, 99.0))  # a restored trial told again: ignored
    again.on_trial_complete("t1", result(0.84, 12.0))
    again.on_trial_complete("t2", result(0.86, 14.0))
    (trial,) = study(again).trials
    assert trial.values == pytest.approx([0.8333333333, 12.0])
    assert trial.params["stochastic_depth.drop_rate"] == configs[0]["stochastic_depth.drop_rate"]
    assert again.suggest("t3")[CONFIG_KEY] == "c00001"  # the first is not asked for again
    again.save(str(tmp_path / "later.pkl"))
    told = json.loads((tmp_path / TOLD_FILE).read_text())  # data beside Tune's pickle
    assert told == {
        "c00000": {"seeds": ["t0", "t1", "t2"], "means": {"val_acc": trial.values[0],
                                                          "train_time_s": 12.0}}
    }  # fmt: skip


def test_repeats_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="repeats must be 1 or more, got 0"):
        searcher(repeats=0)


@pytest.mark.slow
def test_inside_tune_each_configuration_gets_its_seeds_and_the_saved_study_the_means(
    ray_session: None, tmp_path: Path
) -> None:
    """A real Tune run (2 trials at a time, actors reused) of 3 configurations x 2 seeds, then
    the best one's baseline (its 2 seeds at drop rate 0; Tune's num_samples is only an upper
    bound: the searcher says when it is done); the searcher state Tune saved is read back and
    its study holds one trial per configuration, told the means."""
    from ray import tune

    from sd_tune.comparison import BASELINE_KEY

    def report_seeded(config: dict) -> None:  # nested: Ray's workers cannot import this module
        rate, repeat = config["stochastic_depth.drop_rate"], config["repeat"]
        tune.report({"val_acc": rate + 0.01 * repeat, "train_time_s": 1.0 + repeat})

    inner = searcher(repeats=1).inner
    with_baseline = RepeatSearcher(inner, 2, 7, configurations=3, baseline=True, depth=8)
    tuner = tune.Tuner(
        tune.with_resources(report_seeded, {"CPU": 0.5}),
        tune_config=tune.TuneConfig(
            search_alg=with_baseline, num_samples=10, max_concurrent_trials=2
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="seeds", verbose=0),
    )
    results = tuner.fit()
    assert not results.errors
    configs: dict[str, list[dict]] = {}
    baseline = []
    for r in results:
        if BASELINE_KEY in r.config:
            baseline.append(r.config)
            continue
        configs.setdefault(r.config[CONFIG_KEY], []).append(r.config)
    assert sorted(configs) == ["c00000", "c00001", "c00002"]
    best = max(configs.values(), key=lambda g: g[0]["stochastic_depth.drop_rate"])
    assert len(baseline) == 2 and {c[BASELINE_KEY] for c in baseline} == {best[0][CONFIG_KEY]}
    assert {c["stochastic_depth.drop_rate"] for c in baseline} == {0.0}
    assert sorted(c[SEED_KEY] for c in baseline) == sorted(c[SEED_KEY] for c in best)
    for group in configs.values():
        assert sorted(c[REPEAT_KEY] for c in group) == [0, 1]
        assert sorted(c[SEED_KEY] for c in group) == sorted(repeat_seed(7, k) for k in (0, 1))
        assert len({c["stochastic_depth.drop_rate"] for c in group}) == 1
    saved = searcher(repeats=2)
    saved.restore_from_dir(str(tmp_path / "seeds"))
    told = study(saved).trials
    assert len(told) == 3 and {t.state for t in told} == {optuna.trial.TrialState.COMPLETE}
    for t in told:
        rate = t.params["stochastic_depth.drop_rate"]
        assert t.values == pytest.approx([rate + 0.005, 1.5])
    # what Optuna was told, as JSON, uploaded with the experiment
    said = json.loads((tmp_path / "seeds" / TOLD_FILE).read_text())
    assert sorted(said) == sorted(configs)
    for config_id, group in configs.items():
        assert len(said[config_id]["seeds"]) == 2
        rate = group[0]["stochastic_depth.drop_rate"]
        assert said[config_id]["means"] == pytest.approx(
            {"val_acc": rate + 0.005, "train_time_s": 1.5}
        )


def test_a_repeat_seed_is_a_valid_train_seed() -> None:
    from sd_tune.config import SEED_LIMIT, space_from_dict

    for k in range(50):
        seed = repeat_seed(2**32 - 1, k)
        assert 0 <= seed < SEED_LIMIT
        assert space_from_dict({"train": {"seed": seed}}).trial.train.seed == seed


def baseline_spec(**search: object) -> dict:
    space = {**SPACE["space"], "model.depth": {"choice": [8, 14]}}
    return {**SPACE, "space": space, "search": {"num_samples": 4, "repeats": 2, **search}}


def finish(s: RepeatSearcher, trial_id: str, config: dict, by_rate: bool = True) -> None:
    # val_acc grows with the drop rate, so each depth's winner is its highest drop rate
    acc = 0.5 + config.get("stochastic_depth.drop_rate", 0.0) if by_rate else 0.6
    s.on_trial_complete(trial_id, result(acc, 10.0 + config[REPEAT_KEY]))


def test_the_baseline_runs_each_depths_best_configuration_with_drop_rate_0_and_its_seeds() -> None:
    from ray.tune.search import Searcher

    from sd_tune.comparison import BASELINE_KEY

    s = make_searcher(space_from_dict(baseline_spec(sampler="random")))
    assert isinstance(s, RepeatSearcher) and s.baseline and s.configurations == 4
    configs = {f"t{i}": s.suggest(f"t{i}") for i in range(8)}
    assert s.suggest("t8") is None  # no baseline before every configuration has ended
    for trial_id, config in list(configs.items())[:-1]:
        finish(s, trial_id, config)
    assert s.suggest("t8") is None  # one seed still runs
    finish(s, "t7", configs["t7"])
    assert len(study(s).trials) == 4
    depths = {c["model.depth"] for c in configs.values()}
    best = {
        d: max((c for c in configs.values() if c["model.depth"] == d),
               key=lambda c: c["stochastic_depth.drop_rate"])
        for d in depths
    }  # fmt: skip
    baseline = [s.suggest(f"b{i}") for i in range(2 * len(depths))]
    assert s.suggest("done") == Searcher.FINISHED
    for config in baseline:
        winner = best[config["model.depth"]]
        assert config[BASELINE_KEY] == winner[CONFIG_KEY]
        assert config[CONFIG_KEY] == f"{winner[CONFIG_KEY]}-baseline"
        assert config["stochastic_depth.drop_rate"] == 0.0
        same = {
            k: v
            for k, v in config.items()
            if k not in ("stochastic_depth.drop_rate", BASELINE_KEY, CONFIG_KEY)
        }
        assert same == {
            k: v for k, v in winner.items() if k not in ("stochastic_depth.drop_rate", CONFIG_KEY)
        } | {SEED_KEY: same[SEED_KEY], REPEAT_KEY: same[REPEAT_KEY]}
    per_depth = {d: sorted(c[SEED_KEY] for c in baseline if c["model.depth"] == d) for d in depths}
    assert all(seeds == sorted(repeat_seed(0, k) for k in (0, 1)) for seeds in per_depth.values())
    for i, config in enumerate(baseline):
        finish(s, f"b{i}", config)
    assert len(study(s).trials) == 4  # the baseline is not told to Optuna
    assert set(s.told) == {c[CONFIG_KEY] for c in configs.values()}


def test_a_restored_searcher_in_the_baseline_phase_hands_out_each_baseline_seed_once(
    tmp_path: Path,
) -> None:
    from ray.tune.search import Searcher

    spec = space_from_dict(baseline_spec(num_samples=2, baseline=True))
    s = make_searcher(spec)
    configs = {f"t{i}": s.suggest(f"t{i}") for i in range(4)}
    for trial_id, config in configs.items():
        finish(s, trial_id, config)
    first = s.suggest("b0")
    s.save_to_dir(str(tmp_path))
    again = make_searcher(spec)
    again.restore_from_dir(str(tmp_path))
    rest = []
    while (config := again.suggest(f"b{len(rest) + 1}")) != Searcher.FINISHED:
        rest.append(config)
    handed = [(c[CONFIG_KEY], c[REPEAT_KEY]) for c in [first, *rest]]
    assert len(handed) == len(set(handed)) == 2 * len({c["model.depth"] for c in configs.values()})


def test_a_fixed_drop_rate_runs_against_its_baseline_with_no_optuna() -> None:
    from ray.tune.search import Searcher

    spec = space_from_dict(
        {**SPACE, "space": {"stochastic_depth.drop_rate": 0.5},
         "search": {"num_samples": 1, "repeats": 3}}
    )  # fmt: skip
    s = make_searcher(spec)
    assert isinstance(s, RepeatSearcher) and s.inner is None
    seeds = [s.suggest(f"t{i}") for i in range(3)]
    assert [c[CONFIG_KEY] for c in seeds] == [
        "c00000"
    ] * 3 and "stochastic_depth.drop_rate" not in seeds[0]
    assert s.suggest("t3") is None
    for i, config in enumerate(seeds):
        finish(s, f"t{i}", config, by_rate=False)
    baseline = [s.suggest(f"b{i}") for i in range(3)]
    assert [c["stochastic_depth.drop_rate"] for c in baseline] == [0.0] * 3
    assert [c[SEED_KEY] for c in baseline] == [c[SEED_KEY] for c in seeds]
    assert s.suggest("b3") == Searcher.FINISHED


def test_no_finished_configuration_means_no_baseline() -> None:
    from ray.tune.search import Searcher

    s = make_searcher(space_from_dict(baseline_spec(num_samples=1)))
    for i in range(2):
        s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", None, error=True)
    assert s.suggest("t2") == Searcher.FINISHED
