"""trajshift: large-scale meta-learning of shared initializations with continual trajectory shifting
(Shin, Lee, Gong & Hwang, ICML 2021), its ablations and the first-order baselines."""
from .api import FitResult, finetune, fit
from .core.errors import ConfigError, DivergenceError, Interrupted, TrajshiftError
from .core.flat import FlatSpec
from .core.sampling import batch_indices
from .engine.learners import FunctionLearners
from .engine.module_learners import ModuleLearners
from .engine.population import Population
from .methods import METHODS
from .training.config import MetaConfig
from .training.loop import MetaTrainer, TrainResult

__version__ = "0.1.0"

__all__ = [
           "METHODS",
           "ConfigError",
           "DivergenceError",
           "FitResult",
           "FlatSpec",
           "FunctionLearners",
           "Interrupted",
           "MetaConfig",
           "MetaTrainer",
           "ModuleLearners",
           "Population",
           "TrainResult",
           "TrajshiftError",
           "batch_indices",
           "finetune",
           "fit",
]
