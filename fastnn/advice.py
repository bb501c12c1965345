"""Is a run learning?  Looked at once, after its first epoch; a hint, not an error.

Two signs that a run will not learn, each answered with one concrete change to try:
  at chance   the accuracy after epoch 1 is no better than always answering the most common class
              (on the validation set, else on a sample of the training set);
  exploding   the epoch's loss is over EXPLODE times the loss of the untrained network (still finite:
              a non-finite loss is a DivergenceError).
"""

from . import defaults

EXPLODE = 1000.0
SAMPLE = 1000  # training rows measured before and after epoch 1 when there is no validation set
MARGIN = 0.01
GOOD = (("softmax", "log-likelihood"), ("sigmoid", "cross-entropy"), ("sigmoid", "quadratic"))  # outputs that learn  # accuracy this close to the most common class's share counts as chance


def names(net):
    """(hidden activation, output activation, cost) of ``net``."""
    return net.activations[0].name, net.activations[-1].name, net.cost.name


def suggestion(net, lr):
    """One concrete change that makes this network train: the defaults for its hidden activation, or another η."""
    act, out, cost = names(net)
    want_out = defaults.output(act)
    want_cost = defaults.cost(want_out)
    want_lr = defaults.learning_rate(act, out, cost)
    if (out, cost) not in GOOD and (out, cost) != (want_out, want_cost):
        want_lr = defaults.learning_rate(act, want_out, want_cost)
        return (f"try output {want_out} with cost {want_cost} and learning rate {want_lr:g}, the defaults for "
                f"hidden {act} (--output {want_out} --cost {want_cost} --lr {want_lr:g})")
    if lr > want_lr:
        return f"try the default learning rate for this network, {want_lr:g} (--lr {want_lr:g})"
    if lr < want_lr:
        return f"try a larger learning rate, such as the default {want_lr:g} (--lr {want_lr:g})"
    return f"try a smaller learning rate, such as {lr / 10:g} (--lr {lr / 10:g}), or another init (--init)"


def majority_share(xp, labels):
    """The share of the most common class in ``labels`` (a device array of ints)."""
    return float(xp.bincount(labels).max()) / labels.shape[0]


def check_first_epoch(net, lr, loss_before, loss, accuracy, chance):
    """The warning for a run that is not learning after epoch 1, or None when it looks fine."""
    if loss_before > 0 and loss > EXPLODE * loss_before:
        return (f"the loss grew from {loss_before:.4g} before training to {loss:.4g} in epoch 1 "
                f"(over {EXPLODE:g} times): this run is not learning; {suggestion(net, lr)}")
    if accuracy <= chance + MARGIN:
        return (f"after epoch 1 the accuracy is {accuracy:.4f}, no better than always answering the most common "
                f"class ({chance:.4f}): this run is not learning; {suggestion(net, lr)}")
    return None
