"""Conv4 (Vinyals et al. 2016; Finn et al. 2017): 4 x (3x3 conv, BatchNorm, activation, 2x2 max-pool), global
pooling, linear head ("fc")."""
from __future__ import annotations

from torch import nn

from .common import activation as _activation
from .common import global_pool


class Conv4(nn.Module):
    def __init__(self, num_classes: int = 10, activation: str = "relu", pooling: str = "avg", width: int = 64,
                 in_channels: int = 3):
        super().__init__()
        layers, cin = [], in_channels
        for _ in range(4):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), _activation(activation),
                       nn.MaxPool2d(2, ceil_mode=True)]
            cin = width
        self.body = nn.Sequential(*layers)
        self.pool = global_pool(pooling)
        self.fc = nn.Linear(width, num_classes)

    def features(self, x):
        return self.pool(self.body(x)).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))
