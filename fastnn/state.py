"""TrainState: where training stands after its last completed epoch, enough to continue exactly.

``fit`` moves a state forward once per completed epoch, in one assignment of an immutable
snapshot, so whatever stops training (Ctrl-C, divergence, running out of memory) the state
still describes a whole epoch: the weights, the momentum buffer and the random generator as
that epoch left them, and the history so far.  ``restore`` puts them back into the network;
``fastnn.save_checkpoint`` writes them to disk and ``fastnn.load_checkpoint`` reads them back.
"""

import hashlib
from collections import namedtuple

import numpy as np

from .errors import ConfigError

# epoch: completed epochs; params, velocity: device copies (velocity None without momentum);
# rng: the network's bit_generator.state; records: one dict per completed epoch.
_Snapshot = namedtuple("_Snapshot", "epoch params velocity rng records")

SETTINGS = ("batch_size", "lr", "momentum", "l2", "shuffle", "n_train")


def fingerprint(X, y):
    """A short hash of a training set's shapes, types and bytes: a resumed run must train on the same one."""
    digest = hashlib.blake2b(digest_size=16)
    for a in (X, y):
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(memoryview(a).cast("B"))
    return digest.hexdigest()


class TrainState:
    """The state of a training run after ``epoch`` completed epochs (0: not started).

    Pass one to ``Network.fit(..., state=s)`` to see it advance (and to have it after an
    exception), or one from ``fastnn.load_checkpoint`` to continue a run with epoch
    ``s.epoch + 1``.  ``settings`` holds the hyperparameters the run was started with; a
    resumed run must use the same ones (and a training set of the same size) to continue it.
    To change one on purpose (say a smaller lr after a divergence), edit ``s.settings`` first:
    the run then goes on from the same weights, but is no longer the run a straight one makes.
    """

    def __init__(self):
        self._at = None
        self.settings = None
        self.fingerprint = None  # of the training set (see fingerprint()), kept in checkpoints when known

    @classmethod
    def from_parts(cls, epoch, params, velocity, rng, records, settings):
        """A state with the given snapshot (used when reading a checkpoint)."""
        state = cls()
        state._at = _Snapshot(epoch, params, velocity, rng, tuple(records))
        state.settings = dict(settings)
        return state

    def __repr__(self):
        return f"TrainState(epoch={self.epoch}, settings={self.settings})"

    @property
    def started(self):
        return self._at is not None

    @property
    def epoch(self):
        """Completed epochs."""
        return self._at.epoch if self._at else 0

    @property
    def params(self):
        """The flat parameter buffer after the last completed epoch (a device array)."""
        return self._at.params

    @property
    def velocity(self):
        """The momentum buffer after the last completed epoch (None without momentum)."""
        return self._at.velocity

    @property
    def rng(self):
        """The network's ``rng.bit_generator.state`` after the last completed epoch."""
        return self._at.rng

    @property
    def history(self):
        """A History of the completed epochs."""
        from .train import History  # train imports this module

        return History(self._at.records if self._at else ())

    def begin(self, net, settings):
        """Start a run of ``net`` with ``settings``, or check that they continue this one and restore it."""
        if self._at is None:
            self.settings = dict(settings)
            velocity = net.xp.zeros_like(net.params) if settings["momentum"] else None
            self._take(net, 0, velocity, ())
            return
        params = self._at.params
        if params.shape != net.params.shape or params.dtype != net.params.dtype:
            raise ConfigError(f"this training state belongs to a network of {params.size} {params.dtype} "
                              f"parameters; got one of {net.params.size} {net.params.dtype}")
        changed = [f"{k} {settings[k]!r} (the run was started with {self.settings.get(k)!r})"
                   for k in SETTINGS if settings[k] != self.settings.get(k)]
        if changed:
            raise ConfigError("cannot continue the training run with different settings: " + ", ".join(changed))
        self.restore(net)

    def working_velocity(self, net):
        """A copy of the momentum buffer for the trainer to update (None without momentum)."""
        if not self.settings["momentum"]:
            return None
        if self._at.velocity is None:  # momentum switched on by editing settings
            return net.xp.zeros_like(net.params)
        return self._at.velocity.copy()

    def advance(self, net, velocity, record):
        """Record a completed epoch: copies of the weights, momentum and generator state, one assignment."""
        self._take(net, self._at.epoch + 1, velocity, self._at.records + (dict(record),))

    def _take(self, net, epoch, velocity, records):
        self._at = _Snapshot(epoch, net.params.copy(), None if velocity is None else velocity.copy(),
                             net.rng.bit_generator.state, records)

    def follow(self, other):
        """Take the snapshot and settings of ``other``, a copy of this run that went on elsewhere (a worker)."""
        self._at, self.settings = other._at, dict(other.settings)

    def restore(self, net):
        """Put the weights and the generator state of the last completed epoch back into ``net``."""
        if self._at is not None:
            net.params[...] = self._at.params
            net.rng.bit_generator.state = self._at.rng
