"""One policy for the signals that ask a run to stop: SIGINT (Ctrl-C), SIGTERM (kill, Kubernetes, SLURM,
systemd) and SIGHUP (a closed terminal or ssh session).

``installed()`` (the fastnn command runs in it) makes the first of them raise ``Interrupted``, a
KeyboardInterrupt that remembers the signal (later ones wait until the run is saved), so whatever ``fit`` does when it is interrupted
(put back the last completed epoch) happens for all three alike; the command then saves the
run and exits 128 + the signal's number (130, 143, 129).  A signal that is ignored when
``installed`` starts (``nohup``, a background job) stays ignored.

The handler never raises inside code that would swallow or half-finish the exception: numba and
llvmlite (whose ctypes callbacks print an exception and carry on), ctypes, and an import in
progress.  A signal that lands there is recorded and delivered again every ``RETRY_SECONDS`` until
it lands at a safe point, where it raises as usual; so no stop signal is ever lost.

``starting()`` covers the fastnn command's start-up, before ``installed()``: from the first line of
``import fastnn`` a stop signal ends the process at once with one line and 128 + its number
(there is nothing to save yet), never a traceback.  A library user's process is left alone.

``deferred()`` holds these signals back while a file is written: a signal that arrives inside it
is acted on when the block ends, so a write is never cut half-way.  It works under any handler
(Python's own Ctrl-C, the default SIGTERM that ends the process, ``installed``'s): the signal is
raised again once the previous handler is back.  Outside the main thread it does nothing
(Python lets only the main thread handle signals).
"""

import contextlib
import os
import signal
import sys
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


RETRY_SECONDS = 0.05  # how soon a signal that landed in unsafe code is delivered again
UNSAFE = ("/numba/", "/llvmlite/", "/ctypes/", "<frozen importlib")  # code that must not see KeyboardInterrupt
_active = []  # non-empty while installed() or deferred() has _raise in place: a retry may be sent


def unsafe(frame):
    """Whether ``frame`` or a caller of it runs code that a KeyboardInterrupt would break (see UNSAFE)."""
    while frame is not None:
        name = frame.f_code.co_filename.replace("\\", "/")
        if any(part in name for part in UNSAFE):
            return True
        frame = frame.f_back
    return False


_waiting = []  # the signal that landed in unsafe code and waits for a safe point (installed() acts on it at its end)
_retrying = []  # non-empty while a retry is scheduled: one at a time


def _retry(signum):
    """Deliver ``signum`` to the main thread again, if a handler of ours is still there to take it."""
    _retrying.clear()
    if _active and _waiting and signal.getsignal(signum) is _raise:
        signal.pthread_kill(threading.main_thread().ident, signum)


def _raise(signum, frame):
    if _depth or _stopping:  # in a write, or already stopping: a second signal must not cut the save
        _pending.append(signum)
        return
    if unsafe(frame):  # numba, llvmlite, ctypes or an import: act at the next safe point instead
        _waiting[:] = _waiting[:1] or [signum]
        if not _retrying:
            _retrying.append(True)
            timer = threading.Timer(RETRY_SECONDS, _retry, (_waiting[0],))
            timer.daemon = True
            timer.start()
        return
    signum = (_waiting or [signum])[0]
    _waiting.clear()
    _stopping.append(signum)
    raise Interrupted(signum)


def command_process():
    """Whether this process is the fastnn command (``fastnn ...`` or ``python -m fastnn ...``)."""
    argv = getattr(sys, "orig_argv", [])
    module = argv[argv.index("-m") + 1:argv.index("-m") + 2] if "-m" in argv else []
    return module == ["fastnn"] or os.path.basename(sys.argv[0] if sys.argv else "") == "fastnn"


def _end_now(signum, frame):
    os.write(2, f"fastnn: interrupted ({signal.Signals(signum).name}) while starting; nothing was done\n".encode())
    os._exit(128 + signum)


def starting():
    """In the fastnn command only: a stop signal before ``installed()`` ends the process with one line."""
    if not command_process() or threading.current_thread() is not threading.main_thread():
        return
    for s in STOPPING:
        handler = signal.getsignal(s)
        if handler is not signal.SIG_IGN and handler is not None:
            signal.signal(s, _end_now)


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
    _active.append(True)
    try:
        yield
    finally:
        _active.pop()
        for s, handler in previous.items():
            if handler is not signal.SIG_IGN and handler is not None:
                signal.signal(s, handler if restore else signal.SIG_IGN)
        waiting = [] if _stopping else _waiting[:1]  # a signal still waiting for a safe point: this is one
        _stopping.clear()
        _pending.clear()
        _waiting.clear()
    if waiting:
        raise Interrupted(waiting[0])


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


starting()  # on import, which 'import fastnn' does first: see command_process
