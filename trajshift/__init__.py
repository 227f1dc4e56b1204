"""trajshift: large-scale meta-learning of shared initializations with continual trajectory shifting
(Shin, Lee, Gong & Hwang, ICML 2021), its ablations and the first-order baselines."""
from .config import MetaConfig
from .errors import ConfigError, DivergenceError, TrajshiftError
from .flat import FlatSpec
from .learners import FunctionLearners, ModuleLearners, batch_indices
from .methods import METHODS
from .population import Population
from .trainer import MetaTrainer, TrainResult

__version__ = "0.1.0"

__all__ = [
           "METHODS",
           "ConfigError",
           "DivergenceError",
           "FlatSpec",
           "FunctionLearners",
           "MetaConfig",
           "MetaTrainer",
           "ModuleLearners",
           "Population",
           "TrainResult",
           "TrajshiftError",
           "batch_indices",
]
