"""mixens: token-level ensembles of language models (mixture, averaging, routers)."""

from mixens.decoding import GenerationStats
from mixens.ensemble import Ensemble, GenerationResult, load_ensemble
from mixens.errors import ConfigError
from mixens.spec import ModelSpec

__all__ = ["ConfigError", "Ensemble", "GenerationResult", "GenerationStats", "ModelSpec", "load_ensemble"]
__version__ = "0.1.0"
