"""Model surgery: find the residual blocks of a ResNet and give them stochastic depth.

Pure torch. A replaced block keeps its submodules under the same names, so parameter,
buffer and ``state_dict`` names do not change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from torch import Tensor, nn

from sd_tune.stochastic_depth import (
    StochasticResidualBase,
    check_args,
    drop_rates,
    region_key,
    warmup_rate,
)
from sd_tune.vocab import TARGET_LAYER_NAMES

_ALIASES = {"ResNetBottleneck": "Bottleneck"}


def _bottleneck_branch(m: nn.Module, x: Tensor) -> Tensor:
    out = m.relu(m.bn1(m.conv1(x)))
    out = m.relu(m.bn2(m.conv2(out)))
    return m.bn3(m.conv3(out))


def _basic_branch(m: nn.Module, x: Tensor) -> Tensor:
    return m.bn2(m.conv2(m.relu(m.bn1(m.conv1(x)))))


def _downsample_shortcut(m: nn.Module, x: Tensor) -> Tensor:
    return x if m.downsample is None else m.downsample(x)


def _protocol_branch(m: nn.Module, x: Tensor) -> Tensor:
    return m.block_class.residual_branch(m, x)


def _protocol_shortcut(m: nn.Module, x: Tensor) -> Tensor:
    return m.block_class.shortcut(m, x)


# kind -> (branch, shortcut); a kind is stored on each block so it pickles by name.
_Part = Callable[[nn.Module, Tensor], Tensor]
_KINDS: dict[str, tuple[_Part, _Part]] = {
    "torchvision_bottleneck": (_bottleneck_branch, _downsample_shortcut),
    "torchvision_basic": (_basic_branch, _downsample_shortcut),
    "protocol": (_protocol_branch, _protocol_shortcut),
}


def _block_kind(module: nn.Module) -> str | None:
    """The kind of residual block ``module`` is, or None if surgery does not know it."""
    cls = type(module)
    if cls.__module__.startswith("torchvision.models"):
        if cls.__name__ == "Bottleneck":
            return "torchvision_bottleneck"
        if cls.__name__ == "BasicBlock":
            return "torchvision_basic"
    if callable(getattr(cls, "residual_branch", None)) and callable(getattr(cls, "shortcut", None)):
        return "protocol"
    return None


class StochasticBlock(StochasticResidualBase):
    """A residual block with stochastic depth, made by surgery from a plain one.

    It takes over the plain block's submodules and attributes (same names), and computes
    ``relu(shortcut(x) + drop(branch(x)))``. ``drop_rate`` is the current per-block rate,
    ``target_drop_rate`` the rate reached after warmup; ``block_class`` is the original class.
    """

    target_drop_rate: float
    block_class: type
    block_kind: str

    def branch_forward(self, x: Tensor) -> Tensor:
        return _KINDS[self.block_kind][0](self, x)

    def shortcut_forward(self, x: Tensor) -> Tensor:
        return _KINDS[self.block_kind][1](self, x)

    def extra_repr(self) -> str:
        return (
            f"{self.block_class.__name__}, drop_rate={self.drop_rate:.4g}, "
            f"stochastic_method={self.stochastic_method!r}, "
            f"scale_by_keep={self.scale_by_keep}, sample_impl={self.sample_impl!r}"
        )

    def _get_name(self) -> str:
        return f"Stochastic{self.block_class.__name__}"


def stochastic_blocks(model: nn.Module) -> list[StochasticBlock]:
    """The stochastic blocks of ``model`` in forward (registration) order.

    >>> import torchvision
    >>> len(stochastic_blocks(torchvision.models.resnet18()))
    0
    """
    return [m for m in model.modules() if isinstance(m, StochasticBlock)]


def _check_target(target_layer_name: str) -> str:
    if target_layer_name not in TARGET_LAYER_NAMES:
        names = ", ".join(repr(n) for n in TARGET_LAYER_NAMES)
        raise ValueError(
            f"`target_layer_name` must be one of {names}, but got {target_layer_name!r}"
        )
    return _ALIASES.get(target_layer_name, target_layer_name)


def _is_wrapped(model: nn.Module) -> bool:
    return isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))


def _targets(model: nn.Module, target: str) -> list[tuple[str, nn.Module]]:
    found = []
    for name, module in model.named_modules():
        if isinstance(module, StochasticBlock) or _block_kind(module) is None:
            continue
        if target == "auto" or type(module).__name__ == target:
            found.append((name, module))
    return found


def _replace(model: nn.Module, name: str, block: StochasticBlock) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, block)


def apply_stochastic_depth(
    model: nn.Module,
    target_layer_name: str = "auto",
    stochastic_method: str = "sample",
    drop_rate: float = 0.2,
    drop_distribution: str = "linear",
    *,
    drop_warmup: float = 0.0,
    scale_by_keep: bool = False,
    sample_impl: str = "mask",
) -> nn.Module:
    """Replace the residual blocks of ``model`` with stochastic ones, in place; return ``model``.

    Args:
        model: a plain model, before DDP wraps it (torchvision ResNets, sd-tune's CIFAR
            ResNets, or any block with ``residual_branch(x)`` and ``shortcut(x)`` methods).
        target_layer_name: the blocks to replace: ``"Bottleneck"``, ``"BasicBlock"``,
            ``"ResNetBottleneck"`` (the reference library's name for ``"Bottleneck"``),
            ``"CifarBasicBlock"``, or ``"auto"`` (every residual block surgery knows).
        stochastic_method: ``"sample"`` (each sample of a batch drops its branch on its own) or
            ``"block"`` (one draw for the whole batch).
        drop_rate: the rate ``r`` the distribution spreads over the blocks.
        drop_distribution: ``"uniform"`` (every block ``r``) or ``"linear"`` (block ``i`` of
            ``L`` in forward order gets ``r * (i + 1) / L``).
        drop_warmup: a fraction of training over which the rates ramp up from 0; drive it with
            :func:`set_drop_progress` (or ``StochasticDepth.set_progress``).
        scale_by_keep: divide kept branches by ``1 - p`` in training (timm's rule) instead of
            scaling the branch by ``1 - p`` at eval (the paper's).
        sample_impl: for ``"sample"``: ``"mask"`` or ``"subset"`` (the branch on the kept rows
            only; BatchNorm then sees only them).

    Parameter and buffer names do not change, so a ``state_dict`` loads either way. Invalid
    arguments raise ``ValueError`` before anything is changed.

    >>> import torchvision
    >>> model = apply_stochastic_depth(torchvision.models.resnet50(), "Bottleneck", "sample", 0.1)
    >>> [round(b.drop_rate, 4) for b in stochastic_blocks(model)][:2]
    [0.0063, 0.0125]
    """
    check_args(
        stochastic_method=stochastic_method,
        drop_rate=drop_rate,
        drop_distribution=drop_distribution,
        drop_warmup=drop_warmup,
        scale_by_keep=scale_by_keep,
        sample_impl=sample_impl,
    )
    target = _check_target(target_layer_name)
    if not isinstance(model, nn.Module):
        raise ValueError(f"`model` must be a torch.nn.Module, but got {type(model).__name__}")
    if _is_wrapped(model):
        raise ValueError(
            f"`model` is wrapped in {type(model).__name__}; apply stochastic depth to the plain "
            "model first, then wrap it: `apply_stochastic_depth(model, ...)`, then `DDP(model)`"
        )
    done = stochastic_blocks(model)
    if done:
        raise ValueError(
            f"`model` already has stochastic depth on {len(done)} blocks; apply it once to a fresh "
            "model, or change the rates of this one with `sd_tune.set_drop_rates(model, ...)`"
        )
    found = _targets(model, target)
    if not found:
        kinds = Counter(type(m).__name__ for m in model.modules() if _block_kind(m))
        seen = ", ".join(f"{n} x{c}" for n, c in kinds.items()) or "none"
        raise ValueError(
            f"`model` ({type(model).__name__}) has no {target_layer_name!r} blocks (residual "
            f"blocks found: {seen}); pass target_layer_name='auto' or the name of a block it has"
        )
    rates = drop_rates(len(found), drop_rate, drop_distribution)
    for (name, plain), rate in zip(found, rates, strict=True):
        block = StochasticBlock.__new__(StochasticBlock)
        block.__dict__.update(plain.__dict__)
        block.__dict__["_buffers"] = dict(plain._buffers)  # its own dict: it gains a buffer
        block.__dict__["_non_persistent_buffers_set"] = set(plain._non_persistent_buffers_set)
        block.block_class = type(plain)
        block.block_kind = _block_kind(plain)
        block.target_drop_rate = rate
        block._setup_drop(
            rate if drop_warmup == 0 else 0.0,
            stochastic_method,
            scale_by_keep,
            sample_impl,
            region_key(plain),
        )
        _replace(model, name, block)
    return model


def set_drop_progress(model: nn.Module, progress: float, drop_warmup: float) -> None:
    """Set every block's rate for ``progress`` (fraction of training done, in [0, 1]).

    >>> import torchvision
    >>> model = apply_stochastic_depth(torchvision.models.resnet18(), drop_rate=0.4,
    ...                                drop_distribution="uniform", drop_warmup=0.5)
    >>> set_drop_progress(model, 0.25, 0.5); stochastic_blocks(model)[0].drop_rate
    0.2
    """
    _set_progress(stochastic_blocks(model), progress, drop_warmup)


def _set_progress(blocks: list[StochasticBlock], progress: float, drop_warmup: float) -> None:
    for block in blocks:
        block.drop_rate = warmup_rate(block.target_drop_rate, progress, drop_warmup)


def set_drop_rates(model: nn.Module, drop_rate: float, drop_distribution: str = "linear") -> None:
    """Give the stochastic blocks of ``model`` new full rates (and current rates).

    >>> import torchvision
    >>> model = apply_stochastic_depth(torchvision.models.resnet18(), drop_rate=0.1)
    >>> set_drop_rates(model, 0.5, "uniform"); stochastic_blocks(model)[0].drop_rate
    0.5
    """
    blocks = stochastic_blocks(model)
    if not blocks:
        raise ValueError("`model` has no stochastic blocks; call `apply_stochastic_depth` first")
    for block, rate in zip(
        blocks, drop_rates(len(blocks), drop_rate, drop_distribution), strict=True
    ):
        block.target_drop_rate = block.drop_rate = rate


def expected_depth(model: nn.Module) -> float:
    """Sum over stochastic blocks of their current survival probability ``1 - drop_rate``.

    >>> import torchvision
    >>> expected_depth(apply_stochastic_depth(torchvision.models.resnet18(), drop_rate=0.0))
    8.0
    """
    return float(sum(1.0 - b.drop_rate for b in stochastic_blocks(model)))


class StochasticDepth:
    """Stochastic depth as an algorithm object: validate once, ``apply`` to a model, then
    drive the warmup with ``set_progress`` during training.

    >>> import torchvision
    >>> sd = StochasticDepth("Bottleneck", "block", drop_rate=0.5, drop_warmup=0.1)
    >>> model = sd.apply(torchvision.models.resnet50())
    >>> sd.set_progress(0.05); round(stochastic_blocks(model)[-1].drop_rate, 3)
    0.25
    >>> sd.find_unused_parameters
    True
    """

    def __init__(
        self,
        target_layer_name: str = "auto",
        stochastic_method: str = "sample",
        drop_rate: float = 0.2,
        drop_distribution: str = "linear",
        drop_warmup: float = 0.0,
        scale_by_keep: bool = False,
        sample_impl: str = "mask",
    ) -> None:
        check_args(
            stochastic_method=stochastic_method,
            drop_rate=drop_rate,
            drop_distribution=drop_distribution,
            drop_warmup=drop_warmup,
            scale_by_keep=scale_by_keep,
            sample_impl=sample_impl,
        )
        _check_target(target_layer_name)
        self.target_layer_name = target_layer_name
        self.stochastic_method = stochastic_method
        self.drop_rate = drop_rate
        self.drop_distribution = drop_distribution
        self.drop_warmup = drop_warmup
        self.scale_by_keep = scale_by_keep
        self.sample_impl = sample_impl
        self.model: nn.Module | None = None
        self._blocks: list[StochasticBlock] = []

    @property
    def find_unused_parameters(self) -> bool:
        """Whether DDP needs ``find_unused_parameters=True``: only for the ``block`` method."""
        return self.stochastic_method == "block"

    def apply(self, model: nn.Module) -> nn.Module:
        """Do the surgery on ``model`` (in place) and remember it for ``set_progress``."""
        apply_stochastic_depth(
            model,
            self.target_layer_name,
            self.stochastic_method,
            self.drop_rate,
            self.drop_distribution,
            drop_warmup=self.drop_warmup,
            scale_by_keep=self.scale_by_keep,
            sample_impl=self.sample_impl,
        )
        self.model = model
        self._blocks = stochastic_blocks(model)
        return model

    def set_progress(self, fraction: float) -> None:
        """Set every block's rate for ``fraction`` of training done (the warmup rule).

        Cheap once warmup is over (a training loop calls it every step): then the rates are
        at their full values and nothing is touched."""
        if self.model is None:
            raise RuntimeError("call `StochasticDepth.apply(model)` before `set_progress`")
        full = warmup_rate(1.0, fraction, self.drop_warmup) == 1.0  # also checks `fraction`
        # Every way of setting progress moves all rates together, so the last block says
        # whether they are at their full values (a loop over 54 blocks costs ~80 us a step).
        last = self._blocks[-1]
        if not (full and last.drop_rate == last.target_drop_rate):
            _set_progress(self._blocks, fraction, self.drop_warmup)

    def __repr__(self) -> str:
        return (
            f"StochasticDepth(target_layer_name={self.target_layer_name!r}, "
            f"stochastic_method={self.stochastic_method!r}, drop_rate={self.drop_rate!r}, "
            f"drop_distribution={self.drop_distribution!r}, drop_warmup={self.drop_warmup!r}, "
            f"scale_by_keep={self.scale_by_keep!r}, sample_impl={self.sample_impl!r})"
        )


__all__ = [
    "TARGET_LAYER_NAMES",
    "StochasticBlock",
    "StochasticDepth",
    "apply_stochastic_depth",
    "expected_depth",
    "set_drop_progress",
    "set_drop_rates",
    "stochastic_blocks",
]
