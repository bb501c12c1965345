"""Defaults that fit each other: the output layer, cost and learning rate chosen from the hidden activation.

    hidden sigmoid            sigmoid output, quadratic cost, lr 3.0   (the textbook's chapter 1 run)
    hidden tanh, relu, identity  softmax output, log-likelihood cost, lr 0.05
    one output unit           sigmoid output, cross-entropy cost (binary: 0/1 labels), whatever the hidden
                              activation; a softmax over one unit is always 1 and is refused (see ``one_unit``);
                              regression: give output identity (cost quadratic) and targets of shape (n,)

A choice the user makes explicitly is kept; only what is left unset is filled in: the output
from the hidden activation, the cost from the output (softmax: log-likelihood, else quadratic),
the learning rate from the hidden activation: 3.0 for the textbook's sigmoid/sigmoid/quadratic
run, 0.5 for its other sigmoid runs (the textbook's chapter 3 value), 0.05 after tanh, relu or
identity whatever the output.  Measured on Fashion-MNIST, 784-100-10, batch 10, seed 0, 2 epochs,
test accuracy:
    η 0.05  relu/softmax 0.840, tanh/softmax 0.830, identity/softmax 0.793, relu/sigmoid/cross-entropy
            0.842, relu/sigmoid/quadratic 0.835, tanh/sigmoid/cross-entropy 0.836, tanh/sigmoid/quadratic
            0.830, identity/sigmoid/quadratic 0.823, identity/sigmoid/cross-entropy 0.785
    η 0.1   relu/softmax 0.827, tanh/softmax 0.817, identity/softmax 0.764, relu/sigmoid/cross-entropy 0.840
    η 0.3   relu/softmax 0.782, tanh/softmax 0.554
    η 0.5   relu/sigmoid/cross-entropy 0.370, tanh/sigmoid/cross-entropy 0.533 (hence 0.05 after them);
            sigmoid/sigmoid/cross-entropy 0.834, sigmoid/softmax 0.829
    η 3.0   the textbook's sigmoid/sigmoid/quadratic 0.841
Weights start per ``init``:
"auto" gives the layers that feed a relu He's N(0, 2/n_in) weights and zero biases, every other
layer the textbook's N(0, 1/n_in) weights and N(0, 1) biases; "he" and "textbook" apply one rule
to every layer.
"""

from .errors import ConfigError

INITS = ("auto", "he", "textbook")
TEXTBOOK = ("sigmoid", "sigmoid", "quadratic")


def output(activation, output=None, n_out=None):
    """The output activation: ``output`` when given, else sigmoid after sigmoid or for one output unit
    (``n_out`` 1), and softmax otherwise."""
    if output is not None:
        return output
    return "sigmoid" if activation == "sigmoid" or n_out == 1 else "softmax"


def cost(output, cost=None, n_out=None):
    """The cost: ``cost`` when given, else log-likelihood for a softmax output, cross-entropy for one
    sigmoid unit (binary classification) and quadratic otherwise."""
    if cost is not None:
        return cost
    if output == "softmax":
        return "log-likelihood"
    return "cross-entropy" if output == "sigmoid" and n_out == 1 else "quadratic"


def one_unit(output, n_out):
    """Refuse a softmax over one output unit: its output is always 1, its loss 0, and nothing learns."""
    if output == "softmax" and n_out == 1:
        raise ConfigError("a softmax over one output unit always outputs 1: its loss is 0 and nothing learns; for "
                          "0/1 labels use output sigmoid (the default for one unit), for regression output identity")


def is_regression(output, n_out):
    """True for a regression network: one output unit that is not a sigmoid (identity, tanh, relu).  It takes
    targets of shape (n,) and reports loss, RMSE and R² instead of accuracy; every other network classifies."""
    return n_out == 1 and output not in ("sigmoid", "softmax")


def learning_rate(activation, output, cost):
    """The learning rate η that trains well for this hidden activation, output and cost."""
    if (activation, output, cost) == TEXTBOOK:
        return 3.0
    return 0.5 if activation == "sigmoid" else 0.05


def init(name):
    """Check the name of a weight initialisation: auto, he or textbook."""
    name = "auto" if name is None else name
    if name not in INITS:
        raise ConfigError(f"init must be one of {', '.join(INITS)}; got {name!r}")
    return name


def he_layer(init, activation):
    """True when a layer with ``activation`` starts with He's N(0, 2/n_in) weights and zero biases."""
    return init == "he" or (init == "auto" and activation == "relu")
