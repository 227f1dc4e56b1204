"""trajshift: large-scale meta-learning of shared initializations with continual trajectory shifting
(Shin, Lee, Gong & Hwang, ICML 2021), its ablations and the first-order baselines."""
from .api import FitResult, finetune, fit
from .config import MetaConfig
from .errors import ConfigError, DivergenceError, TrajshiftError
from .flat import FlatSpec
from .learners import FunctionLearners
from .loop import MetaTrainer, TrainResult
from .methods import METHODS
from .module_learners import ModuleLearners
from .population import Population
from .sampling import batch_indices

__version__ = "0.1.0"

__all__ = [
           "METHODS",
           "ConfigError",
           "DivergenceError",
           "FitResult",
           "FlatSpec",
           "FunctionLearners",
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
