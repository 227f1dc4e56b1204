"""ResNet20 (CIFAR style, He et al. 2016, as in the paper's reference code) and ResNet18 (ImageNet style, with
torchvision's parameter names so a torchvision-format state_dict loads into it)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .common import activation as _activation
from .common import global_pool


class _ShortcutA(nn.Module):
    """Option-A shortcut: subsample by 2 (x[:, :, ::2, ::2]) and zero-pad the new channels; no parameters."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.pad = extra_channels

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: str, shortcut: str = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act1 = _activation(act)
        self.act2 = _activation(act)
        self.downsample = None
        self.shortcut = None
        if stride != 1 or cin != cout:
            if shortcut == "A":
                self.shortcut = _ShortcutA(cout - cin)
            else:   # option B (torchvision): 1x1 conv + BN, named "downsample.0/1"
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.shortcut is None and self.downsample is None else \
            (self.shortcut(x) if self.shortcut is not None else self.downsample(x))
        return self.act2(out + skip)


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet20(nn.Module):
    """3x3 conv 3->16 + BN + act; three stages of 3 basic blocks (16/32/64 channels, strides 1/2/2, option-A
    shortcuts); global pooling; linear head 64 -> C ("fc"). 269,072 body parameters. Global pooling lets inputs of
    any size (28..84 px) share one body."""

    def __init__(self, num_classes: int = 10, activation: str = "relu", pooling: str = "avg",
                 in_channels: int = 3, blocks: int = 3):
        super().__init__()
        act = activation
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act = _act(act)
        layers, cin = [], 16
        for i, (width, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
            stage = []
            for b in range(blocks):
                stage.append(BasicBlock(cin, width, stride if b == 0 else 1, act))
                cin = width
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = global_pool(pooling)
        self.fc = nn.Linear(64, num_classes)
        _init(self)

    def features(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        return self.pool(self.layer3(self.layer2(self.layer1(x)))).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


def _act(name):
    return _activation(name)


class ResNet18(nn.Module):
    """ResNet18 for 224 px inputs (7x7 stride-2 stem, max-pool, 4 stages of 2 basic blocks, widths 64..512,
    option-B shortcuts). Parameter and buffer names follow torchvision's resnet18, so its state_dict files load
    with ``load_state_dict`` (the head ``fc`` is replaced for each task)."""

    def __init__(self, num_classes: int = 1000, activation: str = "relu", pooling: str = "avg",
                 in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = _act(activation)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, width in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(cin, width, stride, activation, shortcut="B"), BasicBlock(width, width, 1, activation)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = width
        self.avgpool = global_pool(pooling)
        self.fc = nn.Linear(512, num_classes)
        _init(self)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))
