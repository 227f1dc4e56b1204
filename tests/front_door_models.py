"""Models of a user's own, importable by path (front_door_models:...), for the tests of models crossing doors."""
import random

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset


class SeqNet(nn.Module):
    """A head inside an nn.Sequential: ``top.1`` (top.0 is part of the body)."""

    def __init__(self, num_classes: int = 3, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, width), nn.Tanh())
        self.top = nn.Sequential(nn.Linear(width, width), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.top(self.body(x))


def seq_net(task, num_classes):
    """The Python API's convention: model_fn(task_index, num_classes)."""
    return SeqNet(num_classes)


class TimmLike(nn.Module):
    """timm's convention: the head is whatever get_classifier() returns (here ``proj``)."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.proj = nn.Linear(8, num_classes)

    def get_classifier(self):
        return self.proj

    def forward(self, x):
        return self.proj(self.features(x))


class ImageNet(nn.Module):
    """A small image model of the user's own, for image folders (3 channels, any resolution)."""

    def __init__(self, num_classes: int = 3, width: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.classifier(self.body(x))


def image_net(task, num_classes):
    return ImageNet(num_classes)


class NumpyAugmented(Dataset):
    """Items augmented with NumPy's global generator (albumentations-style): x + noise."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        noise = torch.from_numpy(np.random.normal(0, 0.5, size=self.x[i].shape).astype(np.float32))
        return self.x[i] + noise, self.y[i]


class PythonAugmented(Dataset):
    """Items augmented with Python's random: a random sign flip and a random scale."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i] * random.choice([-1.0, 1.0]) * random.uniform(0.5, 1.5), self.y[i]
