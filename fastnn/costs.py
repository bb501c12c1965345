"""Cost functions C: their value summed over a batch, and the output error δ^L (BP1).

Arrays are (n_out, batch), one column per example; ``y`` holds the target columns.  The
per-example costs follow the textbook; values are sums over the batch (divide by the batch
size for the mean).  All are computed from z where that keeps them finite for any |z|.
"""

from .errors import ConfigError


class Quadratic:
    """C = ½ Σ ||a - y||²; works with any output activation."""

    name = "quadratic"
    output = None  # any output activation

    def value(self, xp, z, a, y):
        d = a - y
        return 0.5 * xp.vdot(d.ravel(), d.ravel())

    def output_error(self, xp, z, a, y, activation, out, tmp):
        """BP1: δ^L = (a - y) ⊙ σ'(z^L); returns the batch's summed cost."""
        xp.subtract(a, y, out=out)
        flat = out.ravel()
        cost = 0.5 * xp.vdot(flat, flat)
        activation.backward(xp, out, z, a, tmp)
        return cost


class CrossEntropy:
    """C = -Σ [y ln a + (1-y) ln(1-a)] with sigmoid output, computed as Σ [softplus(z) - y z]."""

    name = "cross-entropy"
    output = "sigmoid"

    def value(self, xp, z, a, y):
        return xp.logaddexp(0.0, z).sum() - xp.vdot(y.ravel(), z.ravel())

    def output_error(self, xp, z, a, y, activation, out, tmp):
        """BP1 for sigmoid + cross-entropy: σ' cancels, δ^L = a - y."""
        xp.subtract(a, y, out=out)
        return self.value(xp, z, a, y)


class LogLikelihood:
    """C = -Σ y ln a with softmax output, computed as Σ y (logsumexp(z) - z)."""

    name = "log-likelihood"
    output = "softmax"

    def value(self, xp, z, a, y):
        top = z.max(axis=0, keepdims=True)
        lse = top + xp.log(xp.exp(z - top).sum(axis=0, keepdims=True))
        return xp.vdot(lse.ravel(), y.sum(axis=0)) - xp.vdot(y.ravel(), z.ravel())

    def output_error(self, xp, z, a, y, activation, out, tmp):
        """BP1 for softmax + log-likelihood: the Jacobian cancels, δ^L = a - y."""
        xp.subtract(a, y, out=out)
        return self.value(xp, z, a, y)


COSTS = {cls.name: cls for cls in (Quadratic, CrossEntropy, LogLikelihood)}
PAIRS = "sigmoid + cross-entropy, softmax + log-likelihood, any output + quadratic"


def get_cost(name, output_name):
    """Return the cost called ``name``, checking that it fits the output activation."""
    if not isinstance(name, str) or name not in COSTS:
        raise ConfigError(f"cost must be one of {', '.join(COSTS)}; got {name!r}")
    cost = COSTS[name]()
    if cost.output is not None and cost.output != output_name:
        fits = [c.name for c in COSTS.values() if c.output in (None, output_name)]
        raise ConfigError(
            f"cost {name!r} needs a {cost.output} output layer; got output {output_name!r}. "
            f"The pairs that match: {PAIRS}; for output {output_name!r} use cost {' or '.join(map(repr, fits))}"
        )
    return cost
