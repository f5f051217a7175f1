"""The words sd-tune's settings take, each defined once.

Every module that checks or uses one imports it from here. This module imports nothing, so
``sd_tune.config`` (no torch) and the torch layers share it.
"""

from __future__ import annotations

#: ``dataset.name``.
DATASETS: tuple[str, ...] = ("fashion_mnist", "cifar10", "cifar100", "imagenet", "synthetic")
#: ``model.family`` -> its depths (None: any ``6n + 2``, the CIFAR ResNets).
MODEL_FAMILIES: dict[str, tuple[int, ...] | None] = {
    "resnet": (18, 34, 50, 101, 152),
    "wide_resnet": (50,),
    "resnext": (50,),
    "cifar_resnet": None,
}
#: ``stochastic_depth.stochastic_method``.
METHODS: tuple[str, ...] = ("sample", "block")
#: ``stochastic_depth.drop_distribution``.
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "linear")
#: ``stochastic_depth.sample_impl``.
SAMPLE_IMPLS: tuple[str, ...] = ("mask", "subset")
#: ``stochastic_depth.target_layer_name``; "auto" takes every residual block surgery knows.
TARGET_LAYER_NAMES: tuple[str, ...] = (
    "auto",
    "Bottleneck",
    "BasicBlock",
    "ResNetBottleneck",
    "CifarBasicBlock",
)


def arch_name(family: str, depth: int) -> str:
    """The model registry's name for a family and depth.

    >>> arch_name("resnet", 50), arch_name("wide_resnet", 50), arch_name("cifar_resnet", 56)
    ('resnet50', 'wide_resnet50_2', 'cifar_resnet56')
    """
    if family == "wide_resnet":
        return f"wide_resnet{depth}_2"
    if family == "resnext":
        return f"resnext{depth}_32x4d"
    return f"{family}{depth}"
