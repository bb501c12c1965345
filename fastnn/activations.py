"""Activation functions σ and their backward pass, written against any array module ``xp``.

Every array is (n_units, batch): one column per example.  ``forward`` writes σ(z) into
``out`` (which may be ``z`` itself).  ``backward`` turns ∂C/∂a into ∂C/∂z in place: for an
elementwise σ that is ``grad ⊙ σ'(z)`` (the ⊙ of BP1 and BP2); for softmax it is the
Jacobian-vector product.  ``tmp`` is scratch space of the same shape; it may be ``z`` itself
(the network passes z's buffer, spent by then), so ``backward`` reads z before it writes tmp.
"""

from .errors import ConfigError


class Sigmoid:
    """σ(z) = 1 / (1 + e^-z), computed as (1 + tanh(z/2)) / 2 so that no |z| overflows."""

    name = "sigmoid"

    def forward(self, xp, z, out):
        xp.multiply(z, 0.5, out=out)
        xp.tanh(out, out=out)
        out *= 0.5
        out += 0.5
        return out

    def backward(self, xp, grad, z, a, tmp):
        # σ'(z) = σ(z) (1 - σ(z))
        xp.subtract(1.0, a, out=tmp)
        tmp *= a
        grad *= tmp
        return grad


class Tanh:
    """σ(z) = tanh(z)."""

    name = "tanh"

    def forward(self, xp, z, out):
        return xp.tanh(z, out=out)

    def backward(self, xp, grad, z, a, tmp):
        # σ'(z) = 1 - tanh(z)^2
        xp.multiply(a, a, out=tmp)
        xp.subtract(1.0, tmp, out=tmp)
        grad *= tmp
        return grad


class Relu:
    """σ(z) = max(z, 0); σ'(0) is taken as 0."""

    name = "relu"

    def forward(self, xp, z, out):
        return xp.maximum(z, 0.0, out=out)

    def backward(self, xp, grad, z, a, tmp):
        xp.greater(z, 0.0, out=tmp)
        grad *= tmp
        return grad


class Identity:
    """σ(z) = z (a linear layer)."""

    name = "identity"

    def forward(self, xp, z, out):
        if out is not z:
            out[...] = z
        return out

    def backward(self, xp, grad, z, a, tmp):
        return grad


class Softmax:
    """σ(z)_k = e^{z_k} / Σ_j e^{z_j} over each column; output layer only."""

    name = "softmax"

    def forward(self, xp, z, out):
        top = z.max(axis=0, keepdims=True)  # subtract the column max: no overflow
        xp.subtract(z, top, out=out)
        xp.exp(out, out=out)
        out /= out.sum(axis=0, keepdims=True)
        return out

    def backward(self, xp, grad, z, a, tmp):
        # Jacobian-vector product: ∂C/∂z = a ⊙ (g - Σ_k a_k g_k), g = ∂C/∂a
        xp.multiply(a, grad, out=tmp)
        grad -= tmp.sum(axis=0, keepdims=True)
        grad *= a
        return grad


HIDDEN = {cls.name: cls for cls in (Sigmoid, Tanh, Relu, Identity)}
OUTPUT = dict(HIDDEN, softmax=Softmax)


def get_activation(name, output=False):
    """Return the activation called ``name``; softmax is allowed for the output layer only."""
    choices = OUTPUT if output else HIDDEN
    if not isinstance(name, str) or name not in choices:
        where = "output" if output else "hidden"
        hint = " (softmax is for the output layer only)" if name == "softmax" else ""
        raise ConfigError(
            f"{where} activation must be one of {', '.join(choices)}; got {name!r}{hint}"
        )
    return choices[name]()
