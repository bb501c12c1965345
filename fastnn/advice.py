"""Is a run learning?  Looked at once, after its first epoch; a hint, not an error.

Two signs that a run will not learn, each answered with the real cause when it is plain (too few updates
per epoch, raw 0-255 inputs) and otherwise one concrete change to try (output, cost, η):
  at chance   the accuracy after epoch 1 is no better than always answering the most common class
              (on the validation set, else on a sample of the training set);
  exploding   the epoch's loss is over EXPLODE times the loss of the untrained network (still finite:
              a non-finite loss is a DivergenceError).
A run already at accuracy 1.0 is learning, even on one-class data.  A softmax over one unit, which
cannot learn, is refused when the network is made (``fastnn.defaults.one_unit``).
"""

from . import defaults

EXPLODE = 1000.0
SAMPLE = 1000  # training rows measured before and after epoch 1 when there is no validation set
MARGIN = 0.01  # accuracy this close to the most common class's share counts as chance
GOOD = (("softmax", "log-likelihood"), ("sigmoid", "cross-entropy"), ("sigmoid", "quadratic"))  # outputs that learn
FEW_UPDATES = 10  # fewer SGD updates than this in an epoch cannot show learning: the batch is the cause
RAW_PIXELS = (25, 255)  # a training range whose top is in here, with scale 1, is raw 0-255 pixels


def names(net):
    """(hidden activation, output activation, cost) of ``net``."""
    return net.activations[0].name, net.activations[-1].name, net.cost.name


def suggestion(net, lr):
    """One concrete change that makes this network train: the defaults for its hidden activation, or another η."""
    act, out, cost = names(net)
    want_out = defaults.output(act, n_out=net.sizes[-1])
    want_cost = defaults.cost(want_out, n_out=net.sizes[-1])
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


def cause(net, updates):
    """The real cause of a run that does not learn, when one is plain, else None.

    ``updates``: the SGD updates made per epoch (n / batch_size, rounded up).
    """
    if updates < FEW_UPDATES:
        return (f"epoch 1 made only {updates} update{'s' if updates != 1 else ''} of the weights (the batch size is "
                f"close to the training set's size): try a smaller batch size, such as 10 to 100 (--batch-size)")
    scale, span = getattr(net, "input_scale", None), getattr(net, "input_range", None)
    if span is not None and scale == 1 and RAW_PIXELS[0] < span[1] <= RAW_PIXELS[1]:
        return (f"the training inputs reach {span[1]:.4g}: raw 0-255 pixels? divide them by 255, or pass them as "
                f"integers (uint8), which fit scales to [0, 1]")
    return None


def check_first_epoch(net, lr, loss_before, loss, accuracy, chance, updates=FEW_UPDATES):
    """The warning for a run that is not learning after epoch 1, or None when it looks fine.

    ``accuracy`` and ``chance`` are None for regression, which only the exploding loss can flag.
    """
    if accuracy is not None and accuracy >= 1.0:
        return None  # already every answer right: nothing to fix, whatever chance is
    if loss_before > 0 and loss > EXPLODE * loss_before:
        return (f"the loss grew from {loss_before:.4g} before training to {loss:.4g} in epoch 1 "
                f"(over {EXPLODE:g} times): this run is not learning; {cause(net, updates) or suggestion(net, lr)}")
    if accuracy is not None and accuracy <= chance + MARGIN:
        return (f"after epoch 1 the accuracy is {accuracy:.4f}, no better than always answering the most common "
                f"class ({chance:.4f}): this run is not learning; {cause(net, updates) or suggestion(net, lr)}")
    return None
