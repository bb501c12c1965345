"""fastnn: fully-connected networks trained the textbook way, a whole mini-batch at once."""

__version__ = "0.1.0"

from .backend import Backend, get_backend  # noqa: E402
from .data import load_dataset, split_validation  # noqa: E402
from .errors import (  # noqa: E402
    BackendUnavailable,
    ConfigError,
    DataError,
    DistributedError,
    DivergenceError,
    DownloadError,
    FastnnError,
    ModelFileError,
    ShapeError,
)
from .network import Network  # noqa: E402
from .train import History  # noqa: E402
from .checkpoint import load_model, save_model  # noqa: E402

__all__ = [
    "Backend", "BackendUnavailable", "ConfigError", "DataError", "DivergenceError", "DownloadError",
    "DistributedError", "FastnnError", "History", "ModelFileError", "Network", "ShapeError", "get_backend",
    "load_dataset", "load_model", "save_model", "split_validation", "__version__",
]
