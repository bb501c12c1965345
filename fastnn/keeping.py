"""Keeping a run whatever stops it: the emergency checkpoint after a stop signal or a failed ``--out``,
the sentence that says where it went and how to go on, and the run's own inputs it must not write over.

Nothing here prints: the fastnn command turns the sentences into its one line.
"""

import contextlib
import tempfile
import time
from pathlib import Path

from . import interrupts
from .checkpoint import CHECKPOINT_FILE, save_checkpoint
from .errors import ConfigError, FastnnError
from .files import same_file


def new_folder(parent="."):
    """Make and return a fresh ``fastnn-checkpoint-DATE-TIME`` folder in ``parent`` (never one that exists)."""
    base = Path(parent) / f"fastnn-checkpoint-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 1000):
        folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"{base}-*: too many")


def keep(net, state, folder):
    """Save the run in ``folder``; if that fails (or ``folder`` is None), in a new folder here, else in
    a new one in the temporary folder.

    Stop signals wait until the save is done.  Returns (the folder, the names of the signals that came
    during the save); raises the first place's error when every place failed, and removes the folders
    made for it.
    """
    places = [(folder, False)] if folder is not None else []
    places += [(".", True), (tempfile.gettempdir(), True)]
    error, late = None, []
    for place, new in places:
        made = failed = None
        try:
            with interrupts.deferred():
                try:
                    made = new_folder(place) if new else None
                    save_checkpoint(made or place, net, state)
                except (FastnnError, OSError) as e:
                    failed = e
        except KeyboardInterrupt as e:  # raised when the deferred block ended: the save is whole or undone
            late.append(interrupts.Interrupted(interrupts.signal_of(e)).name)
        if failed is None:
            return Path(made or place), late
        error = error or failed
        if made is not None:
            with contextlib.suppress(OSError):
                made.rmdir()  # only when empty: never a folder of the user's
    error.late = late
    raise error


def after_stop(net, state, folder, epochs):
    """Save the run after a stop signal; return the sentence that says what was saved and how to go on."""
    if not state.started:
        return ""
    try:
        where, late = keep(net, state, folder)
    except (FastnnError, OSError) as e:
        again = f"; a second {e.late[0]} came meanwhile" if getattr(e, "late", None) else ""
        return f"could not save the run after epoch {state.epoch} of {epochs}: {_reason(e)}; nothing was saved{again}"
    again = f" (a second {late[0]} came meanwhile: the save was let finish)" if late else ""
    return (f"saved the run as it stood after epoch {state.epoch} of {epochs} to {where / CHECKPOINT_FILE}{again}; "
            f"to continue, run the same command with --resume {where}")


def _reason(e):
    return str(e) if isinstance(e, FastnnError) else (getattr(e, "strerror", None) or str(e))


def after_failed_write(net, state, folder, error, then):
    """A write of the run failed with ``error`` (--out, or the checkpoint in ``folder``): keep the run as a
    checkpoint in ``folder`` or elsewhere; return the sentence (``then``: what --resume will do)."""
    try:
        where, _ = keep(net, state, folder)
    except (FastnnError, OSError) as e:
        return f"{error}; the run could not be kept as a checkpoint either ({_reason(e)})"
    return (f"{error}; the run as it stood after epoch {state.epoch} is kept in {where / CHECKPOINT_FILE}: "
            f"to {then}, run the same command with --resume {where}")


def refuse_own_inputs(out, inputs):
    """ConfigError when ``out`` is one of the run's inputs (``inputs``: {file path: what it is})."""
    for path, what in inputs.items():
        if path is not None and same_file(out, path):
            raise ConfigError(f"--out {out} is {what}; writing the model there would overwrite it: "
                              f"choose another file name")
