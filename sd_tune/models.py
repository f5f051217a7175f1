"""A registry of ResNet builders: torchvision's ImageNet ResNets and the CIFAR ResNets of He et al.

``build_model(arch, num_classes, in_channels)`` is the one entry point. No weights are
downloaded: every model starts from its builder's own initialisation.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from sd_tune.vocab import MODEL_FAMILIES, arch_name

# Every torchvision family and depth of the vocabulary, under the name torchvision gives it.
# torchvision is imported only to build one: every Ray Train worker of every trial imports
# this module, and torchvision would cost each 0.3 s more (benchmarks/trial_imports.py).
TORCHVISION_ARCHS: tuple[str, ...] = tuple(
    arch_name(family, depth)
    for family, depths in MODEL_FAMILIES.items()
    if depths is not None
    for depth in depths
)
CIFAR_DEPTHS: tuple[int, ...] = (20, 32, 44, 56, 110, 1202)  # the usual ones; any 6n+2 works
_CIFAR = re.compile(r"cifar_resnet(\d+)")


class CifarBasicBlock(nn.Module):
    """Two 3x3 convs with BN; the shortcut subsamples and zero-pads channels (option A).

    Implements the residual-block protocol that surgery understands: ``residual_branch(x)``
    returns a fresh tensor, ``shortcut(x)`` the identity path.

    >>> import torch
    >>> CifarBasicBlock(16, 32, stride=2)(torch.randn(2, 16, 8, 8)).shape
    torch.Size([2, 32, 4, 4])
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad_channels = planes - in_planes

    def residual_branch(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride == 1 and self.pad_channels == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.pad_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.residual_branch(x)
        out += self.shortcut(x)
        return self.relu(out)


class CifarResNet(nn.Module):
    """The CIFAR ResNet of depth ``6n + 2``: a 3x3 stem (no max-pool), three stages of ``n``
    basic blocks with 16/32/64 channels, global average pooling and a linear classifier.

    >>> import torch
    >>> CifarResNet(20, num_classes=10)(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"`depth` must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, 1202, ...), "
                f"but got {depth}"
            )
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        planes = 16
        for stage, width in enumerate((16, 32, 64), start=1):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 1 and i == 0 else 1
                blocks.append(CifarBasicBlock(planes, width, stride))
                planes = width
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def model_names() -> list[str]:
    """Examples of accepted ``arch`` values (``cifar_resnet`` takes any depth 6n+2).

    >>> model_names()[:2]
    ['resnet18', 'resnet34']
    """
    return [*TORCHVISION_ARCHS, *(f"cifar_resnet{d}" for d in CIFAR_DEPTHS)]


def build_model(arch: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Build a randomly initialised ResNet by name.

    >>> build_model("cifar_resnet20", num_classes=10, in_channels=1).conv1.in_channels
    1
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes >= 2` must hold, but got num_classes={num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"`in_channels >= 1` must hold, but got in_channels={in_channels!r}")
    match = _CIFAR.fullmatch(arch) if isinstance(arch, str) else None
    if match:
        return CifarResNet(int(match.group(1)), num_classes, in_channels)
    if arch not in TORCHVISION_ARCHS:
        raise ValueError(
            f"`arch` must be one of {', '.join(map(repr, TORCHVISION_ARCHS))} or "
            f"'cifar_resnet<6n+2>' (e.g. 'cifar_resnet56'), but got {arch!r}"
        )
    import torchvision

    builder: Callable[..., nn.Module] = getattr(torchvision.models, arch)
    model = builder(num_classes=num_classes)
    if in_channels != 3:
        old = model.conv1
        model.conv1 = nn.Conv2d(
            in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
        )
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
