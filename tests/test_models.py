"""The model registry: every architecture builds, runs on grayscale and RGB, and bad names fail."""

from __future__ import annotations

import pytest
import torch

from sd_tune import CifarResNet, build_model, model_names


@pytest.mark.parametrize(
    "arch",
    [
        "resnet18",
        "resnet50",
        "wide_resnet50_2",
        "resnext50_32x4d",
        "cifar_resnet20",
        "cifar_resnet56",
    ],
)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_models_build_and_run(arch: str, in_channels: int) -> None:
    model = build_model(arch, num_classes=7, in_channels=in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 32, 32))
    assert out.shape == (2, 7)


def test_cifar_resnet_structure() -> None:
    model = build_model("cifar_resnet110", 100)
    assert isinstance(model, CifarResNet)
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [18, 18, 18]
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert [
        model.layer1[0].conv1.out_channels,
        model.layer2[0].conv1.out_channels,
        model.layer3[0].conv1.out_channels,
    ] == [16, 32, 64]
    depth_8 = build_model("cifar_resnet8", 10)
    assert sum(1 for _ in depth_8.modules() if type(_).__name__ == "CifarBasicBlock") == 3


def test_registry_lists_examples() -> None:
    names = model_names()
    assert {"resnet50", "resnet152", "cifar_resnet110", "cifar_resnet1202"} <= set(names)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("resnet51", 10),
            r"`arch` must be one of 'resnet18', .* or 'cifar_resnet<6n\+2>' "
            r"\(e.g. 'cifar_resnet56'\), but got 'resnet51'",
        ),
        (("cifar_resnet21", 10), r"`depth` must be 6n\+2 with n >= 1 .* but got 21"),
        (("cifar_resnet2", 10), r"but got 2"),
        (("resnet18", 1), r"`num_classes >= 2` must hold, but got num_classes=1"),
        (("resnet18", 10, 0), r"`in_channels >= 1` must hold, but got in_channels=0"),
    ],
)
def test_bad_model_arguments(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(*args)
