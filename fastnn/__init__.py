"""fastnn: fully-connected networks trained the textbook way, a whole mini-batch at once."""

__version__ = "0.1.0"

from .backend import Backend, get_backend
from .checkpoint import load_model, save_model
from .data import load_dataset, split_validation
from .errors import (
    BackendUnavailable,
    ConfigError,
    DataError,
    DivergenceError,
    DownloadError,
    FastnnError,
    ModelFileError,
    ShapeError,
)
from .network import Network
from .train import History

__all__ = [
    "Backend",
    "BackendUnavailable",
    "ConfigError",
    "DataError",
    "DivergenceError",
    "DownloadError",
    "FastnnError",
    "History",
    "ModelFileError",
    "Network",
    "ShapeError",
    "__version__",
    "get_backend",
    "load_dataset",
    "load_model",
    "save_model",
    "split_validation",
]
