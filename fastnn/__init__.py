"""fastnn: fully-connected networks trained the textbook way, a whole mini-batch at once."""

from . import interrupts  # noqa: F401 - first: in the fastnn command, a stop signal from here on is one line (starting)

__version__ = "0.1.0"

from .backend import Backend, get_backend
from .checkpoint import load_checkpoint, load_model, save_checkpoint, save_model
from .data import load_dataset, split_validation
from .errors import (
    BackendUnavailable,
    ConfigError,
    DataError,
    DeviceOutOfMemory,
    DistributedError,
    DivergenceError,
    DownloadError,
    FastnnError,
    InputRangeWarning,
    MissingPackage,
    ModelFileError,
    NotLearningWarning,
    ShapeError,
)
from .many import fit_many
from .metrics_log import MetricsLog
from .network import Network
from .state import TrainState
from .train import History

__all__ = [
    "Backend",
    "BackendUnavailable",
    "ConfigError",
    "DataError",
    "DeviceOutOfMemory",
    "DistributedError",
    "DivergenceError",
    "DownloadError",
    "FastnnError",
    "History",
    "InputRangeWarning",
    "MetricsLog",
    "MissingPackage",
    "ModelFileError",
    "Network",
    "NotLearningWarning",
    "ShapeError",
    "TrainState",
    "__version__",
    "fit_many",
    "get_backend",
    "load_checkpoint",
    "load_dataset",
    "load_model",
    "save_checkpoint",
    "save_model",
    "split_validation",
]
