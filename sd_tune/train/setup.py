"""A trial set up: data, model with stochastic depth (surgery), DDP, optimiser and schedule, the
compiled forward; what :class:`Trial` holds and :class:`TrialState` moves on. Imports torch,
never Ray."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from sd_tune.config import TrialConfig
from sd_tune.data import Loader, Splits, load_dataset, make_loaders
from sd_tune.models import build_model
from sd_tune.surgery import StochasticDepth
from sd_tune.train.recipe import build_optimizer, build_scheduler
from sd_tune.train.runtime import (
    _seed_everything,
    compiles,
)

Report = Callable[[dict[str, float], "str | None"], None]


def stochastic_depth_from_config(cfg: TrialConfig) -> StochasticDepth:
    """The :class:`~sd_tune.StochasticDepth` object described by ``cfg.stochastic_depth``.

    >>> stochastic_depth_from_config(TrialConfig()).stochastic_method
    'sample'
    """
    s = cfg.stochastic_depth
    return StochasticDepth(
        s.target_layer_name,
        s.stochastic_method,
        s.drop_rate,
        s.drop_distribution,
        s.drop_warmup,
        s.scale_by_keep,
        s.sample_impl,
    )


def ddp_kwargs(sd: StochasticDepth) -> dict[str, Any]:
    """Keyword arguments for ``DistributedDataParallel`` (or Ray's ``prepare_model``'s
    ``parallel_strategy_kwargs``) that this stochastic depth needs.

    >>> ddp_kwargs(StochasticDepth(stochastic_method="block"))
    {'find_unused_parameters': True}
    """
    return {"find_unused_parameters": sd.find_unused_parameters}


@dataclasses.dataclass
class Trial:
    """What :func:`setup_trial` builds: the data, the model and how it trains."""

    cfg: TrialConfig
    device: torch.device
    rank: int
    world_size: int
    train_loader: Loader
    val_loader: Loader
    test_loader: Loader
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int  # of the learning rate
    model: nn.Module  # the plain model: what checkpoints hold, what evaluation runs
    sd: StochasticDepth
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_forward: Callable[[Tensor], Tensor]  # the wrapped (DDP) and maybe compiled model
    eval_model: nn.Module
    bf16: bool


@dataclasses.dataclass
class TrialState:
    """Where training stands: what a checkpoint restores and every epoch moves on."""

    start_epoch: int = 1
    global_step: int = 0
    train_time_s: float = 0.0
    compile_time_s: float = 0.0
    wall_before_s: float = 0.0  # wall-clock of earlier runs of this trial (before a resume)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)


def setup_trial(
    cfg: TrialConfig,
    *,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    splits: Splits | None = None,
    prepare_model: Callable[[nn.Module], nn.Module] | None = None,
) -> Trial:
    """Load the data, build the model with its stochastic depth (same initial weights on
    every rank), the optimizer and the schedule; wrap (DDP) and compile as ``cfg`` says."""
    t, d = cfg.train, cfg.dataset
    on_gpu = device.type == "cuda"
    channels_last = on_gpu and t.channels_last
    if splits is None:
        splits = load_dataset(d)
    if d.shuffle_labels:
        splits = _shuffle_train_labels(splits, d.split_seed)
    if len(splits.val) == 0:  # type: ignore[arg-type]
        raise ValueError(
            f"The validation split of {splits.info.name} is empty "
            f"(dataset.val_fraction={d.val_fraction}), but every epoch reports "
            "val_acc; set dataset.val_fraction > 0"
        )
    info = splits.info
    train_loader, val_loader, test_loader = make_loaders(
        splits,
        batch_size=t.batch_size,
        device=device,
        rank=rank,
        world_size=world_size,
        seed=t.seed,
        num_workers=d.num_workers,
        channels_last=channels_last,
        eval_batch_size=t.eval_batch_size,
    )
    steps_per_epoch = len(train_loader)
    if t.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, t.max_steps_per_epoch)
    total_steps = t.epochs * steps_per_epoch
    warmup_steps = min(total_steps, round(t.warmup_epochs * steps_per_epoch))

    _seed_everything(t.seed)
    model = build_model(cfg.model.arch, info.num_classes, info.in_channels)
    sd = stochastic_depth_from_config(cfg)
    sd.apply(model)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, total_steps, warmup_steps)

    if prepare_model is not None:
        wrapped = prepare_model(model)
    elif world_size > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if on_gpu else None, **ddp_kwargs(sd)
        )
    else:
        wrapped = model
    train_forward: Callable[[Tensor], Tensor] = wrapped
    eval_model: nn.Module = model
    if compiles(t.compile, device):
        train_forward = torch.compile(wrapped)
        # One compiled module serves both when nothing wraps the model; under DDP evaluation
        # runs the plain model (eval shards are uneven across ranks), compiled on its own.
        eval_model = (
            train_forward
            if wrapped is model  # type: ignore[assignment]
            else torch.compile(model)
        )
    return Trial(
        cfg=cfg,
        device=device,
        rank=rank,
        world_size=world_size,
        train_loader=train_loader,
        val_loader=val_loader,
        test_loader=test_loader,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        model=model,
        sd=sd,
        optimizer=optimizer,
        scheduler=scheduler,
        train_forward=train_forward,
        eval_model=eval_model,
        bf16=on_gpu and t.bf16,
    )


def _shuffle_train_labels(splits: Splits, seed: int) -> Splits:
    """A control for tests: the training labels permuted, so nothing can be learnt."""
    from sd_tune.data import InMemorySplit

    if not isinstance(splits.train, InMemorySplit):
        raise ValueError(
            "dataset.shuffle_labels works only for in-memory datasets "
            "(fashion_mnist, cifar10, cifar100, synthetic)"
        )
    g = torch.Generator().manual_seed(seed + 12345)
    perm = torch.randperm(len(splits.train.y), generator=g)
    train = InMemorySplit(splits.train.x, splits.train.y[perm])
    return dataclasses.replace(splits, train=train)
