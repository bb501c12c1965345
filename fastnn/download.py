"""Download files from mirrors, checked against published md5 sums, into a cache, atomically.

Files are fetched into a temporary folder beside the destination and moved into place only
when every one of them has arrived and matched its checksum; a failure leaves nothing behind.
"""

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .errors import DownloadError

TIMEOUT = 30  # seconds without data before a mirror is given up
BLOCK = 1 << 16


def _fetch_one(url, target, md5, progress):
    """Stream ``url`` into ``target``; raise OSError or ValueError on failure or bad checksum."""
    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response, open(target, "wb") as out:
        size = response.headers.get("Content-Length")
        bar = tqdm(total=int(size) if size else None, unit="B", unit_scale=True, leave=False,
                   desc=target.name, disable=None if progress is None else not progress)
        with bar:
            while block := response.read(BLOCK):
                out.write(block)
                digest.update(block)
                bar.update(len(block))
    if digest.hexdigest() != md5:
        raise ValueError(f"checksum mismatch (md5 {digest.hexdigest()}, expected {md5})")


def _describe(error):
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}"
    if isinstance(error, urllib.error.URLError):
        error = error.reason
    return getattr(error, "strerror", None) or str(error)


def _summary(failures):
    """One phrase for {url: reason}: the reason once when every mirror failed alike."""
    reasons = set(failures.values())
    if len(reasons) == 1:
        return f"from {len(failures)} mirror(s): {reasons.pop()}"
    return "; ".join(f"{url}: {why}" for url, why in failures.items())


def fetch(files, mirrors, dest, progress=None):
    """Download ``files`` ({name: md5}) from the first mirror that serves each into folder ``dest``.

    Raises DownloadError naming each mirror's failure when a file cannot be had from any.
    """
    dest = Path(dest)
    made = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.download-", dir=dest.parent))
    done = False
    try:
        for name, md5 in files.items():
            failures = {}
            for mirror in mirrors:
                url = mirror.rstrip("/") + "/" + name
                try:
                    _fetch_one(url, staging / name, md5, progress)
                    break
                except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors
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
