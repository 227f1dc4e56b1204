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


CALL_NUM_CLASSES = "num_classes="
CALL_TASK_NUM_CLASSES = "task, num_classes"
CALLS = (CALL_NUM_CLASSES, CALL_TASK_NUM_CLASSES)


def build_model(spec: dict, num_classes: int, task: int = 0):
    """A model from a spec: ``{name, **options}`` (registered: ``Class(num_classes=C, **options)``; options:
    activation relu|softplus, pooling avg|max, ...) or ``{factory: "package.module:function", call: ..., **options}``
    for any model, called by its convention: ``call: "num_classes="`` (the default) as ``function(num_classes=C,
    **options)``, ``call: "task, num_classes"`` (a Python API model_fn) as ``function(task, C, **options)``. It
    must return an nn.Module whose head is sized for C classes. A factory that refuses its options is one error."""
    from ..core.errors import ConfigError
    spec = dict(spec)
    if "factory" in spec:
        path = spec.pop("factory")
        call = spec.pop("call", CALL_NUM_CLASSES)
        if call not in CALLS:
            raise ConfigError(f"model.call: {call!r} is not a calling convention; allowed: {', '.join(CALLS)}")
        factory = import_factory(path)
        args = (task, num_classes) if call == CALL_TASK_NUM_CLASSES else ()
        kwargs = spec if call == CALL_TASK_NUM_CLASSES else {"num_classes": num_classes, **spec}
    else:
        factory = MODELS.get(spec.pop("name", None))
        path, args, kwargs = factory.__name__, (), {"num_classes": num_classes, **spec}
    import inspect
    try:
        inspect.signature(factory).bind(*args, **kwargs)
    except TypeError as err:
        raise ConfigError(f"model: {path} does not take these options ({err}); check the model's options "
                          f"({', '.join(sorted(spec)) or 'none given'})") from None
    except ValueError:           # no signature to check (a builtin): call it and let it say
        pass
    return factory(*args, **kwargs)


__all__ = ["CALLS", "CALL_NUM_CLASSES", "CALL_TASK_NUM_CLASSES", "MODELS", "Conv4", "ResNet18", "ResNet20",
           "build_model", "import_factory"]
