"""Surgery on real ResNets: block discovery, rates in forward order, rates 0 and 1, warmup,
state_dict compatibility, deepcopy/pickle/.to(), DDP on gloo, and bad arguments."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torchvision
from torch import nn

from sd_tune import (
    StochasticBlock,
    StochasticDepth,
    apply_stochastic_depth,
    build_model,
    expected_depth,
    model_names,
    set_drop_progress,
    set_drop_rates,
    stochastic_blocks,
)

BLOCK_COUNTS = {
    "resnet18": 8,
    "resnet34": 16,
    "resnet50": 16,
    "resnet101": 33,
    "resnet152": 50,
    "wide_resnet50_2": 16,
    "resnext50_32x4d": 16,
    "cifar_resnet20": 9,
    "cifar_resnet32": 15,
    "cifar_resnet44": 21,
    "cifar_resnet56": 27,
    "cifar_resnet110": 54,
    "cifar_resnet1202": 600,
}
METHODS = [("sample", "mask"), ("sample", "subset"), ("block", "mask")]


def small_input(arch: str, batch: int = 4) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(batch, 3, 32, 32)


@pytest.mark.parametrize("arch", model_names())
def test_rates_in_forward_order_for_every_registry_model(arch: str) -> None:
    model = apply_stochastic_depth(build_model(arch, 10), "auto", "sample", 0.3, "linear")
    blocks = stochastic_blocks(model)
    n = len(blocks)
    assert n == BLOCK_COUNTS[arch]
    assert [b.drop_rate for b in blocks] == pytest.approx([0.3 * (i + 1) / n for i in range(n)])
    assert blocks[-1].drop_rate == 0.3
    order = [name for name, m in model.named_modules() if isinstance(m, StochasticBlock)]
    stage_order = [(int(name.split(".")[0][5:]), int(name.split(".")[1])) for name in order]
    assert stage_order == sorted(stage_order)  # layer1 before layer2, then within a stage
    uniform = apply_stochastic_depth(build_model(arch, 10), "auto", "block", 0.3, "uniform")
    assert {b.drop_rate for b in stochastic_blocks(uniform)} == {0.3}


@pytest.mark.parametrize(
    ("arch", "name"),
    [
        ("resnet50", "Bottleneck"),
        ("resnet50", "ResNetBottleneck"),
        ("resnet18", "BasicBlock"),
        ("cifar_resnet20", "CifarBasicBlock"),
    ],
)
def test_target_layer_names(arch: str, name: str) -> None:
    model = apply_stochastic_depth(build_model(arch, 10), name, drop_rate=0.1)
    blocks = stochastic_blocks(model)
    assert len(blocks) == BLOCK_COUNTS[arch]
    assert all(isinstance(b.drop_rate, float) for b in blocks)
    expected = "Bottleneck" if name == "ResNetBottleneck" else name
    assert {b.block_class.__name__ for b in blocks} == {expected}
    assert f"Stochastic{expected}(" in repr(model)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "cifar_resnet20"])
@pytest.mark.parametrize(("method", "impl"), METHODS)
def test_rate_zero_is_exactly_the_plain_model(arch: str, method: str, impl: str) -> None:
    torch.manual_seed(0)
    plain = build_model(arch, 10)
    model = apply_stochastic_depth(copy.deepcopy(plain), "auto", method, 0.0, sample_impl=impl)
    x = small_input(arch)
    for train in (True, False):
        plain.train(train)
        model.train(train)
        with torch.no_grad():
            assert torch.equal(model(x), plain(x))


@pytest.mark.parametrize(("method", "impl"), METHODS)
@pytest.mark.parametrize("scale_by_keep", [False, True])
def test_rate_one_makes_every_block_relu_of_shortcut(
    method: str, impl: str, scale_by_keep: bool
) -> None:
    model = apply_stochastic_depth(
        build_model("resnet18", 10),
        "auto",
        method,
        1.0,
        "uniform",
        scale_by_keep=scale_by_keep,
        sample_impl=impl,
    ).train()
    seen = []

    def check(block: nn.Module, args: tuple, out: torch.Tensor) -> None:
        (x,) = args
        shortcut = x if block.downsample is None else block.downsample(x)
        seen.append(torch.equal(out, torch.relu(shortcut)))

    for block in stochastic_blocks(model):
        block.register_forward_hook(check)
    out = model(small_input("resnet18"))
    out.sum().backward()
    assert seen == [True] * 8
    assert torch.isfinite(out).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("method", ["sample", "block"])
def test_warmup_ramps_rates_then_holds_them(method: str) -> None:
    sd = StochasticDepth("auto", method, drop_rate=0.4, drop_distribution="linear", drop_warmup=0.2)
    model = sd.apply(build_model("cifar_resnet20", 10))
    full = [b.target_drop_rate for b in stochastic_blocks(model)]
    assert [b.drop_rate for b in stochastic_blocks(model)] == [0.0] * 9
    for f in (0.0, 0.05, 0.1, 0.199):
        sd.set_progress(f)
        assert [b.drop_rate for b in stochastic_blocks(model)] == pytest.approx(
            [r * f / 0.2 for r in full]
        )
    for f in (0.2, 0.5, 1.0):
        sd.set_progress(f)
        assert [b.drop_rate for b in stochastic_blocks(model)] == full  # exactly, not approx
    set_drop_progress(model, 0.1, 0.2)
    assert expected_depth(model) == pytest.approx(sum(1 - r / 2 for r in full))
    sd.set_progress(1.0)  # after rates were lowered by the functional API, back to full
    assert [b.drop_rate for b in stochastic_blocks(model)] == full


def test_set_progress_moves_the_rates_of_each_model_it_is_applied_to() -> None:
    sd = StochasticDepth("auto", "sample", drop_rate=0.4, drop_warmup=0.2)
    first = sd.apply(build_model("cifar_resnet20", 10))
    sd.set_progress(1.0)
    second = sd.apply(build_model("cifar_resnet20", 10))  # its rates start at 0 (warmup)
    sd.set_progress(1.0)
    assert [b.drop_rate for b in stochastic_blocks(second)] == [
        b.target_drop_rate for b in stochastic_blocks(first)
    ]
    assert stochastic_blocks(second)[-1].drop_rate == 0.4


def test_no_warmup_means_full_rates_from_the_start() -> None:
    sd = StochasticDepth(drop_rate=0.2, drop_distribution="uniform")
    model = sd.apply(build_model("resnet18", 10))
    assert {b.drop_rate for b in stochastic_blocks(model)} == {0.2}
    sd.set_progress(0.0)
    assert {b.drop_rate for b in stochastic_blocks(model)} == {0.2}
    set_drop_rates(model, 0.6, "linear")
    assert stochastic_blocks(model)[-1].drop_rate == 0.6


def test_find_unused_parameters_only_for_block() -> None:
    assert StochasticDepth(stochastic_method="block").find_unused_parameters is True
    assert StochasticDepth(stochastic_method="sample").find_unused_parameters is False
    assert (
        StochasticDepth(stochastic_method="sample", sample_impl="subset").find_unused_parameters
        is False
    )


def test_set_progress_before_apply_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match=r"call `StochasticDepth.apply\(model\)`"):
        StochasticDepth().set_progress(0.5)


@pytest.mark.parametrize("arch", ["resnet50", "cifar_resnet20"])
def test_state_dict_names_unchanged_and_load_both_ways(arch: str) -> None:
    torch.manual_seed(0)
    plain = build_model(arch, 10)
    model = apply_stochastic_depth(copy.deepcopy(plain), drop_rate=0.5)
    assert list(model.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert [n for n, _ in model.named_buffers()] == [n for n, _ in plain.named_buffers()]
    fresh = apply_stochastic_depth(build_model(arch, 10), drop_rate=0.5)
    fresh.load_state_dict(plain.state_dict(), strict=True)
    other = build_model(arch, 10)
    other.load_state_dict(model.state_dict(), strict=True)
    for a, b in zip(fresh.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("method", "impl"), METHODS)
def test_deepcopy_pickle_and_to_keep_behaviour(method: str, impl: str) -> None:
    model = apply_stochastic_depth(
        build_model("resnet18", 10), "auto", method, 0.3, sample_impl=impl
    ).eval()
    x = small_input("resnet18")
    with torch.no_grad():
        ref = model(x)
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert [b.drop_rate for b in stochastic_blocks(clone)] == [
                b.drop_rate for b in stochastic_blocks(model)
            ]
            assert torch.equal(clone(x), ref)
        moved = copy.deepcopy(model).to("cpu").to(torch.float64)
        torch.testing.assert_close(moved(x.double()).float(), ref, rtol=1e-4, atol=1e-4)
    copy.deepcopy(model).train()(x).sum().backward()  # a copy trains too


@pytest.mark.parametrize(("method", "impl"), METHODS)
def test_gradient_reaches_every_parameter_of_kept_blocks(method: str, impl: str) -> None:
    model = apply_stochastic_depth(
        build_model("resnet18", 10), "auto", method, 0.0, sample_impl=impl
    ).train()
    model(small_input("resnet18")).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def _ddp_worker(
    rank: int, world: int, init_file: str, method: str, impl: str, out_dir: str
) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same initial weights on both ranks
        sd = StochasticDepth("auto", method, drop_rate=0.5, sample_impl=impl)
        model = sd.apply(build_model("cifar_resnet20", 10))
        ddp = nn.parallel.DistributedDataParallel(
            model, find_unused_parameters=sd.find_unused_parameters
        )
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        torch.manual_seed(100 + rank)  # each rank draws its own masks and data
        for _ in range(3):
            x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
            opt.zero_grad()
            nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()
        torch.save(model.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("method", "impl"), METHODS)
def test_ddp_gloo_two_processes_trains_in_sync(
    tmp_path: Path, method: str, impl: str, run_two_ranks: Callable[..., None]
) -> None:
    run_two_ranks(_ddp_worker, 2, str(tmp_path / "init"), method, impl, str(tmp_path))
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for key in a:
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # BatchNorm statistics are per rank under DDP without SyncBatchNorm
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stochastic_method": "row"}, r"`stochastic_method` must be one of 'sample', 'block'"),
        ({"drop_distribution": "cosine"}, r"`drop_distribution` must be one of"),
        ({"sample_impl": "gather"}, r"`sample_impl` must be one of 'mask', 'subset'"),
        (
            {"target_layer_name": "Block"},
            r"`target_layer_name` must be one of 'auto', 'Bottleneck', 'BasicBlock', "
            r"'ResNetBottleneck', 'CifarBasicBlock', but got 'Block'",
        ),
        ({"drop_rate": 2}, r"`0 <= drop_rate <= 1` must hold, but got drop_rate=2"),
        ({"drop_warmup": 1}, r"`0 <= drop_warmup < 1` must hold, but got drop_warmup=1"),
    ],
)
def test_bad_arguments_fail_before_the_model_is_touched(kwargs: dict, message: str) -> None:
    model = build_model("resnet18", 10)
    before = repr(model)
    with pytest.raises(ValueError, match=message):
        apply_stochastic_depth(model, **kwargs)
    assert repr(model) == before and not stochastic_blocks(model)
    with pytest.raises(ValueError, match=message):
        StochasticDepth(**kwargs)


def test_no_target_block_says_what_the_model_has() -> None:
    with pytest.raises(
        ValueError,
        match=r"has no 'Bottleneck' blocks \(residual blocks found: "
        r"BasicBlock x8\); pass target_layer_name='auto'",
    ):
        apply_stochastic_depth(build_model("resnet18", 10), "Bottleneck")
    with pytest.raises(ValueError, match=r"residual blocks found: none"):
        apply_stochastic_depth(nn.Sequential(nn.Linear(3, 3)), "auto")


def test_surgery_twice_is_refused() -> None:
    model = apply_stochastic_depth(build_model("resnet18", 10))
    with pytest.raises(
        ValueError, match=r"already has stochastic depth on 8 blocks.*set_drop_rates"
    ):
        apply_stochastic_depth(model)
    with pytest.raises(ValueError, match=r"already has stochastic depth"):
        StochasticDepth().apply(model)


def test_surgery_on_wrapped_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"wrapped in DataParallel; apply stochastic depth to the "
        r"plain model first",
    ):
        apply_stochastic_depth(nn.DataParallel(build_model("resnet18", 10)))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(build_model("resnet18", 10))
        with pytest.raises(ValueError, match=r"wrapped in DistributedDataParallel.*then `DDP"):
            apply_stochastic_depth(ddp)
    finally:
        dist.destroy_process_group()


def test_torchvision_block_built_directly_is_found() -> None:
    """A model assembled from torchvision blocks, not from a builder, works with "auto"."""
    model = nn.Sequential(
        torchvision.models.resnet.BasicBlock(8, 8), torchvision.models.resnet.BasicBlock(8, 8)
    )
    apply_stochastic_depth(model, "auto", drop_rate=0.2)
    assert [b.drop_rate for b in stochastic_blocks(model)] == pytest.approx([0.1, 0.2])


def _graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


@pytest.mark.parametrize(("method", "impl"), METHODS)
def test_compile_with_drop_warmup_adds_no_graphs_once_warm(method: str, impl: str) -> None:
    """Rates that change every step (drop warmup) compile nothing new after a few steps, the
    total stays at a few graphs per block, and no frame falls back to eager (the recompile
    limit is made an error); ``mask`` compiles as one full graph."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    sd = StochasticDepth("auto", method, drop_rate=0.5, drop_warmup=0.9, sample_impl=impl)
    model = sd.apply(build_model("cifar_resnet20", 10)).train()
    fullgraph = impl == "mask" and method == "sample"
    x = torch.randn(16, 3, 16, 16)
    seen = []
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        compiled = torch.compile(model, backend="aot_eager", fullgraph=fullgraph)
        for step in range(16):
            sd.set_progress(0.3 + step / 50)  # still in warmup: every rate moves every step
            compiled(x).sum().backward()
            seen.append(_graphs())
    assert seen[5:] == [seen[5]] * 11, seen
    assert seen[-1] <= (1 if fullgraph else 3 * 9 + 2), seen
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "impl"), METHODS)
def test_compiled_model_trains_and_matches_eager(method: str, impl: str) -> None:
    """``torch.compile(model)`` as users call it (inductor): training steps with warmup run,
    and the compiled eval output equals eager within float tolerance."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    sd = StochasticDepth("auto", method, drop_rate=0.5, drop_warmup=0.5, sample_impl=impl)
    model = sd.apply(build_model("cifar_resnet8", 10, in_channels=1)).train()
    compiled = torch.compile(model, fullgraph=impl == "mask" and method == "sample")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 1, 16, 16), torch.randint(0, 10, (16,))
    for step in range(4):
        sd.set_progress(step / 10)
        opt.zero_grad()
        nn.functional.cross_entropy(compiled(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("method", "impl"), METHODS)
def test_channels_last_rows_and_outputs_for_resnet50(method: str, impl: str) -> None:
    """With a channels_last input every residual branch gets channels_last rows, every block
    returns channels_last, and the gradient each block hands back is channels_last."""
    torch.manual_seed(0)
    model = apply_stochastic_depth(
        build_model("resnet50", 10), "auto", method, 0.5, sample_impl=impl
    ).to(memory_format=torch.channels_last)
    cl = torch.channels_last
    seen: list[tuple[str, bool]] = []

    def note(kind: str, t: torch.Tensor) -> None:
        seen.append((kind, t.is_contiguous(memory_format=cl)))

    def on_input(block: nn.Module, args: tuple) -> None:
        args[0].register_hook(lambda g: note("grad", g))  # the gradient a block hands back

    for block in stochastic_blocks(model):
        block.conv1.register_forward_pre_hook(lambda m, args: note("branch", args[0]))
        block.register_forward_hook(lambda m, args, out: note("block", out))
        block.register_forward_pre_hook(on_input)
    x = torch.randn(6, 3, 64, 64).contiguous(memory_format=cl)
    model.train()
    for _ in range(3):
        model(x).sum().backward()
    assert seen and all(ok for _, ok in seen), [s for s in seen if not s[1]]
    assert sum(kind == "block" for kind, _ in seen) == 3 * 16
    assert sum(kind == "grad" for kind, _ in seen) == 3 * 16
