"""One policy for the signals that ask a run to stop: SIGINT (Ctrl-C), SIGTERM (kill, Kubernetes, SLURM,
systemd) and SIGHUP (a closed terminal or ssh session).

``installed()`` (the fastnn command runs in it) makes each of them raise ``Interrupted``, a
KeyboardInterrupt that remembers the signal, so whatever ``fit`` does when it is interrupted
(put back the last completed epoch) happens for all three alike; the command then saves the
run and exits 128 + the signal's number (130, 143, 129).  A signal that is ignored when
``installed`` starts (``nohup``, a background job) stays ignored.

``deferred()`` holds these signals back while a file is written: a signal that arrives inside it
is acted on when the block ends, so a write is never cut half-way.  It works under any handler
(Python's own Ctrl-C, the default SIGTERM that ends the process, ``installed``'s): the signal is
raised again once the previous handler is back.  Outside the main thread it does nothing
(Python lets only the main thread handle signals).
"""

import contextlib
import signal
import threading

STOPPING = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; ``signum`` says which (``status`` is the exit status it calls for)."""

    def __init__(self, signum, message=""):
        super().__init__(message)
        self.signum = signum

    @property
    def name(self):
        return signal.Signals(self.signum).name

    @property
    def status(self):
        return 128 + self.signum


def signal_of(exc):
    """The signal number a KeyboardInterrupt stands for (SIGINT when it is Python's own)."""
    return getattr(exc, "signum", signal.SIGINT)


def _raise(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def installed():
    """Within the block, SIGINT, SIGTERM and SIGHUP raise Interrupted, except those ignored already."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in STOPPING}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN and handler is not None:
            signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, handler in previous.items():
            if handler is not signal.SIG_IGN and handler is not None:
                signal.signal(s, handler)


_depth = 0  # nested deferred() blocks: only the outermost installs and restores handlers
_pending = []


@contextlib.contextmanager
def deferred():
    """Hold SIGINT, SIGTERM and SIGHUP back for the block; act on them (in order) when it ends."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth:
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    previous = {s: signal.getsignal(s) for s in STOPPING}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN and handler is not None:  # None: set outside Python; leave it
            signal.signal(s, lambda signum, frame: _pending.append(signum))
    _depth = 1
    try:
        yield
    finally:
        _depth = 0
        for s, handler in previous.items():
            if handler is not signal.SIG_IGN and handler is not None:
                signal.signal(s, handler)
        held, _pending[:] = list(_pending), []
        for s in dict.fromkeys(held):  # each signal once, in the order they came
            signal.raise_signal(s)  # the restored handler acts on it now


def held():
    """The signals waiting in the current deferred() block (for messages)."""
    return list(_pending)
