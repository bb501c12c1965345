"""One policy for the signals that ask a run to stop: SIGINT (Ctrl-C), SIGTERM (kill, Kubernetes, SLURM,
systemd) and SIGHUP (a closed terminal or ssh session).

``installed()`` (the fastnn command runs in it) makes the first of them raise ``Interrupted``, a
KeyboardInterrupt that remembers the signal (later ones wait until the run is saved), so whatever ``fit`` does when it is interrupted
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


_depth = 0  # how many deferred() blocks the main thread is in
_pending = []  # the signals that came meanwhile
_stopping = []  # the signal that stopped the run (installed() only): later ones wait for the next write's end


def _raise(signum, frame):
    if _depth or _stopping:  # in a write, or already stopping: a second signal must not cut the save
        _pending.append(signum)
        return
    _stopping.append(signum)
    raise Interrupted(signum)


@contextlib.contextmanager
def installed(restore=True):
    """Within the block, SIGINT, SIGTERM and SIGHUP raise Interrupted, except those ignored already.

    After it they are handled as before, or, with ``restore`` False (a process that is about to say how
    its run ended and exit), ignored: a late signal changes nothing then, and must not cut the last line.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in STOPPING}
    _stopping.clear()
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN and handler is not None:
            signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, handler in previous.items():
            if handler is not signal.SIG_IGN and handler is not None:
                signal.signal(s, handler if restore else signal.SIG_IGN)
        _stopping.clear()
        _pending.clear()


@contextlib.contextmanager
def deferred():
    """Hold SIGINT, SIGTERM and SIGHUP back for the block; act on the first that came when it ends."""
    global _depth
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    swapped = {}  # another handler (Python's Ctrl-C, the default SIGTERM): ours for the block
    if _depth == 0:
        for s in STOPPING:
            handler = signal.getsignal(s)
            if handler is not _raise and handler is not signal.SIG_IGN and handler is not None:
                swapped[s] = handler
                signal.signal(s, _raise)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            for s, handler in swapped.items():
                signal.signal(s, handler)
            held, _pending[:] = _pending[:1], []
            for s in held:
                if s in swapped:
                    signal.raise_signal(s)  # the handler it had acts on it now
                else:
                    raise Interrupted(s)

