"""The sentence for a clear effect, no effect, a worse result and too few seeds."""

from sd_tune.comparison import BASELINE_KEY, compare
from sd_tune.verdict import sentence, val_line


def arms(sd, base, sd_time, base_time, depth=20):
    recs = []
    for arm, values, times in (("sd", sd, sd_time), ("base", base, base_time)):
        for i, (v, t) in enumerate(zip(values, times, strict=True)):
            rec = {
                "trial_id": f"{arm}{depth}_{i}",
                "config_id": "c00000" if arm == "sd" else "c00000-baseline",
                "status": "completed",
                "params": {
                    "model.depth": depth,
                    "stochastic_depth.drop_rate": 0.2 if arm == "sd" else 0.0,
                },
                "config": {"stochastic_depth.drop_distribution": "linear"},
                "final": {"test_acc": v, "val_acc": v, "train_time_s": t},
            }
            if arm == "base":
                rec[BASELINE_KEY] = "c00000"
            recs.append(rec)
    return recs


def one(records):
    (c,) = compare(records)
    return c


def test_clear_effect():
    c = one(
        arms(
            [0.915, 0.918, 0.921, 0.917, 0.919],
            [0.909, 0.911, 0.912, 0.910, 0.913],
            [91, 90, 92, 91, 90],
            [100, 101, 99, 100, 100],
        )
    )
    s = sentence(c)
    assert s.startswith("depth 20, drop rate 0.2 linear: +0.7 ± ")
    assert "points test accuracy over no stochastic depth (p < 0.001; 5 seeds each), " in s
    assert s.endswith(", 9% less training time")
    assert "Holm" not in s  # one depth: nothing to adjust
    assert "chosen on" in val_line(c)


def test_no_effect_says_no_evidence():
    c = one(arms([0.90, 0.92, 0.91], [0.91, 0.90, 0.92], [50, 52, 51], [51, 50, 52]))
    assert sentence(c) == (
        "depth 20, drop rate 0.2 linear: no evidence that stochastic depth helps at this "
        "budget: +0.0 ± 2.3 points test accuracy (p = 1; 3 seeds each), no clear difference "
        "in training time (+0% ± 4%)"
    )


def test_worse_is_said():
    c = one(arms([0.80, 0.81, 0.805], [0.90, 0.905, 0.91], [50, 50, 50.5], [50, 50.5, 50]))
    s = sentence(c)
    assert "stochastic depth did worse: \u221210.0 ± " in s
    assert "against no stochastic depth" in s


def test_one_seed_gives_no_comparison_and_says_why():
    s = sentence(one(arms([0.9], [0.8, 0.81], [1], [1, 1])))
    assert s.startswith("depth 20, drop rate 0.2 linear: no comparison possible: +9.5 points")
    assert "at least 2 finished seeds in each arm" in s
    assert val_line(one(arms([0.9], [0.8, 0.81], [1], [1, 1]))) is None


def test_a_missing_arm_says_which():
    recs = [
        r for r in arms([0.9, 0.91], [0.8, 0.81], [1, 1], [1, 1]) if "baseline" in r["config_id"]
    ]
    for r in recs:
        r["status"] = "failed"
    recs += arms([0.9, 0.91], [], [1, 1], [])
    s = sentence(one(recs))
    assert "no comparison possible: the baseline finished no seed with a test accuracy" in s
    assert "(2 stochastic-depth seeds, 0 baseline seeds)" in s


def test_holm_is_named_across_depths():
    recs = arms([0.915, 0.918, 0.921], [0.909, 0.911, 0.912], [1, 1, 1], [1, 1, 1])
    deep = arms([0.9, 0.91, 0.92], [0.9, 0.91, 0.92], [1, 1, 1], [1, 1, 1], depth=56)
    for r in deep:
        r["config_id"] = r["config_id"].replace("c00000", "c00001")
        if BASELINE_KEY in r:
            r[BASELINE_KEY] = "c00001"
    c20, c56 = compare(recs + deep)
    assert ", Holm; 3 seeds each" in sentence(c20)
    assert sentence(c56).startswith("depth 56, drop rate 0.2 linear: no evidence")
