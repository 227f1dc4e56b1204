"""Model registry: name -> constructor(num_classes, activation=..., pooling=...)."""
from ..core.registry import Registry
from .conv4 import Conv4
from .resnet import ResNet18, ResNet20

MODELS = Registry("model", "model.name")
MODELS.register("resnet20", ResNet20)
MODELS.register("conv4", Conv4)
MODELS.register("resnet18", ResNet18)


def import_factory(path: str, option: str = "model.factory"):
    """The callable named by ``"package.module:function"`` (or ``package.module.function``)."""
    import importlib

    from ..core.errors import ConfigError
    module_name, _sep, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{option}: expected 'package.module:function', got {path!r}")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{option}: cannot import {module_name!r} ({err}); is the package installed, or its "
                          f"folder on PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{option}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{option}: {path} is not callable")
    return obj


def build_model(spec: dict, num_classes: int):
    """``spec``: {name, **options} for a registered model (options: activation relu|softplus, pooling avg|max,
    ...), or {factory: "package.module:function", **options} for any model: ``function(num_classes=C, **options)``
    must return an nn.Module whose head is sized for C classes."""
    spec = dict(spec)
    if "factory" in spec:
        return import_factory(spec.pop("factory"))(num_classes=num_classes, **spec)
    cls = MODELS.get(spec.pop("name", None))
    return cls(num_classes=num_classes, **spec)


__all__ = ["MODELS", "Conv4", "ResNet18", "ResNet20", "build_model", "import_factory"]
