"""Model registry: name -> constructor(num_classes, activation=..., pooling=...)."""
from ..registry import Registry
from .conv4 import Conv4
from .resnet import ResNet18, ResNet20

MODELS = Registry("model", "model.name")
MODELS.register("resnet20", ResNet20)
MODELS.register("conv4", Conv4)
MODELS.register("resnet18", ResNet18)


def build_model(spec: dict, num_classes: int):
    """``spec``: {name, **options} (options: activation relu|softplus, pooling avg|max, ...)."""
    spec = dict(spec)
    cls = MODELS.get(spec.pop("name", None))
    return cls(num_classes=num_classes, **spec)


__all__ = ["MODELS", "Conv4", "ResNet18", "ResNet20", "build_model"]
