"""Stochastic depth ops: argument checks, per-block rate schedules, warmup and the residual drop.

Pure torch. Models, surgery, Ray and files live elsewhere; docs/design.md §2 is the contract.

How the drops run, eager and under ``torch.compile``:

- ``sample`` with ``sample_impl="mask"`` and every eval forward are plain tensor code: the
  rate is read from a non-persistent buffer, so changing it (drop warmup) never recompiles,
  and a model compiles with ``fullgraph=True``.
- ``block`` and ``sample``/``subset`` decide on the host (CPU RNG: no device sync) whether a
  block runs and on how many rows. Under ``torch.compile`` each draw is a graph break, and the
  rest of the block compiles as a region of its own (:func:`region`), so a whole-model
  ``torch.compile(model)`` ends with a few graphs per block shape instead of exhausting
  dynamo's recompile limit.
- The residual add, drop and ReLU run fused (:mod:`sd_tune.residual_kernels`).
"""

from __future__ import annotations

import hashlib
import math
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sd_tune.residual_kernels import RowGradStash, residual_relu, scatter_residual_relu, take_rows
from sd_tune.vocab import DISTRIBUTIONS, METHODS, SAMPLE_IMPLS


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


# The host draws use the CPU generator, so they never wait for a device; torch.compile leaves
# them out of its graphs.
@torch.compiler.disable
def _draw_block_kept(unit: Any) -> bool:
    """``block``: does the whole batch run the branch this step (probability ``1 - p``)?"""
    p = unit.drop_rate
    return not (p >= 1.0 or torch.rand(()).item() < p)


@torch.compiler.disable
def _draw_keep_count(unit: Any, batch: int) -> int:
    """``subset``: how many rows run the branch this step, ``batch * (1 - p)`` rounded
    stochastically, so that its expectation is exactly that product."""
    expected = batch * (1.0 - unit.drop_rate)
    k = math.floor(expected)
    if k < batch and torch.rand(()).item() < expected - k:
        k += 1
    return k


def mask_scale(
    batch: int,
    keep_prob: float | Tensor,
    scale_by_keep: bool,
    device: torch.device | str | None = None,
) -> Tensor:
    """One Bernoulli(``keep_prob``) factor per row: 1 (or ``1 / keep_prob`` with
    ``scale_by_keep``) for a kept row, 0 for a dropped one; float32, shape ``(batch,)``.

    >>> mask_scale(4, 1.0, False)
    tensor([1., 1., 1., 1.])
    """
    kept = (torch.rand(batch, device=device) < keep_prob).float()
    if not scale_by_keep:
        return kept
    if isinstance(keep_prob, Tensor):
        return kept * torch.where(keep_prob > 0, keep_prob.reciprocal(), 0.0)
    return kept * (1.0 / keep_prob if keep_prob > 0 else 0.0)


def _keep_scale(rate: float | Tensor, scale_by_keep: bool) -> float | Tensor:
    """The factor on a kept branch in training (call only when something is kept)."""
    return 1.0 / (1.0 - rate) if scale_by_keep else 1.0


def _current_rate(unit: Any) -> float | Tensor:
    """The rate as compiled code must read it (a tensor: no recompile when it changes)."""
    return unit.drop_rate_tensor if torch.compiler.is_compiling() else unit.drop_rate


# The parts of a host-drawn forward that run on tensors. Under torch.compile each one runs as
# a region of its own per block shape (see :func:`region`); the draws between them stay eager.
def _shortcut_part(unit: Any, x: Tensor) -> Tensor:
    return unit.shortcut_forward(x)


def _kept_part(unit: Any, x: Tensor, identity: Tensor) -> Tensor:
    scale = _keep_scale(_current_rate(unit), unit.scale_by_keep)
    return residual_relu(unit.branch_forward(x), identity, scale)


def _rows_part(unit: Any, x: Tensor, identity: Tensor, idx: Tensor) -> Tensor:
    stash = RowGradStash() if identity is x and not torch.compiler.is_compiling() else None
    rows = unit.branch_forward(take_rows(x, idx, stash))
    scale = _keep_scale(_current_rate(unit), unit.scale_by_keep)
    return scatter_residual_relu(identity, rows, idx, scale, stash)


_PARTS = (_shortcut_part, _kept_part, _rows_part)

_REGIONS: dict[tuple[Callable[..., Any], str], Callable[..., Any]] = {}


def region(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
    """``fn`` with a code object of its own for ``key``.

    torch.compile keeps compiled graphs per code object, and at most ``recompile_limit``
    (8) of them for code that does not pin one module instance. Blocks of a dozen shapes
    running one function would share, and exhaust, that budget and fall back to eager;
    one copy per block shape gives each shape its own.

    >>> def f(x): return x + 1
    >>> g = region(f, "a")
    >>> g(1), g.__code__ is f.__code__, region(f, "a") is g
    (2, False, True)
    """
    copy = _REGIONS.get((fn, key))
    if copy is None:
        code = fn.__code__.replace(co_name=f"{fn.__name__}_{key}")
        copy = types.FunctionType(
            code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__
        )
        _REGIONS[(fn, key)] = copy
    return copy


def region_key(*parts: object) -> str:
    """A short name for a block shape, from the reprs of its parts.

    >>> len(region_key("Bottleneck(...)"))
    10
    """
    text = "|".join(repr(p) for p in parts)
    return hashlib.blake2s(text.encode(), digest_size=5).hexdigest()


@torch.compiler.disable
def _region_parts(unit: Any) -> tuple[Callable[..., Any], ...]:
    return tuple(region(fn, unit.region_key) for fn in _PARTS)


def _host_forward(unit: Any, x: Tensor, regional: bool = False) -> Tensor:
    """Training forward of ``block`` and ``sample``/``subset``: draw on the host, then run the
    branch on the whole batch, on the kept rows, or not at all. ``unit`` has
    ``shortcut_forward``, ``branch_forward``, ``drop_rate`` (float), ``drop_rate_tensor``,
    ``stochastic_method`` and ``scale_by_keep``. ``regional``: run the parts as regions."""
    shortcut, kept, kept_rows = _region_parts(unit) if regional else _PARTS
    identity = shortcut(unit, x)
    if unit.stochastic_method == "block":
        if not _draw_block_kept(unit):
            return torch.relu(identity)
        return kept(unit, x, identity)
    batch = x.shape[0]
    k = _draw_keep_count(unit, batch)
    if k == 0:
        return torch.relu(identity)
    if k == batch:
        return kept(unit, x, identity)
    idx = torch.randperm(batch, device=x.device)[:k].sort().values
    if regional:  # k changes from step to step: compile the kept rows' region for any k
        torch._dynamo.maybe_mark_dynamic(idx, 0)
    return kept_rows(unit, x, identity, idx)


# Dynamo skips this frame only (the draws and the choice of part stay eager); the parts it
# calls are compiled as frames of their own.
_enter_region = torch.compiler.disable(_host_forward, recursive=False)


class _Unit:
    """What :func:`_host_forward` reads, for the functional form."""

    def __init__(
        self,
        branch: Callable[[Tensor], Tensor],
        identity: Tensor,
        p: float,
        stochastic_method: str,
        scale_by_keep: bool,
    ) -> None:
        self.branch_forward, self._identity = branch, identity
        self.drop_rate = float(p)
        self.stochastic_method, self.scale_by_keep = stochastic_method, scale_by_keep

    @property
    def drop_rate_tensor(self) -> Tensor:
        return torch.tensor(self.drop_rate, device=self._identity.device)

    def shortcut_forward(self, x: Tensor) -> Tensor:
        return self._identity


def stochastic_residual(
    x: Tensor,
    branch: Callable[[Tensor], Tensor],
    identity: Tensor,
    drop_rate: float | Tensor,
    *,
    training: bool,
    stochastic_method: str = "sample",
    scale_by_keep: bool = False,
    sample_impl: str = "mask",
) -> Tensor:
    """``relu(identity + drop(branch(x)))``: the output of a ResNet block.

    Args:
        x: the block's input, batch first.
        branch: the residual branch; it must return a fresh tensor (a BatchNorm output is),
            which the result may be computed in.
        identity: the shortcut's output for ``x``.
        drop_rate: this block's drop rate ``p``; a 0-dim tensor works for ``sample``/``mask``
            and eval (what compiled code passes).
        training: drop (and draw) only in training; eval is deterministic and scales the
            branch by ``1 - p`` unless ``scale_by_keep``.
        stochastic_method: ``"sample"`` (per row) or ``"block"`` (the whole batch).
        scale_by_keep: divide kept branches by ``1 - p`` in training instead.
        sample_impl: ``"mask"`` (the branch on every row, times a 0/1 mask) or ``"subset"``
            (the branch on the kept rows only).

    Training draws from torch's RNGs (the mask on ``x``'s device; ``block`` and ``subset``
    decisions on the CPU, so no draw waits for the device). The result never aliases ``x``.
    Under torch.compile prefer the modules (:class:`StochasticResidual`, surgery), which
    compile ``block`` and ``subset`` region by region.

    >>> import torch
    >>> x = torch.ones(4, 2)
    >>> stochastic_residual(x, lambda t: 2 * t, x, 0.5, training=False)[0]
    tensor([2., 2.])
    """
    if not training:
        return residual_relu(branch(x), identity, 1.0 if scale_by_keep else 1.0 - drop_rate)
    if stochastic_method == "sample" and sample_impl == "mask":
        return residual_relu(
            branch(x), identity, mask_scale(x.shape[0], 1.0 - drop_rate, scale_by_keep, x.device)
        )
    unit = _Unit(branch, identity, float(drop_rate), stochastic_method, scale_by_keep)
    return _host_forward(unit, x)


class StochasticResidualBase(nn.Module):
    """What every stochastic residual unit shares: its rate (a float ``drop_rate`` and the
    0-dim tensor ``drop_rate_tensor`` that compiled code reads), its settings, and
    the forward ``relu(shortcut(x) + drop(branch(x)))``. Subclasses give
    ``branch_forward(x)`` (a fresh tensor) and ``shortcut_forward(x)``."""

    stochastic_method: str
    scale_by_keep: bool
    sample_impl: str
    region_key: str
    _drop_rate: float

    def branch_forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def shortcut_forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _setup_drop(
        self,
        drop_rate: float,
        stochastic_method: str,
        scale_by_keep: bool,
        sample_impl: str,
        key: str,
    ) -> None:
        self.stochastic_method = stochastic_method
        self.scale_by_keep = scale_by_keep
        self.sample_impl = sample_impl
        self.region_key = key
        device = next((t.device for t in self.parameters()), None)
        # A plain tensor attribute, not a buffer: state_dict and named_buffers stay the plain
        # model's; _apply below moves it with the module.
        self.drop_rate_tensor = torch.tensor(float(drop_rate), dtype=torch.float32, device=device)
        self._drop_rate = float(drop_rate)

    @property
    def drop_rate(self) -> float:
        """The current drop rate of this unit (setting it updates ``drop_rate_tensor``)."""
        return self._drop_rate

    @drop_rate.setter
    def drop_rate(self, value: float) -> None:
        value = float(value)
        if value != self._drop_rate:
            self._drop_rate = value
            self.drop_rate_tensor.fill_(value)

    @property
    def draws_on_host(self) -> bool:
        """Whether training draws on the host: ``block`` and ``sample``/``subset``."""
        return self.stochastic_method == "block" or self.sample_impl == "subset"

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> nn.Module:
        super()._apply(fn, recurse)
        rate = fn(self.drop_rate_tensor)
        if rate.dtype not in (torch.float32, torch.float64):  # .half() would round the rate
            rate = torch.tensor(self._drop_rate, dtype=torch.float32, device=rate.device)
        self.drop_rate_tensor = rate
        return self

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.draws_on_host:
            if torch.compiler.is_compiling():
                return _enter_region(self, x, True)
            return _host_forward(self, x)
        identity = self.shortcut_forward(x)
        out = self.branch_forward(x)
        rate = _current_rate(self)
        if not self.training:
            return residual_relu(out, identity, 1.0 if self.scale_by_keep else 1.0 - rate)
        return residual_relu(
            out, identity, mask_scale(x.shape[0], 1.0 - rate, self.scale_by_keep, x.device)
        )


class StochasticResidual(StochasticResidualBase):
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
        check_args(
            stochastic_method=stochastic_method,
            drop_rate=drop_rate,
            scale_by_keep=scale_by_keep,
            sample_impl=sample_impl,
        )
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut
        self._setup_drop(
            drop_rate, stochastic_method, scale_by_keep, sample_impl, region_key(branch, shortcut)
        )

    def branch_forward(self, x: Tensor) -> Tensor:
        return self.branch(x)

    def shortcut_forward(self, x: Tensor) -> Tensor:
        return x if self.shortcut is None else self.shortcut(x)

    def extra_repr(self) -> str:
        return (
            f"drop_rate={self.drop_rate:g}, stochastic_method={self.stochastic_method!r}, "
            f"scale_by_keep={self.scale_by_keep}, sample_impl={self.sample_impl!r}"
        )
