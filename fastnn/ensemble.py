"""Ensemble: several networks of one shape whose prediction averages their outputs a^L.

    a^L(x) = (1/K) Σ_k a^L_k(x),   class = argmax a^L(x)  (a^L > 0.5 for one output unit)

An ensemble file is a model file holding every member: a JSON header (format ``fastnn-ensemble``, each
member's model header) and the arrays ``m{k}_W{i}``, ``m{k}_b{i}``.  ``fastnn.load_model`` reads it into an
Ensemble, which has what the fastnn command's ``predict`` and ``evaluate`` use: ``forward``, ``predict``,
``evaluate``, ``sizes``, ``dataset``, ``backend``.
"""

import json

import numpy as np

from . import validate
from .errors import ConfigError, ModelFileError, ShapeError

FORMAT = "fastnn-ensemble"
VERSION = 1
TINY = 1e-12  # the averaged output is kept in [TINY, 1 - TINY] inside a logarithm


class Ensemble:
    """Networks of one shape, activations, cost and dtype (``members``), predicting together."""

    def __init__(self, members):
        from .many import check_nets

        self.members = check_nets(members)
        first = self.members[0]
        self.sizes, self.cost, self.backend, self.dtype = first.sizes, first.cost, first.backend, first.dtype
        self.dataset = first.dataset
        self.regression = first.regression  # one identity unit with real targets: loss, RMSE and R², no classes
        self.input_scale, self.input_range = first.input_scale, first.input_range  # the members' input rule
        self.history = None

    def __repr__(self):
        return f"Ensemble({len(self.members)} × {self.members[0]!r})"

    def forward(self, X):
        """The members' mean output a^L for X (n_samples, n_in), as numpy (n_samples, n_out)."""
        total = None
        for net in self.members:
            a = net.forward(X).astype(np.float64)
            total = a if total is None else total + a
        return (total / len(self.members)).astype(self.dtype)

    def predict(self, X):
        """The class of each row of X from the mean output (regression: the mean output itself)."""
        a = self.forward(X)
        return a[:, 0] if self.regression else _classes(a)

    def evaluate(self, X, y):
        """Mean cost of the mean output, and accuracy, on (X, y): {"loss": float, "accuracy": float}."""
        cpu = self.members[0]
        _, Y, labels = cpu._inputs(X, y)
        Y, labels = self.backend.to_host(Y).astype(np.float64), self.backend.to_host(labels)
        a = self.forward(X).astype(np.float64)
        loss = float(_cost(self.cost.name, a, Y)) / len(a)
        if self.regression:  # as Network.evaluate: RMSE = sqrt(Σ (a - y)² / n), R² = 1 - Σ (a - y)² / Σ (y - ȳ)²
            sse, spread = float(((a - Y) ** 2).sum()), float(((Y - Y.mean(axis=0)) ** 2).sum())
            r2 = 1.0 - sse / spread if spread > 0 else (1.0 if sse == 0 else 0.0)
            return {"loss": loss, "rmse": (sse / len(a)) ** 0.5, "r2": r2}
        return {"loss": loss, "accuracy": float((_classes(a) == labels).mean())}


def _classes(a):
    return a.argmax(axis=1) if a.shape[1] > 1 else (a[:, 0] > 0.5).astype(np.int64)


def _cost(name, a, y):
    """The summed cost of outputs ``a`` against targets ``y`` (rows: examples), from a alone."""
    if name == "quadratic":
        return 0.5 * ((a - y) ** 2).sum()
    a = np.clip(a, TINY, 1 - TINY)
    if name == "cross-entropy":
        return -(y * np.log(a) + (1 - y) * np.log(1 - a)).sum()
    return -(y * np.log(a)).sum()  # log-likelihood


def save_ensemble(members, path):
    """Write the networks ``members`` (an Ensemble or a list) to ``path`` as one ensemble file, atomically."""
    from .checkpoint import _model_arrays, _write, model_header

    members = members.members if isinstance(members, Ensemble) else Ensemble(members).members
    path = validate.as_path(path, "ensemble path")
    arrays = {"header": np.array(json.dumps({"format": FORMAT, "version": VERSION,
                                             "members": [model_header(net) for net in members]}))}
    for k, net in enumerate(members):
        for name, array in _model_arrays(net).items():
            if name != "header":
                arrays[f"m{k}_{name}"] = array
    _write(path, arrays, "ensemble file")


def read(path, npz, header, device):
    """The Ensemble in the open file ``npz`` whose JSON ``header`` says it is one (``fastnn.load_model``)."""
    from .checkpoint import _header_problem, _network, read_parameters

    version = header.get("version")
    if version != VERSION:
        raise ModelFileError(f"{path} has ensemble format version {version!r}; this fastnn reads {VERSION}")
    members = header.get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
        raise ModelFileError(f"{path} has an invalid ensemble header: members must be a non-empty list of model "
                             f"headers")
    nets = []
    for k, member in enumerate(members):
        problem = _header_problem(member)
        if problem:
            raise ModelFileError(f"{path}: member {k} has an invalid header: {problem}")
        arrays = read_parameters(path, npz, member["sizes"], prefix=f"m{k}_")
        nets.append(_network(path, member, {name[len(f"m{k}_"):]: a for name, a in arrays.items()}, device))
    try:
        return Ensemble(nets)
    except (ConfigError, ShapeError) as e:
        raise ModelFileError(f"{path}: its members do not make one ensemble: {e}") from e
