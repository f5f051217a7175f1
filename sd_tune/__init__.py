"""sd-tune: find how much stochastic depth a ResNet should get."""

from __future__ import annotations

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

__version__ = "0.1.0"

__all__ = [
    "CifarBasicBlock", "CifarResNet", "StochasticBlock", "StochasticDepth", "StochasticResidual",
    "apply_stochastic_depth", "build_model", "drop_rates", "expected_depth", "model_names",
    "set_drop_progress", "set_drop_rates", "stochastic_blocks", "stochastic_residual",
]
