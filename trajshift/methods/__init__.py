"""Method registry: name -> Method class. Configs name methods (method: cts); ``METHODS.get(name)``."""
from ..core.registry import Registry
from .base import Method
from .cts import CTS, CTSAccurate, CTSNoShift, CTSRandomShift
from .fomaml import FOMAML, FOMAMLPlusPlus
from .imaml import IMAML
from .leap import Leap
from .mtl import MTL, Pretrain
from .reptile import Reptile, ReptileAverage

METHODS: Registry[type[Method]] = Registry("method", "method")
for _cls in (CTS, CTSNoShift, CTSRandomShift, CTSAccurate, Reptile, ReptileAverage, FOMAML, FOMAMLPlusPlus, Leap,
             IMAML, MTL, Pretrain):
    METHODS.register(_cls.name, _cls)

__all__ = ["METHODS", "Method"]
