"""srt_hf: Selective Reflection-Tuning for the Hugging Face ecosystem."""

__version__ = "0.1.0"

from .errors import ConfigError, InputError, ModelUnavailableError, SrtHfError  # noqa: E402
from .formats import ColumnMapping  # noqa: E402
from .scoring import IFDScorer, ScoringConfig  # noqa: E402

__all__ = [
    "ColumnMapping",
    "ConfigError",
    "IFDScorer",
    "InputError",
    "ModelUnavailableError",
    "ScoringConfig",
    "SrtHfError",
    "__version__",
]
