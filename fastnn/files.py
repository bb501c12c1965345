"""Crash-consistent files: atomic writes, recognisable temporary files, a lock per checkpoint folder.

A file is written under a temporary name beside it (``.fastnn-tmp-<pid>-<host>-<random>-<name>``),
fsynced, renamed over the target, and the folder is fsynced so that the rename survives a power
loss.  Stop signals are held back while it is written (``interrupts.deferred``), so a Ctrl-C
lets the write finish; an error removes the temporary file.  A process killed outright
(``kill -9``, a power cut) leaves its temporary file behind: ``remove_stale`` removes those whose
process is gone, and fastnn calls it for every folder it writes in.

``FolderLock`` is an advisory lock (``fcntl.flock`` on ``.fastnn-lock`` in the folder) that one
training run holds on its checkpoint folder, so that a second run on the same folder is refused
instead of overwriting the first one's checkpoints.  It is removed again when released.
"""

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import socket
import time
from pathlib import Path

from . import interrupts
from .errors import ConfigError

TMP_PREFIX = ".fastnn-tmp-"
LOCK_FILE = ".fastnn-lock"
STALE_SECONDS = 24 * 3600  # a temporary file this old is stale whoever made it (another machine's included)
HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TMP_NAME = re.compile(re.escape(TMP_PREFIX) + r"(\d+)-([0-9a-f]{8})-[0-9a-f]+-")
_LEGACY_TMP = re.compile(r"\..+\.npz\.[A-Za-z0-9_]{8}\.tmp")  # fastnn 0.1's mkstemp names


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_path(path):
    """A fresh temporary name beside ``path`` that says who made it."""
    path = Path(path)
    return path.parent / f"{TMP_PREFIX}{os.getpid()}-{HOST}-{secrets.token_hex(4)}-{path.name}"


def fsync_folder(folder):
    """Make a rename or a new entry in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the rename itself is done
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, rename it to ``path``, fsync the folder.

    Stop signals wait until the write is done (or undone); any error removes the temporary file.
    """
    path = Path(path)
    with interrupts.deferred():
        tmp = temp_path(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_folder(path.parent)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process
    return True


def remove_stale(folder):
    """Remove the temporary files that killed fastnn processes left in ``folder``; return their names.

    A file is stale when the process named in it is gone (on this machine) or it is a day old.
    fastnn 0.1's temporary names (``.NAME.npz.XXXXXXXX.tmp``) count when they are an hour old.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        found = _TMP_NAME.match(entry.name)
        if not found and not _LEGACY_TMP.fullmatch(entry.name):
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            if not entry.is_file(follow_symlinks=False):
                continue
        except OSError:
            continue
        if found:
            pid, host = int(found.group(1)), found.group(2)
            stale = age > STALE_SECONDS or (host == HOST and pid != os.getpid() and not _alive(pid))
        else:
            stale = age > 3600
        if stale:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(entry.name)
    return removed


def same_file(a, b):
    """Whether paths ``a`` and ``b`` name the same file (existing or not)."""
    a, b = Path(a), Path(b)
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


_HELD = {}  # resolved folder -> [fd, count]: the locks this process holds


class FolderLock:
    """An exclusive advisory lock on ``folder`` for one training run; re-entrant within a process.

    ``acquire`` raises ConfigError when another process holds it.  ``renew`` takes it again on a
    folder that was deleted and made anew while the run went on.
    """

    def __init__(self, folder, what="checkpoint folder"):
        self.folder = Path(folder)
        self.what = what
        self.key = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def acquire(self):
        self.key = str(self.folder.resolve())
        held = _HELD.get(self.key)
        if held is not None:
            held[1] += 1
            return
        _HELD[self.key] = [self._lock(), 1]
        remove_stale(self.folder)

    def renew(self):
        """Lock the folder again if it was replaced (its lock file is not the one this process holds)."""
        held = _HELD.get(self.key)
        lock = self.folder / LOCK_FILE
        if held is None or not self.folder.is_dir():
            return
        try:
            if os.stat(lock).st_ino == os.fstat(held[0]).st_ino:
                return
        except OSError:
            pass
        fd = self._lock()  # ConfigError when another run holds the new folder: the old lock stays open, closed once
        os.close(held[0])
        held[0] = fd

    def release(self):
        held = _HELD.get(self.key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del _HELD[self.key]
            with contextlib.suppress(OSError):
                if os.stat(self.folder / LOCK_FILE).st_ino == os.fstat(held[0]).st_ino:
                    os.unlink(self.folder / LOCK_FILE)  # before closing: no one else can hold it now
            os.close(held[0])

    def _lock(self):
        lock = self.folder / LOCK_FILE
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            except OSError as e:
                raise ConfigError(f"{self.what} {self.folder}: cannot lock it ({e.strerror or e})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                owner = _read_owner(fd)
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise ConfigError(f"{self.what} {self.folder} is in use by another fastnn run{owner}; "
                                      f"wait for it to end, or give this run a folder of its own") from None
                raise ConfigError(f"{self.what} {self.folder}: cannot lock it ({e.strerror or e})") from None
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except OSError:
                same = False
            if same:  # not a lock file its holder removed while this process opened it
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
                return fd
            os.close(fd)


def _read_owner(fd):
    try:
        words = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        return ""
    return f" (process {words[0]} on {words[1]})" if len(words) == 2 else ""
