"""The baseline comparison against scipy and by hand, on fixed numbers."""

import json
import math

import pytest
from scipy import stats

from sd_tune.comparison import BASELINE_KEY, compare, difference, holm

SD = [0.912, 0.921, 0.917, 0.925]
BASE = [0.901, 0.904, 0.899]


def welch_by_hand(a, b, confidence=0.95):
    """Welch's t by its formulas (Welch 1947; Satterthwaite's degrees of freedom)."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    se2 = va / len(a) + vb / len(b)
    df = se2**2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    t = (ma - mb) / math.sqrt(se2)
    q = stats.t.ppf((1 + confidence) / 2, df)
    return (
        ma - mb,
        ma - mb - q * math.sqrt(se2),
        ma - mb + q * math.sqrt(se2),
        2 * stats.t.sf(abs(t), df),
    )


def test_difference_is_welchs_interval_and_p():
    d = difference("test_acc", SD, BASE)
    delta, low, high, p = welch_by_hand(SD, BASE)
    assert d.delta == pytest.approx(delta)
    assert (d.low, d.high) == (pytest.approx(low), pytest.approx(high))
    assert d.p == pytest.approx(p)
    assert d.p == pytest.approx(stats.ttest_ind(SD, BASE, equal_var=False).pvalue)
    assert d.sd.n == 4 and d.base.n == 3
    assert d.relative == pytest.approx(delta / (sum(BASE) / 3))
    assert d.half_width == pytest.approx((high - low) / 2)


def test_unequal_variances_are_not_pooled():
    a, b = [1.0, 1.1, 0.9, 1.05, 0.95], [0.0, 2.0, 0.4]
    welch = difference("m", a, b)
    pooled = stats.ttest_ind(a, b, equal_var=True)
    assert welch.p == pytest.approx(welch_by_hand(a, b)[3])
    assert welch.p != pytest.approx(pooled.pvalue)


def test_one_seed_in_an_arm_gives_no_interval():
    d = difference("test_acc", [0.91], BASE)
    assert d.delta == pytest.approx(0.91 - sum(BASE) / 3)
    assert d.low is None and d.high is None and d.p is None and d.half_width is None


def test_no_spread_in_either_arm_is_an_exact_difference():
    d = difference("m", [0.5, 0.5], [0.4, 0.4])
    assert (d.low, d.high, d.p) == (pytest.approx(0.1), pytest.approx(0.1), 0.0)
    assert difference("m", [0.5, 0.5], [0.5, 0.5]).p == 1.0


def test_holm_matches_published_examples():
    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm") and p.adjust(c(.01, .02, .03, .04, .05))
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx([0.05, 0.08, 0.09, 0.09, 0.09])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1, monotone
    assert holm([0.2]) == [0.2] and holm([]) == []


def seeds(config_id, depth, rate, values, times, baseline=False, status="completed"):
    out = []
    for i, (v, t) in enumerate(zip(values, times, strict=True)):
        rec = {
            "trial_id": f"{config_id}{'b' if baseline else ''}{i}",
            "config_id": f"{config_id}-baseline" if baseline else config_id,
            "status": status,
            "params": {
                "model.depth": depth,
                "stochastic_depth.drop_rate": 0.0 if baseline else rate,
            },
            "config": {"stochastic_depth.drop_distribution": "linear"},
            "final": {"test_acc": v, "val_acc": v + 0.01, "train_time_s": t},
        }
        if baseline:
            rec[BASELINE_KEY] = config_id
        out.append(rec)
    return out


def test_compare_pairs_each_winner_with_its_baseline_and_adjusts_across_depths():
    records = [
        *seeds("c00003", 56, 0.3, [0.93, 0.94, 0.935], [90, 91, 92]),
        *seeds("c00003", 56, 0.3, [0.92, 0.921, 0.925], [100, 99, 101], baseline=True),
        *seeds("c00000", 20, 0.1, SD, [50, 51, 52, 50]),
        *seeds("c00000", 20, 0.1, BASE, [50, 51, 52], baseline=True),
        *seeds("c00001", 20, 0.4, [0.5, 0.6], [40, 40]),  # not a winner: no baseline
        *seeds("c00000", 20, 0.1, [0.1], [9], baseline=True, status="failed"),
    ]
    records[-1]["trial_id"] = "failed0"
    c20, c56 = compare(records)
    assert (c20.depth, c20.config_id, c20.drop_rate, c20.distribution) == (
        20,
        "c00000",
        0.1,
        "linear",
    )
    assert c56.depth == 56 and c20.n == (4, 3) and c56.n == (3, 3)
    assert "failed0" not in c20.base_seeds
    raw = [c20.differences["test_acc"].p, c56.differences["test_acc"].p]
    assert [
        c20.differences["test_acc"].p_holm,
        c56.differences["test_acc"].p_holm,
    ] == pytest.approx(holm(raw))
    assert c20.holm_family == c56.holm_family == 2
    assert c20.differences["test_acc"].p == pytest.approx(welch_by_hand(SD, BASE)[3])
    t = c56.differences["train_time_s"]
    assert t.delta == pytest.approx(-9.0) and t.relative == pytest.approx(-0.09)
    assert c20.differences["val_acc"].p_holm is None  # only test_acc is adjusted
    data = json.loads(json.dumps([c.to_dict() for c in (c20, c56)]))
    assert data[0]["n"] == {"stochastic_depth": 4, "baseline": 3}
    assert data[0]["differences"]["test_acc"]["ci_low"] == pytest.approx(
        c20.differences["test_acc"].low
    )


def test_no_baseline_records_no_comparison():
    assert compare(seeds("c00000", 20, 0.1, SD, [1, 1, 1, 1])) == []
