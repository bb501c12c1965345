"""Network: a fully-connected net whose forward and backward passes take a whole batch at once.

Orientation is the textbook's: W^l is (n_out, n_in) and a batch of m examples is a matrix with
one column per example, A^l of shape (n_l, m).  Users pass X as (m, n_in); the gathered batch
is stored (m, n_in) and used as its transpose view, so no copy is made.

    forward  Z^l = W^l A^{l-1} + b^l, A^l = σ(Z^l)   Network._backprop (training), _feedforward
    BP1      δ^L = ∇_a C ⊙ σ'(Z^L)                    costs.*.output_error
    BP2      δ^l = ((W^{l+1})^T δ^{l+1}) ⊙ σ'(Z^l)     Network._backprop: one matmul per layer
    BP3      ∂C/∂b^l = Σ_batch δ^l                     Network._backprop: row sums, δ^l @ ones
    BP4      ∂C/∂W^l = δ^l (A^{l-1})^T                  Network._backprop: one matmul per layer

All weights live in one flat buffer (every W^l first, then every b^l) and so do their
gradients: an SGD update is a few whole-buffer operations, whatever the depth.

Training reuses preallocated arrays batch after batch: the workspace holds z, a and δ per layer
for the largest batch, and smaller batches (the short last one) use the front of the same buffers.  σ'(z) is
computed in z's own buffer, as z is not needed after BP1/BP2.  BP3's row sums are one BLAS
matrix-vector product with a vector of ones, cheaper than a reduction for small batches.
Given ``scale``, BP1's δ^L is multiplied by it before BP2–BP4, so every gradient comes out
scaled at the cost of one small multiplication: the trainer passes -η/m and adds the result.
"""

import functools

import numpy as np

from . import defaults, inputs, readers, train, validate
from .activations import get_activation
from .backend import get_backend, is_out_of_memory
from .costs import get_cost
from .errors import ConfigError, DataError, DeviceOutOfMemory, ShapeError

EVAL_CHUNK = 8192  # examples per forward pass when evaluating or predicting


class _Workspace:
    """Preallocated arrays for training on batches of exactly m examples.

    With ``base`` (the workspace of a batch of at least m) the arrays are views of the front of
    base's buffers, and nothing new is allocated.
    """

    def __init__(self, xp, sizes, m, dtype, base=None):
        self.m = m
        if base is None:
            flat = lambda n: xp.empty(n * m, dtype)
            self._x, self._y = flat(sizes[0]), flat(sizes[-1])
            self._ones = xp.ones(m, dtype)
            self._layers = [(flat(n), flat(n), flat(n)) for n in sizes[1:]]
        else:
            self._x, self._y, self._ones, self._layers = base._x, base._y, base._ones, base._layers
        view = lambda flat, rows, cols: flat[:rows * cols].reshape(rows, cols)
        self.x = view(self._x, m, sizes[0])  # gathered rows; used as x.T, (n_in, m)
        self.y = view(self._y, m, sizes[-1])  # gathered targets; used as y.T
        self.ones = view(self._ones, m, 1)  # BP3: Σ_batch δ = δ @ ones
        self.z = [view(z, n, m) for n, (z, _, _) in zip(sizes[1:], self._layers)]
        self.a = [view(a, n, m) for n, (_, a, _) in zip(sizes[1:], self._layers)]
        self.delta = [view(d, n, m) for n, (_, _, d) in zip(sizes[1:], self._layers)]


def _on_device(method):
    """Run ``method`` inside its network's device (``Backend.activate``): its arrays and kernels land there, whatever
    device is current, so two networks on two GPUs in one process never cross."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.backend.activate():
            return method(self, *args, **kwargs)

    return run


class Network:
    """A fully-connected network trained by mini-batch SGD on numpy or cupy.

    Args:
        sizes: units per layer, input first, e.g. [784, 30, 10].
        activation: hidden-layer activation: sigmoid, tanh, relu or identity.
        output: output-layer activation (also softmax); default: sigmoid after sigmoid or for one output
            unit, else softmax.  A softmax over one unit is refused (its output is always 1).
        cost: quadratic (any output), cross-entropy (sigmoid output), log-likelihood (softmax);
            default: log-likelihood for a softmax output, cross-entropy for one sigmoid unit, else
            quadratic (see ``fastnn.defaults``).
        device: auto, cpu, cuda or cuda:N (see ``fastnn.get_backend``).
        dtype: float32 (default) or float64.
        seed: seeds the one numpy Generator that draws weights and shuffles batches.
        init: auto (default: He for the layers that feed a relu, the textbook's otherwise), he or textbook.

    The textbook's start is W^l ~ N(0, 1/n_in), b^l ~ N(0, 1); He's is W^l ~ N(0, 2/n_in), b^l = 0.
    Both are drawn on the host in float64, so the same seed gives the same start on every device
    and dtype.  Every method computes inside the network's own device (``Backend.activate``), so networks on
    two GPUs of one process never cross.  ``dataset`` (a dict, or None), ``history`` (the History of the last
    ``fit``, or None), ``input_scale`` and ``input_range`` (set by the first ``fit``: see ``fastnn.inputs``) are carried
    into model files by ``save_model`` and read back by ``load_model``.

    Tasks: classification with class labels (n,) or target rows (n, n_out); binary with one sigmoid
    unit and 0/1 labels; regression with one identity (or tanh, relu) unit and real targets (n,),
    measured by loss, RMSE and R² instead of accuracy.
    """

    def __init__(self, sizes, activation="sigmoid", output=None, cost=None,
                 device="auto", dtype="float32", seed=None, init=None):
        self.sizes = validate.layer_sizes(sizes)
        hidden = get_activation(activation)
        n_out = self.sizes[-1]
        last = get_activation(defaults.output(activation, output, n_out), output=True)
        defaults.one_unit(last.name, n_out)
        self.activations = [hidden] * (len(self.sizes) - 2) + [last]
        self.cost = get_cost(defaults.cost(last.name, cost, n_out), last.name)
        self.init = defaults.init(init)
        self.dtype = validate.dtype(dtype)
        self.backend = get_backend(device)
        self.xp = self.backend.xp
        self.seed = seed
        self.rng = validate.generator(seed)
        self.dataset = None
        self.history = None
        self.input_scale = None  # what whole-number inputs are divided by; set by the first fit (fastnn.inputs)
        self.input_range = None  # (min, max) of the scaled training inputs; set by the first fit
        self.regression = defaults.is_regression(last.name, n_out)
        validate.network_fits(self.sizes, self.dtype, self.backend.memory(), self.backend.device)
        with self.backend.activate():
            self._initialize()

    def _initialize(self):
        """Allocate the buffers and draw the initial weights (see the class docstring)."""
        try:
            self._allocate()
            host = np.empty(self.params.size, np.float64)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            raise DeviceOutOfMemory(f"out of memory on {self.backend.device} making a network of "
                                    f"{validate.parameter_count(self.sizes):,} parameters ({type(e).__name__}: "
                                    f"{readers.one_line(e)}); try smaller layers") from e
        for n_in, act, w, b in zip(self.sizes[:-1], self.activations, *self._views(host)):
            if defaults.he_layer(self.init, act.name):
                w[...] = self.rng.standard_normal(w.shape) * np.sqrt(2 / n_in)
                b[...] = 0.0
            else:
                w[...] = self.rng.standard_normal(w.shape) / np.sqrt(n_in)
                b[...] = self.rng.standard_normal(b.shape)
        self.params[...] = self.backend.to_device(host, self.dtype)

    def _allocate(self):
        """Create the flat parameter and gradient buffers and the per-layer views into them."""
        pairs = list(zip(self.sizes[1:], self.sizes[:-1]))
        self.n_weights = sum(o * i for o, i in pairs)
        self.params = self.xp.zeros(self.n_weights + sum(self.sizes[1:]), self.dtype)
        self.grads = self.xp.zeros_like(self.params)
        self._w, self._b = self._views(self.params)
        self._nabla_w, self._nabla_b = self._views(self.grads)
        self._workspaces = {}

    def _views(self, flat):
        """Split ``flat`` into per-layer views: W^l (n_out, n_in), then b^l (n_out, 1)."""
        ws, bs, at = [], [], 0
        for n_out, n_in in zip(self.sizes[1:], self.sizes[:-1]):
            ws.append(flat[at:at + n_out * n_in].reshape(n_out, n_in))
            at += n_out * n_in
        for n_out in self.sizes[1:]:
            bs.append(flat[at:at + n_out].reshape(n_out, 1))
            at += n_out
        return ws, bs

    # -- what users read -------------------------------------------------------------

    @property
    def weights(self):
        """W^l for each layer as numpy arrays of shape (n_out, n_in)."""
        return [self.backend.to_host(w).copy() for w in self._w]

    @property
    def biases(self):
        """b^l for each layer as numpy arrays of shape (n_out,)."""
        return [self.backend.to_host(b).reshape(-1).copy() for b in self._b]

    @_on_device
    def set_parameters(self, weights, biases):
        """Replace every W^l (n_out, n_in) and b^l (n_out,) with the given arrays (numpy or cupy)."""
        shapes = [(o, i) for o, i in zip(self.sizes[1:], self.sizes[:-1])]
        for name, given in (("weights", weights), ("biases", biases)):
            if not isinstance(given, (list, tuple)):
                raise ShapeError(f"{name} must be a list of {len(shapes)} arrays, one per layer; "
                                 f"got {type(given).__name__}")
        if len(weights) != len(shapes) or len(biases) != len(shapes):
            raise ShapeError(f"expected {len(shapes)} weight and bias arrays; got {len(weights)} and {len(biases)}")
        host = np.empty(self.params.size, self.dtype)
        for l, (w, b, hw, hb) in enumerate(zip(weights, biases, *self._views(host))):
            w = self.backend.to_host(validate.as_array(w, f"W of layer {l}"))
            b = self.backend.to_host(validate.as_array(b, f"b of layer {l}"))
            if w.dtype.kind not in "biuf" or b.dtype.kind not in "biuf":
                raise DataError(f"layer {l}: weights and biases must hold numbers; got {w.dtype} and {b.dtype}")
            if w.shape != hw.shape or b.size != hb.size or b.ndim > 2:
                raise ShapeError(f"layer {l}: expected W {hw.shape} and b ({hb.shape[0]},); got W {w.shape} and b {b.shape}")
            if not (np.isfinite(w).all() and np.isfinite(b).all()):
                raise DataError(f"layer {l}: weights or biases hold NaN or infinity")
            with np.errstate(over="ignore"):
                hw[...], hb[...] = w, b.reshape(hb.shape)
            if not (np.isfinite(hw).all() and np.isfinite(hb).all()):
                top = max(np.abs(w).max(initial=0), np.abs(b).max(initial=0))
                raise DataError(f"layer {l}: weights or biases beyond {self.dtype}'s range: the largest magnitude is "
                                f"{top:.4g}, {self.dtype} holds up to {np.finfo(self.dtype).max:.4g}")
        self.params[...] = self.backend.to_device(host)

    def __repr__(self):
        acts = f"{self.activations[0].name}/{self.activations[-1].name}"
        return (f"Network({self.sizes}, {acts}, cost={self.cost.name}, "
                f"device={self.backend.device}, dtype={self.dtype})")

    # -- the math --------------------------------------------------------------------

    def _feedforward(self, a):
        """Forward pass of a (n_in, m) batch; returns (z^L, a^L), each (n_out, m)."""
        xp = self.xp
        last = len(self._w) - 1
        for l, (w, b, act) in enumerate(zip(self._w, self._b, self.activations)):
            z = w @ a
            z += b
            a = act.forward(xp, z, out=xp.empty_like(z) if l == last else z)
        return z, a

    def _workspace(self, m):
        """The preallocated arrays for batches of m examples (made once per batch size, sharing
        the buffers of a larger batch's when there is one)."""
        ws = self._workspaces.get(m)
        if ws is None:
            base = max(self._workspaces.values(), key=lambda w: w.m, default=None)
            if base is None or base.m < m:  # new, larger buffers: drop the old ones rather than keep both
                self._workspaces.clear()
                base = None
            ws = self._workspaces[m] = _Workspace(self.xp, self.sizes, m, self.dtype, base)
        return ws

    def _backprop(self, ws, scale=1.0):
        """BP1–BP4 for the batch in ``ws``: fill ``self.grads`` with ``scale`` times the gradients
        summed over the batch and return the batch's summed cost (a device scalar, not read here)."""
        xp = self.xp
        x = ws.x.T  # (n_in, m) view
        a_prev = x
        for w, b, act, z, a in zip(self._w, self._b, self.activations, ws.z, ws.a):
            xp.matmul(w, a_prev, out=z)  # Z^l = W^l A^{l-1} + b^l
            z += b
            a_prev = act.forward(xp, z, out=a)  # A^l = σ(Z^l)
        cost = self.cost.output_error(  # BP1; z^L is spent after it: σ' may use its buffer
            xp, ws.z[-1], ws.a[-1], ws.y.T, self.activations[-1], out=ws.delta[-1], tmp=ws.z[-1])
        if scale != 1.0:
            ws.delta[-1] *= scale  # every gradient below is linear in δ^L
        for l in range(len(self._w) - 1, -1, -1):
            delta = ws.delta[l]
            a_prev = ws.a[l - 1] if l > 0 else x
            xp.matmul(delta, a_prev.T, out=self._nabla_w[l])  # BP4
            xp.matmul(delta, ws.ones, out=self._nabla_b[l])  # BP3: row sums, as one matrix-vector product
            if l > 0:  # BP2: one transposed matmul for the whole batch, then ⊙ σ'(Z^{l-1}), made in z's buffer
                xp.matmul(self._w[l].T, delta, out=ws.delta[l - 1])
                self.activations[l - 1].backward(xp, ws.delta[l - 1], ws.z[l - 1], ws.a[l - 1], ws.z[l - 1])
        return cost

    # -- the Python API --------------------------------------------------------------

    def _features(self, X):
        """Validate X at the door, move it to the device and scale it by the one input rule (``fastnn.inputs``)."""
        return inputs.features(self, X)

    def _inputs(self, X, y):
        """Validate X and y at the door and move them to the device: (X, Y, labels)."""
        if y is None:
            raise ConfigError(f"y must be given: class labels (n_samples,) or targets (n_samples, {self.sizes[-1]}); "
                              "got None")
        X = self._features(X)
        Y, labels = validate.targets(self.backend, y, X.shape[0], self.sizes[-1], self.dtype, self.regression)
        return X, Y, labels

    def _outputs(self, X):
        """Yield (rows, z^L, a^L) for X in chunks of EVAL_CHUNK examples."""
        for start in range(0, X.shape[0], EVAL_CHUNK):
            rows = slice(start, start + EVAL_CHUNK)
            z, a = self._feedforward(X[rows].T)
            yield rows, z, a

    @_on_device
    def forward(self, X):
        """Network outputs a^L for X (n_samples, n_in), as a numpy array (n_samples, n_out)."""
        X = self._features(X)
        out = self.xp.empty((X.shape[0], self.sizes[-1]), self.dtype)
        for rows, _, a in self._outputs(X):
            out[rows] = a.T
        return self.backend.to_host(out)

    @_on_device
    def predict(self, X):
        """Predicted class of each row of X: argmax of the output (or a^L > 0.5 for one unit); for
        regression the output a^L itself, (n_samples,).  One example may be given as a 1-D array."""
        X = self._features(X)
        out = self.xp.empty(X.shape[0], self.dtype if self.regression else np.int64)
        for rows, _, a in self._outputs(X):
            out[rows] = a[0] if self.regression else self._classes(a)
        return self.backend.to_host(out)

    def _classes(self, a):
        return a.argmax(axis=0) if a.shape[0] > 1 else (a[0] > 0.5).astype(np.int64)

    @_on_device
    def _measure(self, X, Y, labels):
        """{"loss", "accuracy"} of device arrays (regression: {"loss", "rmse", "r2"}), read back once.

        RMSE = sqrt(Σ (a - y)² / n);  R² = 1 - Σ (a - y)² / Σ (y - ȳ)²  (over the n examples).
        """
        xp = self.xp
        cost = xp.zeros((), np.float64)
        right = xp.zeros((), np.int64)
        squares = xp.zeros((), np.float64)
        for rows, z, a in self._outputs(X):
            cost += self.cost.value(xp, z, a, Y[rows].T)
            if labels is None:
                squares += ((a - Y[rows].T) ** 2).sum(dtype=np.float64)
            else:
                right += (self._classes(a) == labels[rows]).sum()
        n = X.shape[0]
        if labels is not None:
            return {"loss": float(cost) / n, "accuracy": int(right) / n}
        spread = float(((Y - Y.mean(axis=0, dtype=np.float64)) ** 2).sum(dtype=np.float64))
        sse = float(squares)
        r2 = 1.0 - sse / spread if spread > 0 else (1.0 if sse == 0 else 0.0)
        return {"loss": float(cost) / n, "rmse": (sse / n) ** 0.5, "r2": r2}

    @_on_device
    def evaluate(self, X, y):
        """Mean cost and accuracy on (X, y): {"loss": float, "accuracy": float in [0, 1]}; for regression
        {"loss", "rmse", "r2"} (root mean squared error and the coefficient of determination)."""
        return self._measure(*self._inputs(X, y))

    @_on_device
    def gradients(self, X, y):
        """∂C/∂W^l and ∂C/∂b^l of the mean cost over (X, y): [(dW, db), …] as numpy, by layer."""
        X, Y, _ = self._inputs(X, y)
        ws = _Workspace(self.xp, self.sizes, X.shape[0], self.dtype)
        ws.x[...] = X
        ws.y[...] = Y
        self._backprop(ws)
        n = X.shape[0]
        return [(self.backend.to_host(dw) / n, self.backend.to_host(db).reshape(-1) / n)
                for dw, db in zip(self._nabla_w, self._nabla_b)]

    @_on_device
    def fit(self, X, y, epochs=30, batch_size=10, lr=None, **options):
        """Train by mini-batch SGD; returns the History, also kept in ``net.history``.

        Args:
            X: inputs (n_samples, n_in); integer pixels 0..255 are scaled to [0, 1] (``fastnn.inputs``).
            y: class labels (n,), targets (n, n_out), 0/1 labels for one sigmoid unit, real targets (n,)
                for regression.
            epochs: passes over X (default 30); batch_size: examples per update (default 10).
            lr: learning rate η (default: the network's, see ``fastnn.defaults``).
            validation_data=(X_val, y_val), momentum, l2, early_stop, save_best, checkpoint, progress
                (a bar and one line per epoch), engine, threads and the rest: see ``fastnn.train.fit``.
        """
        return train.fit(self, X, y, epochs=epochs, batch_size=batch_size, lr=lr, **options)
