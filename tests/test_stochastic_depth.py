"""The stochastic-depth contract (docs/design.md §2) on single blocks: drop frequencies, rates 0
and 1, eval scaling, warmup arithmetic and argument checks."""

from __future__ import annotations

import copy

import pytest
import torch
from scipy.stats import binomtest
from torch import nn

from sd_tune import CifarBasicBlock, StochasticResidual, apply_stochastic_depth, drop_rates
from sd_tune.stochastic_depth import check_args, stochastic_residual, warmup_rate

ALPHA = 1e-3  # p-value floor of the binomial tests (fixed seeds: the tests are deterministic)


def bn_eval(model: nn.Module) -> nn.Module:
    """Training mode for the drops, eval mode for BatchNorm (so a kept row is reproducible)."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    return model


def stochastic_block(
    p: float,
    method: str = "sample",
    impl: str = "mask",
    scale_by_keep: bool = False,
    in_planes: int = 4,
    planes: int = 4,
    stride: int = 1,
) -> tuple[nn.Module, nn.Module]:
    """A plain CifarBasicBlock (random BN statistics) and a stochastic copy with rate ``p``."""
    torch.manual_seed(1)
    plain = CifarBasicBlock(in_planes, planes, stride)
    for bn in (plain.bn1, plain.bn2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    model = apply_stochastic_depth(
        nn.Sequential(copy.deepcopy(plain)),
        "auto",
        method,
        p,
        "uniform",
        scale_by_keep=scale_by_keep,
        sample_impl=impl,
    )
    return plain.eval(), bn_eval(model)


def classify_rows(out: torch.Tensor, kept: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """True where a row equals the kept output exactly; every row must be one of the two."""
    is_kept = (out == kept).flatten(1).all(1)
    is_dropped = (out == dropped).flatten(1).all(1)
    assert bool((is_kept | is_dropped).all()), "a row is neither the kept nor the dropped output"
    return is_kept


@pytest.mark.parametrize("impl", ["mask", "subset"])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_sample_drop_frequency_is_binomial(impl: str, p: float) -> None:
    plain, model = stochastic_block(p, "sample", impl)
    torch.manual_seed(2)
    x = torch.randn(13, 4, 6, 6)
    with torch.no_grad():
        kept, dropped = plain(x), torch.relu(x)
        kept_count = sum(int(classify_rows(model(x), kept, dropped).sum()) for _ in range(300))
    n = 300 * x.shape[0]
    result = binomtest(n - kept_count, n, p)
    assert result.pvalue > ALPHA, (impl, p, (n - kept_count) / n, result.pvalue)


@pytest.mark.parametrize("impl", ["mask", "subset"])
def test_sample_drops_are_per_sample_not_per_batch(impl: str) -> None:
    plain, model = stochastic_block(0.5, "sample", impl)
    torch.manual_seed(3)
    x = torch.randn(16, 4, 6, 6)
    with torch.no_grad():
        counts = [int(classify_rows(model(x), plain(x), torch.relu(x)).sum()) for _ in range(100)]
    assert sum(0 < c < 16 for c in counts) > 90  # mixed batches are the rule, not the exception


def test_sample_drop_frequency_with_autograd() -> None:
    """The subset path with gradients (custom autograd functions) drops at the same rate."""
    plain, model = stochastic_block(0.3, "sample", "subset")
    torch.manual_seed(4)
    x = torch.randn(11, 4, 6, 6)
    kept_rows = 0
    for _ in range(200):
        xg = x.clone().requires_grad_()
        out = model(xg)
        out.sum().backward()
        kept_rows += int(classify_rows(out.detach(), plain(x).detach(), torch.relu(x)).sum())
    n = 200 * 11
    assert binomtest(n - kept_rows, n, 0.3).pvalue > ALPHA


def test_subset_keep_count_is_right_in_expectation() -> None:
    """B * (1 - p) = 6.5 is not whole: k is 6 or 7, each half of the time."""
    plain, model = stochastic_block(0.35, "sample", "subset")
    torch.manual_seed(5)
    x = torch.randn(10, 4, 5, 5)
    with torch.no_grad():
        ks = [int(classify_rows(model(x), plain(x), torch.relu(x)).sum()) for _ in range(400)]
    assert set(ks) <= {6, 7}
    assert binomtest(ks.count(7), len(ks), 0.5).pvalue > ALPHA
    assert sum(ks) / len(ks) == pytest.approx(6.5, abs=0.1)


@pytest.mark.parametrize("scale_by_keep", [False, True])
def test_subset_with_no_kept_sample_works(scale_by_keep: bool) -> None:
    _, model = stochastic_block(0.95, "sample", "subset", scale_by_keep)  # B(1-p) = 0.2
    torch.manual_seed(6)
    x = torch.randn(4, 4, 5, 5)
    outs = []
    for _ in range(50):
        xg = x.clone().requires_grad_()
        out = model(xg)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(xg.grad).all()
        outs.append(bool((out == torch.relu(x)).all()))
    assert sum(outs) > 25  # most batches keep nobody (k = 0 with probability 0.8)


def test_subset_downsampling_block_matches_plain_rows() -> None:
    plain, model = stochastic_block(0.5, "sample", "subset", in_planes=4, planes=8, stride=2)
    torch.manual_seed(7)
    x = torch.randn(9, 4, 6, 6)
    with torch.no_grad():
        dropped = torch.relu(plain.shortcut(x))
        kept = sum(int(classify_rows(model(x), plain(x), dropped).sum()) for _ in range(200))
    assert binomtest(9 * 200 - kept, 9 * 200, 0.5).pvalue > ALPHA


@pytest.mark.parametrize("p", [0.2, 0.6])
def test_block_method_drops_whole_batch_at_rate(p: float) -> None:
    plain, model = stochastic_block(p, "block")
    torch.manual_seed(8)
    x = torch.randn(8, 4, 5, 5)  # has negatives: a dropped block returns relu(x), not x
    with torch.no_grad():
        kept, dropped = plain(x), torch.relu(x)
        drops = 0
        for _ in range(400):
            rows = classify_rows(model(x), kept, dropped)
            assert bool(rows.all()) or not bool(rows.any()), "block drops must be batch-wide"
            drops += int(not rows.any())
    assert binomtest(drops, 400, p).pvalue > ALPHA


@pytest.mark.parametrize(
    ("method", "impl"), [("sample", "mask"), ("sample", "subset"), ("block", "mask")]
)
def test_scale_by_keep_scales_kept_rows_in_training(method: str, impl: str) -> None:
    p = 0.4
    plain, model = stochastic_block(p, method, impl, scale_by_keep=True)
    torch.manual_seed(9)
    x = torch.randn(12, 4, 5, 5)
    with torch.no_grad():
        kept = torch.relu(plain.residual_branch(x) / (1 - p) + x)
        dropped = torch.relu(x)
        seen = 0
        for _ in range(30):
            out = model(x)
            close_kept = torch.isclose(out, kept, rtol=1e-6, atol=1e-6).flatten(1).all(1)
            is_dropped = (out == dropped).flatten(1).all(1)
            assert bool((close_kept | is_dropped).all())
            seen += int(close_kept.sum())
    assert seen > 0


@pytest.mark.parametrize(
    ("method", "impl"), [("sample", "mask"), ("sample", "subset"), ("block", "mask")]
)
def test_eval_is_deterministic_and_scaled(method: str, impl: str) -> None:
    p = 0.3
    plain, model = stochastic_block(p, method, impl)
    _, model_sbk = stochastic_block(p, method, impl, scale_by_keep=True)
    model.eval()
    model_sbk.eval()
    torch.manual_seed(10)
    x = torch.randn(6, 4, 5, 5)
    with torch.no_grad():
        state = torch.get_rng_state()
        first, second = model(x), model(x)
        assert torch.equal(torch.get_rng_state(), state), "eval must not draw random numbers"
        assert torch.equal(first, second)
        expected = torch.relu(plain.residual_branch(x) * (1 - p) + x)
        torch.testing.assert_close(first, expected, rtol=1e-6, atol=1e-6)
        assert torch.equal(model_sbk(x), plain(x))


@pytest.mark.parametrize(
    ("method", "impl"), [("sample", "mask"), ("sample", "subset"), ("block", "mask")]
)
@pytest.mark.parametrize("scale_by_keep", [False, True])
def test_rate_one_returns_relu_shortcut_without_nan(
    method: str, impl: str, scale_by_keep: bool
) -> None:
    plain, model = stochastic_block(1.0, method, impl, scale_by_keep, 4, 8, 2)
    torch.manual_seed(11)
    x = torch.randn(5, 4, 6, 6, requires_grad=True)
    out = model(x)
    out.sum().backward()
    assert torch.equal(out, torch.relu(plain.shortcut(x.detach())))
    assert torch.isfinite(x.grad).all()
    for param in model.parameters():
        assert param.grad is None or torch.isfinite(param.grad).all()


def test_functional_matches_module_and_in_place_rules() -> None:
    branch = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3))
    unit = StochasticResidual(branch, drop_rate=0.0).eval()
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        ref = torch.relu(branch(x) + x)
        out = stochastic_residual(x.clone(), branch, x, 0.0, training=False)
        assert torch.equal(unit(x), ref)
        assert torch.equal(out, ref)
    assert "drop_rate=0" in repr(unit)


def test_drop_rates_schedules() -> None:
    assert drop_rates(4, 0.2, "uniform") == [0.2] * 4
    lin = drop_rates(5, 0.3, "linear")
    assert lin == pytest.approx([0.3 * (i + 1) / 5 for i in range(5)])
    assert lin[-1] == 0.3
    assert drop_rates(3, 0.0, "linear") == [0.0, 0.0, 0.0]


def test_warmup_rate_rule() -> None:
    assert warmup_rate(0.4, 0.0, 0.2) == 0.0
    assert warmup_rate(0.4, 0.1, 0.2) == pytest.approx(0.2)
    assert warmup_rate(0.4, 0.2, 0.2) == 0.4
    assert warmup_rate(0.4, 0.7, 0.2) == 0.4
    assert warmup_rate(0.4, 0.0, 0.0) == 0.4
    with pytest.raises(ValueError, match=r"`0 <= progress <= 1` must hold, but got progress=1.5"):
        warmup_rate(0.4, 1.5, 0.2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"stochastic_method": "row"},
            r"`stochastic_method` must be one of 'sample', 'block', but got 'row'",
        ),
        (
            {"drop_distribution": "cosine"},
            r"`drop_distribution` must be one of 'uniform', 'linear', but got 'cosine'",
        ),
        (
            {"sample_impl": "gather"},
            r"`sample_impl` must be one of 'mask', 'subset', but got 'gather'",
        ),
        ({"drop_rate": 1.5}, r"`0 <= drop_rate <= 1` must hold, but got drop_rate=1.5"),
        ({"drop_rate": -0.1}, r"`0 <= drop_rate <= 1` must hold, but got drop_rate=-0.1"),
        ({"drop_rate": float("nan")}, r"`0 <= drop_rate <= 1` must hold, but got drop_rate=nan"),
        ({"drop_rate": "0.1"}, r"`0 <= drop_rate <= 1` must hold, but got drop_rate='0.1'"),
        ({"drop_warmup": 1.0}, r"`0 <= drop_warmup < 1` must hold, but got drop_warmup=1.0"),
        ({"drop_warmup": -0.5}, r"`0 <= drop_warmup < 1` must hold, but got drop_warmup=-0.5"),
        ({"scale_by_keep": "yes"}, r"`scale_by_keep` must be True or False, but got 'yes'"),
    ],
)
def test_check_args_messages(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_args(**kwargs)
    module_kwargs = {
        k: v for k, v in kwargs.items() if k not in ("drop_distribution", "drop_warmup")
    }
    if module_kwargs:
        with pytest.raises(ValueError, match=message):
            StochasticResidual(nn.Identity(), **module_kwargs)


def test_rate_tensor_follows_the_rate_and_keeps_its_precision() -> None:
    _, model = stochastic_block(0.3)
    block = model[0]
    assert block.drop_rate_tensor.item() == pytest.approx(0.3)
    block.drop_rate = 0.125
    assert block.drop_rate_tensor.item() == 0.125
    half = copy.deepcopy(model).half()
    assert half[0].drop_rate_tensor.dtype == torch.float32  # not rounded to float16
    assert half[0].drop_rate_tensor.item() == 0.125
    assert copy.deepcopy(model).double()[0].drop_rate_tensor.dtype == torch.float64


def compiled_rows_kept(
    block: nn.Module, plain: nn.Module, x: torch.Tensor, draws: int, dropped: torch.Tensor
) -> list[int]:
    """Kept-row counts of ``draws`` compiled forward passes; every row must match the plain
    block's output (kept) or the dropped output within float tolerance."""
    counts = []
    with torch.no_grad():
        kept = plain(x)
        for _ in range(draws):
            out = block(x)
            is_kept = torch.isclose(out, kept, rtol=1e-5, atol=1e-5).flatten(1).all(1)
            is_dropped = torch.isclose(out, dropped, rtol=1e-5, atol=1e-5).flatten(1).all(1)
            assert bool((is_kept | is_dropped).all()), "a row is neither kept nor dropped"
            counts.append(int(is_kept.sum()))
    return counts


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "impl"), [("sample", "mask"), ("sample", "subset"), ("block", "mask")]
)
def test_compiled_drop_frequency_is_binomial(method: str, impl: str) -> None:
    """Under torch.compile (inductor, its own RNG) the drop rate is still p; rows still equal
    the plain block's or the shortcut's, within float tolerance."""
    p = 0.4
    plain, model = stochastic_block(p, method, impl)
    compiled = torch.compile(model)
    torch.manual_seed(12)
    x = torch.randn(13, 4, 6, 6)
    counts = compiled_rows_kept(compiled, plain, x, 200, torch.relu(x))
    if method == "block":
        assert set(counts) <= {0, 13}
        drops = counts.count(0)
        assert binomtest(drops, 200, p).pvalue > ALPHA
    else:
        n = 200 * 13
        assert binomtest(n - sum(counts), n, p).pvalue > ALPHA
