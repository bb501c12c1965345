"""Download files from mirrors, checked against published md5 sums, into a cache, atomically.

Files are fetched into a staging folder beside the destination and moved into place only
when every one of them has arrived and matched its checksum; a failure leaves nothing behind.
A staging folder is named ``.<dest>.download-<pid>-…``: one left by a download that was killed
(its process is gone, or it is older than a day) is removed by the next download.

Each file gets ``deadline`` seconds from each mirror, whatever the mirror does with them: a
mirror that trickles, stalls in its headers, answers with something that is not HTTP, an
HTTP error, a cut-short body or a wrong checksum is given up, and the next mirror is tried.
"""

import hashlib
import http.client
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .errors import ConfigError, DownloadError

TIMEOUT = 30  # seconds without data before a mirror is given up
DEADLINE = 600  # seconds for one file from one mirror, whatever its pace; $FASTNN_DOWNLOAD_DEADLINE overrides
MAX_BYTES = 1 << 30  # no dataset file is larger: a mirror that sends more is refused
STALE_SECONDS = 86400  # a staging folder older than this belongs to no running download
BLOCK = 1 << 16


def deadline_seconds():
    """The per-file deadline: $FASTNN_DOWNLOAD_DEADLINE seconds, default DEADLINE."""
    text = os.environ.get("FASTNN_DOWNLOAD_DEADLINE")
    if not text:
        return DEADLINE
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"FASTNN_DOWNLOAD_DEADLINE must be a number of seconds > 0; got {text!r}")
    return seconds


class _Attempt:
    """One file from one mirror: every socket it opens is shut down when its deadline passes."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.expired = False
        self._sockets = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()

    def _expire(self):
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def watch(self, sock):
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def open(self, url):
        """urlopen ``url`` with this attempt watching its connections."""
        attempt = self

        class HTTP(http.client.HTTPConnection):
            def connect(self):
                super().connect()
                attempt.watch(self.sock)

        class HTTPS(http.client.HTTPSConnection):
            def connect(self):
                super().connect()
                attempt.watch(self.sock)

        class HTTPHandler(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(HTTP, req)

        class HTTPSHandler(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(HTTPS, req, context=self._context)

        opener = urllib.request.OpenerDirector()  # HTTP and HTTPS only: an ftp:// or file:// URL would escape the deadline
        for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), HTTPHandler(), HTTPSHandler(),
                        urllib.request.HTTPDefaultErrorHandler(), _WebOnlyRedirects(),
                        urllib.request.HTTPErrorProcessor()):
            opener.add_handler(handler)
        return opener.open(url, timeout=min(TIMEOUT, self.seconds))


class _WebOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http:// and https:// only (a mirror that sends the download to ftp:// is given up)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl)).scheme.lower()
        if scheme not in ("http", "https"):
            raise urllib.error.HTTPError(req.full_url, code, f"a redirect to {scheme}:// (only HTTP and HTTPS are "
                                                             f"followed)", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _shut(sock):
    try:
        # The plain socket's shutdown, also for TLS (SSLSocket.shutdown would drop its TLS state under the
        # reading thread): it wakes a recv blocked in another thread.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _fetch_one(url, target, md5, progress, seconds):
    """Stream ``url`` into ``target`` within ``seconds``; raise OSError, ValueError or HTTPException on failure."""
    digest = hashlib.md5()
    with _Attempt(seconds) as attempt:
        try:
            with attempt.open(url) as response, open(target, "wb") as out:
                total = getattr(response, "length", None)  # Content-Length, when the mirror sent one
                bar = tqdm(total=total, unit="B", unit_scale=True, leave=False,
                           desc=target.name, disable=None if progress is None else not progress)
                got = 0
                with bar:
                    while block := response.read1(BLOCK):
                        got += len(block)
                        if got > MAX_BYTES:
                            raise ValueError(f"it sent more than {MAX_BYTES >> 20} MiB, more than any dataset file")
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
                        if attempt.expired:
                            break
                if total is not None and got < total and not attempt.expired:
                    raise ValueError(f"the reply was cut short ({got} of {total} bytes)")
        except (OSError, ValueError, http.client.HTTPException):
            if not attempt.expired:
                raise
        if attempt.expired:
            raise TimeoutError(f"no whole file within the deadline of {seconds:g} s (FASTNN_DOWNLOAD_DEADLINE)")
    if digest.hexdigest() != md5:
        raise ValueError(f"checksum mismatch (md5 {digest.hexdigest()}, expected {md5})")


def _describe(error):
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}" + (f", {error.msg}" if 300 <= error.code < 400 else "")
    if isinstance(error, urllib.error.URLError):
        error = error.reason
    if isinstance(error, http.client.IncompleteRead):
        return "the reply was cut short"
    if isinstance(error, http.client.HTTPException):
        return f"not a valid HTTP reply ({type(error).__name__}: {' '.join(str(error).split())[:80]})"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _summary(failures):
    """One phrase for {url: reason}: the reason once when every mirror failed alike."""
    reasons = set(failures.values())
    if len(reasons) == 1:
        return f"from {len(failures)} mirror(s): {reasons.pop()}"
    return "; ".join(f"{url}: {why}" for url, why in failures.items())


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's process
        return True
    return True


def remove_stale(dest):
    """Remove the staging folders of ``dest`` left by downloads that were killed."""
    dest = Path(dest)
    for folder in dest.parent.glob(".*.download-*"):  # any dataset's: a killed download of another one too
        pid = folder.name.rsplit(".download-", 1)[1].split("-")[0]
        try:
            old = time.time() - folder.lstat().st_mtime > STALE_SECONDS
        except OSError:
            continue
        if old or not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(folder, ignore_errors=True)


def fetch(files, mirrors, dest, progress=None, deadline=None):
    """Download ``files`` ({name: md5}) from the first mirror that serves each into folder ``dest``.

    Each file may take ``deadline`` seconds from each mirror (default: $FASTNN_DOWNLOAD_DEADLINE,
    else DEADLINE).  Raises DownloadError naming each mirror's failure when a file cannot be had
    from any.
    """
    seconds = deadline_seconds() if deadline is None else deadline
    dest = Path(dest)
    made = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(dest)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.download-{os.getpid()}-", dir=dest.parent))
    except OSError as e:  # an unwritable cache ($XDG_CACHE_HOME): say where, before any download
        raise DownloadError(f"cannot download into {dest.parent}: {e.strerror or e} (the cache folder: set "
                            f"XDG_CACHE_HOME or FASTNN_DATA to a writable folder, or give --data-dir)") from None
    done = False
    try:
        for name, md5 in files.items():
            failures = {}
            for mirror in mirrors:
                url = mirror.rstrip("/") + "/" + name
                try:
                    _fetch_one(url, staging / name, md5, progress, seconds)
                    break
                except (OSError, ValueError, http.client.HTTPException) as e:  # URLError and HTTPError are OSErrors
                    failures[url] = _describe(e)
            else:
                raise DownloadError(f"could not download {name} {_summary(failures) if failures else '(no mirrors)'}")
        dest.mkdir(exist_ok=True)
        for name in files:
            os.replace(staging / name, dest / name)
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made if not done else ():  # a failure leaves no folder it made
            try:
                folder.rmdir()
            except OSError:
                break
