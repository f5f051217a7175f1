"""Stochastic depth ops: argument checks, per-block rate schedules, warmup and the residual drop.

Pure torch. Models, surgery, Ray and files live elsewhere (see DESIGN.md §1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

METHODS: tuple[str, ...] = ("sample", "block")
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "linear")
SAMPLE_IMPLS: tuple[str, ...] = ("mask", "subset")


def _choices(values: Sequence[str]) -> str:
    return ", ".join(repr(v) for v in values)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_args(
    *,
    stochastic_method: str = "sample",
    drop_rate: float = 0.0,
    drop_distribution: str = "linear",
    drop_warmup: float = 0.0,
    scale_by_keep: bool = False,
    sample_impl: str = "mask",
) -> None:
    """Raise ``ValueError`` naming the first bad argument, the rule and the value received.

    The one validation shared by the functional API, the module and the algorithm object.

    >>> check_args(stochastic_method="sample", drop_rate=0.1, drop_distribution="linear")
    """
    if stochastic_method not in METHODS:
        raise ValueError(
            f"`stochastic_method` must be one of {_choices(METHODS)}, but got {stochastic_method!r}"
        )
    if drop_distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"`drop_distribution` must be one of {_choices(DISTRIBUTIONS)}, "
            f"but got {drop_distribution!r}"
        )
    if sample_impl not in SAMPLE_IMPLS:
        raise ValueError(
            f"`sample_impl` must be one of {_choices(SAMPLE_IMPLS)}, but got {sample_impl!r}"
        )
    if not _is_number(drop_rate) or not 0.0 <= drop_rate <= 1.0:
        raise ValueError(f"`0 <= drop_rate <= 1` must hold, but got drop_rate={drop_rate!r}")
    if not _is_number(drop_warmup) or not 0.0 <= drop_warmup < 1.0:
        raise ValueError(f"`0 <= drop_warmup < 1` must hold, but got drop_warmup={drop_warmup!r}")
    if not isinstance(scale_by_keep, bool):
        raise ValueError(f"`scale_by_keep` must be True or False, but got {scale_by_keep!r}")


def drop_rates(num_blocks: int, drop_rate: float, drop_distribution: str = "linear") -> list[float]:
    """Per-block drop rates ``p_0 .. p_{L-1}`` in forward order.

    ``uniform``: every block gets ``drop_rate``; ``linear``: block ``i`` gets
    ``drop_rate * (i + 1) / L``, so the last block gets exactly ``drop_rate``.

    >>> drop_rates(4, 0.2, "linear")
    [0.05, 0.1, 0.15000000000000002, 0.2]
    """
    check_args(drop_rate=drop_rate, drop_distribution=drop_distribution)
    if not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"`num_blocks >= 1` must hold, but got num_blocks={num_blocks!r}")
    if drop_distribution == "uniform":
        return [float(drop_rate)] * num_blocks
    rates = [drop_rate * (i + 1) / num_blocks for i in range(num_blocks)]
    rates[-1] = float(drop_rate)
    return rates


def warmup_rate(full_rate: float, progress: float, drop_warmup: float) -> float:
    """The rate of a block with full rate ``full_rate`` at ``progress`` (fraction of training done).

    During warmup (``progress < drop_warmup``) the rate ramps linearly from 0; at and
    after the end of warmup it is exactly ``full_rate``.

    >>> round(warmup_rate(0.4, 0.05, 0.1), 6)
    0.2
    """
    if not _is_number(progress) or not 0.0 <= progress <= 1.0:
        raise ValueError(f"`0 <= progress <= 1` must hold, but got progress={progress!r}")
    check_args(drop_warmup=drop_warmup)
    if progress >= drop_warmup:
        return float(full_rate)
    return full_rate * progress / drop_warmup


def _sample_keep_count(batch: int, keep_prob: float) -> int:
    """Stochastic rounding of ``batch * keep_prob``: its expectation is exactly that product."""
    expected = batch * keep_prob
    k = math.floor(expected)
    if k < batch and torch.rand(()).item() < expected - k:
        k += 1
    return k


def stochastic_residual(
    x: Tensor,
    branch: Callable[[Tensor], Tensor],
    identity: Tensor,
    p: float,
    *,
    training: bool,
    stochastic_method: str = "sample",
    scale_by_keep: bool = False,
    sample_impl: str = "mask",
) -> Tensor:
    """``relu(identity + drop(branch(x)))``: the output of a ResNet block with drop rate ``p``.

    ``branch`` must return a tensor it owns (a BatchNorm output is fine): the sum is
    accumulated into it in place. The result never aliases ``x``. Training draws from
    torch's global RNG; eval is deterministic and scales the branch by ``1 - p`` unless
    ``scale_by_keep``.

    >>> import torch
    >>> x = torch.ones(4, 2)
    >>> stochastic_residual(x, lambda t: 2 * t, x, 0.5, training=False)[0]
    tensor([2., 2.])
    """
    if not training or p == 0.0:
        out = branch(x)
        if not training and not scale_by_keep and p != 0.0:
            out.mul_(1.0 - p)
        return out.add_(identity).relu_()
    if stochastic_method == "block":
        if p >= 1.0 or torch.rand(()).item() < p:
            return torch.relu(identity)
        out = branch(x)
        if scale_by_keep:
            out.mul_(1.0 / (1.0 - p))
        return out.add_(identity).relu_()
    if sample_impl == "mask":
        # The branch always runs (a static graph for DDP); p == 1 multiplies it by 0.
        out = branch(x)
        keep = 1.0 - p
        mask = torch.empty((out.shape[0],) + (1,) * (out.dim() - 1), dtype=out.dtype,
                           device=out.device).bernoulli_(keep)
        if scale_by_keep and keep > 0.0:
            mask.div_(keep)
        return out.mul_(mask).add_(identity).relu_()
    # subset: run the branch on the k kept rows only and add it back at those rows.
    batch = x.shape[0]
    k = _sample_keep_count(batch, 1.0 - p)
    scale = 1.0 / (1.0 - p) if scale_by_keep and k > 0 else 1.0
    if k == batch:
        out = branch(x)
        if scale != 1.0:
            out.mul_(scale)
        return out.add_(identity).relu_()
    if k == 0:
        return torch.relu(identity)
    idx = torch.randperm(batch, device=x.device)[:k].sort().values
    if not torch.is_grad_enabled() or not (x.requires_grad or identity.requires_grad):
        return identity.index_add(0, idx, branch(x.index_select(0, idx)), alpha=scale).relu_()
    stash = _GradStash() if identity is x else None
    rows = _GatherRows.apply(x, idx, stash)
    return _AddRowsReLU.apply(identity, branch(rows), idx, scale, stash)


class _GradStash:
    """Hands the gradient of a subset block's output from ``_AddRows`` to ``_GatherRows``."""

    __slots__ = ("grad",)

    def __init__(self) -> None:
        self.grad: Tensor | None = None


class _GatherRows(torch.autograd.Function):
    """``x[idx]``; with a stash, its backward adds the row gradients into the identity path's
    gradient in place, instead of scattering into zeros and summing two full tensors."""

    @staticmethod
    def forward(ctx, x: Tensor, idx: Tensor, stash: _GradStash | None) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.stash, ctx.shape = stash, x.shape
        return x.index_select(0, idx)

    @staticmethod
    def backward(ctx, grad_rows: Tensor) -> tuple[Tensor, None, None]:
        (idx,) = ctx.saved_tensors
        grad = ctx.stash.grad if ctx.stash is not None else None
        if grad is None:
            grad = grad_rows.new_zeros(ctx.shape)
        else:
            ctx.stash.grad = None
        return grad.index_add_(0, idx, grad_rows), None, None


class _AddRowsReLU(torch.autograd.Function):
    """``relu(identity + scale * rows at idx)``. With a stash (identity is the block input
    itself) the identity gradient is handed to ``_GatherRows`` instead of returned."""

    @staticmethod
    def forward(ctx, identity: Tensor, rows: Tensor, idx: Tensor, scale: float,
                stash: _GradStash | None) -> Tensor:
        out = identity.index_add(0, idx, rows, alpha=scale).relu_()
        ctx.save_for_backward(idx, out)
        ctx.scale, ctx.stash = scale, stash
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor, None, None, None]:
        idx, out = ctx.saved_tensors
        grad = torch.ops.aten.threshold_backward(grad_out, out, 0)  # relu's backward, a new tensor
        grad_rows = grad.index_select(0, idx)
        if ctx.scale != 1.0:
            grad_rows.mul_(ctx.scale)
        if ctx.stash is None:
            return grad, grad_rows, None, None, None
        ctx.stash.grad = grad
        return None, grad_rows, None, None, None


class StochasticResidual(nn.Module):
    """A residual unit ``relu(shortcut(x) + drop(branch(x)))`` with stochastic depth.

    The module form of :func:`stochastic_residual` for building new networks; ResNets
    get the same behaviour from surgery (``sd_tune.apply_stochastic_depth``).

    >>> import torch
    >>> from torch import nn
    >>> unit = StochasticResidual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)),
    ...                           drop_rate=0.2)
    >>> unit(torch.randn(8, 4, 5, 5)).shape
    torch.Size([8, 4, 5, 5])
    """

    def __init__(
        self,
        branch: nn.Module,
        shortcut: nn.Module | None = None,
        *,
        drop_rate: float = 0.0,
        stochastic_method: str = "sample",
        scale_by_keep: bool = False,
        sample_impl: str = "mask",
    ) -> None:
        check_args(stochastic_method=stochastic_method, drop_rate=drop_rate,
                   scale_by_keep=scale_by_keep, sample_impl=sample_impl)
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut
        self.drop_rate = float(drop_rate)
        self.stochastic_method = stochastic_method
        self.scale_by_keep = scale_by_keep
        self.sample_impl = sample_impl

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return stochastic_residual(
            x, self.branch, identity, self.drop_rate, training=self.training,
            stochastic_method=self.stochastic_method, scale_by_keep=self.scale_by_keep,
            sample_impl=self.sample_impl,
        )

    def extra_repr(self) -> str:
        return (f"drop_rate={self.drop_rate:g}, stochastic_method={self.stochastic_method!r}, "
                f"scale_by_keep={self.scale_by_keep}, sample_impl={self.sample_impl!r}")
