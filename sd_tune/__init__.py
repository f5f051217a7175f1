"""sd-tune: find how much stochastic depth a ResNet should get.

The public names below load their module on first use (PEP 562), so ``import sd_tune`` and
the modules that need no torch (``sd_tune.config``, ``sd_tune.report``, ``sd_tune validate``)
start without importing torch.

>>> import sd_tune
>>> sd_tune.drop_rates(2, 0.2)
[0.1, 0.2]
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "CifarBasicBlock": "sd_tune.models",
    "CifarResNet": "sd_tune.models",
    "build_model": "sd_tune.models",
    "model_names": "sd_tune.models",
    "StochasticResidual": "sd_tune.stochastic_depth",
    "drop_rates": "sd_tune.stochastic_depth",
    "stochastic_residual": "sd_tune.stochastic_depth",
    "StochasticBlock": "sd_tune.surgery",
    "StochasticDepth": "sd_tune.surgery",
    "apply_stochastic_depth": "sd_tune.surgery",
    "expected_depth": "sd_tune.surgery",
    "set_drop_progress": "sd_tune.surgery",
    "set_drop_rates": "sd_tune.surgery",
    "stochastic_blocks": "sd_tune.surgery",
}

__all__ = [
    "CifarBasicBlock",
    "CifarResNet",
    "StochasticBlock",
    "StochasticDepth",
    "StochasticResidual",
    "apply_stochastic_depth",
    "build_model",
    "drop_rates",
    "expected_depth",
    "model_names",
    "set_drop_progress",
    "set_drop_rates",
    "stochastic_blocks",
    "stochastic_residual",
]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sd_tune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain one
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what type checkers and IDEs see
    from sd_tune.models import CifarBasicBlock, CifarResNet, build_model, model_names
    from sd_tune.stochastic_depth import StochasticResidual, drop_rates, stochastic_residual
    from sd_tune.surgery import (
        StochasticBlock,
        StochasticDepth,
        apply_stochastic_depth,
        expected_depth,
        set_drop_progress,
        set_drop_rates,
        stochastic_blocks,
    )
