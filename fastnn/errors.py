"""The exceptions fastnn raises: one base class, a few specific kinds."""


class FastnnError(Exception):
    """Base class of every error fastnn raises on purpose."""


class ConfigError(FastnnError, ValueError):
    """An argument or option has a value fastnn does not accept."""


class ShapeError(ConfigError):
    """Arrays whose shapes do not fit the network or each other."""


class DataError(FastnnError, ValueError):
    """Input data that is not finite, out of range, empty, or a corrupt data file."""


class DownloadError(DataError):
    """A dataset could not be downloaded or failed its checksum."""


class ModelFileError(FastnnError):
    """A model or checkpoint file that is missing, truncated, or not a fastnn file."""


class BackendUnavailable(FastnnError):
    """A compute device was asked for by name and cannot be used."""


class DivergenceError(FastnnError):
    """Training produced a non-finite loss, or one 1000 times the first epoch's; the last good weights were kept."""


class DeviceOutOfMemory(FastnnError):
    """The GPU (or the host) ran out of memory; a smaller batch or another device may fit."""


class DistributedError(FastnnError):
    """Distributed training cannot start or go on: no MPI launcher or mpi4py, or ranks that disagree."""


class NotLearningWarning(UserWarning):
    """After its first epoch, a run looks as if it will not learn (accuracy at chance, or an exploding loss)."""


class InputRangeWarning(UserWarning):
    """Inputs reach far outside the range the network was trained on (raw 0-255 pixels, say): see fastnn.inputs."""


class MissingPackage(FastnnError):
    """An optional package that a feature needs (matplotlib for plots) is not installed."""
