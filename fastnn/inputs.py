"""How inputs are read: one rule for ``fit``, ``evaluate``, ``predict``, ``forward``, ``gradients`` and the CLI.

    whole numbers   an integer array (uint8 pixels, an int64 .npy, a CSV of whole numbers) is divided by
                    the network's ``input_scale``: 255 when it was trained on whole numbers in 0..255
                    (pixels), else 1
    real numbers    a float array is taken as it is: it is already in the units the network trained on

The first ``fit`` of a network records its ``input_scale`` (255 for whole numbers in 0..255, else 1) and
the range of its training inputs after scaling, ``input_range``; model files and checkpoints carry both,
so every entry point scales a file's inputs as its training data was.  The CLI's datasets (MNIST,
Fashion-MNIST, a .npz of uint8 images) are pixels: their models record 255.

Input that reaches far beyond the training range (more than RANGE_SLACK widths of it) gets one
InputRangeWarning naming the likely cause: raw 0–255 pixels given to a model trained on [0, 1].
"""

import warnings

import numpy as np

from . import validate
from .errors import InputRangeWarning

PIXELS = 255  # the scale of whole-number inputs in 0..255
RANGE_SLACK = 2.0  # inputs this many widths of the training range beyond it are "far outside"


def is_whole(X):
    """True when ``X`` (an array) holds integers or booleans, which the rule scales."""
    return X.dtype.kind in "biu"


def scale_of(X):
    """The input scale of the training inputs ``X``: 255 for whole numbers in 0..255 that exceed 1, else 1."""
    X = validate.as_array(X, "X")
    if X.dtype == np.uint8:
        return PIXELS
    if X.dtype.kind not in "iu" or X.size == 0:
        return 1
    low, high = int(X.min()), int(X.max())
    return PIXELS if 0 <= low and 1 < high <= PIXELS else 1


def as_rows(X, n_in):
    """``X`` as an array; one example of ``n_in`` features given as a 1-D array becomes one row."""
    X = validate.as_array(X, "X")
    if len(X.shape) == 1 and X.shape[0] == n_in and n_in > 1:
        X = X.reshape(1, n_in)
    return X


def features(net, X):
    """X (n_samples, n_in) for ``net``: validated, on its device, as its dtype, scaled by the rule above."""
    X = as_rows(X, net.sizes[0])
    scale = net.input_scale if net.input_scale is not None else scale_of(X)
    whole = getattr(X, "dtype", None) is not None and is_whole(X)
    X = validate.features(net.backend, X, net.sizes[0], net.dtype)
    if whole and scale != 1:
        X *= net.dtype.type(1 / scale)  # a fresh array: the cast from integers made it
    if net.input_range is not None:
        far_outside(net, X)
    return X


def value_range(xp, X):
    """(min, max) of a device array, read back once."""
    return float(xp.min(X)), float(xp.max(X))


def far_outside(net, X):
    """Warn once (InputRangeWarning) when the scaled inputs X reach far beyond the training range."""
    low, high = net.input_range
    width = max(high - low, 1e-12)
    got_low, got_high = value_range(net.xp, X)
    if got_high <= high + RANGE_SLACK * width and got_low >= low - RANGE_SLACK * width:
        return
    warnings.warn(range_message(net.input_scale, (low, high), (got_low, got_high)), InputRangeWarning, stacklevel=4)


def range_message(scale, trained, got):
    """The one line that says inputs are far outside the training range, and the likely cause."""
    (low, high), (got_low, got_high) = trained, got
    line = (f"the inputs reach [{got_low:.4g}, {got_high:.4g}], far outside the training inputs' range "
            f"[{low:.4g}, {high:.4g}]")
    if high <= 1.5 and 1.5 < got_high <= PIXELS:
        return (line + ": raw 0-255 pixels given to a model trained on pixels scaled to [0, 1]? divide them by 255, "
                "or pass them as integers (uint8), which are scaled by the model's input scale")
    if scale == PIXELS and got_high <= 1.5 / PIXELS:
        return line + ": pixels divided by 255 twice?"
    return line + ": inputs in other units than the training data? the answers are not to be trusted"
