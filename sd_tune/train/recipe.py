"""The training recipe: SGD with Nesterov momentum over parameter groups (weight decay on
conv/linear weights only), and the learning rate's linear warmup then cosine to zero, stepped
per iteration. Imports torch, never Ray."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sd_tune.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two optimizer parameter groups: ``"decay"`` (weights with ``ndim > 1``: conv and linear)
    with ``weight_decay``, and ``"no_decay"`` (BatchNorm parameters and biases) with 0.

    >>> groups = param_groups(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)), 5e-4)
    >>> [(g["name"], len(g["params"]), g["weight_decay"]) for g in groups]
    [('decay', 1, 0.0005), ('no_decay', 3, 0.0)]
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    return [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum (Nesterov when ``train.nesterov``) over :func:`param_groups`.

    >>> build_optimizer(nn.Linear(2, 2), TrainConfig(lr=0.5)).param_groups[0]["lr"]
    0.5
    """
    return torch.optim.SGD(
        param_groups(model, train.weight_decay),
        lr=train.lr,
        momentum=train.momentum,
        nesterov=train.nesterov and train.momentum > 0,
    )


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """The learning-rate multiplier used by optimizer step ``step`` (0-based).

    Linear warmup ``(step + 1) / warmup_steps`` over the first ``warmup_steps`` steps, then a
    cosine from 1 down to 0 at ``step == total_steps``.

    >>> [lr_factor(s, 10, 2) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration ``LambdaLR`` following :func:`lr_factor`; call ``step()`` after every
    optimizer step.

    >>> opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    >>> build_scheduler(opt, 10, 2).get_last_lr()
    [0.5]
    """

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
