"""Downloads from mirrors that misbehave, on 127.0.0.1: each bad reply moves on to the next mirror.

A mirror may answer 500, something that is not HTTP, a body cut short, the wrong bytes, a
trickle of one byte at a time, headers that never end, or nothing at all.  Each file has a
deadline per mirror (short here), after which the mirror is given up, and a download killed
with SIGKILL leaves a staging folder that the next download removes.
"""

import hashlib
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time

import pytest

from fastnn import DownloadError, download

from .conftest import ROOT, fastnn

FILES = {"a.gz": os.urandom(3000), "b.gz": os.urandom(70000)}
MD5 = {name: hashlib.md5(body).hexdigest() for name, body in FILES.items()}
DEADLINE = 1.0  # seconds per file per mirror in these tests
TICK = 0.2  # seconds between the bytes of a trickle


class Mirror:
    """A loopback HTTP mirror of FILES that behaves as ``mode`` says (see ``reply``)."""

    def __init__(self, mode):
        self.mode, self.stopping = mode, threading.Event()
        mirror = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                try:
                    mirror.reply(self.request)
                except OSError:  # the client gave up: that is the point of most modes
                    pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trickle(self, sock, data):
        for i in range(len(data)):
            if self.stopping.wait(TICK):
                return
            sock.sendall(data[i:i + 1])

    def reply(self, sock):
        request = b""
        while b"\r\n\r\n" not in request:
            block = sock.recv(4096)
            if not block:
                return
            request += block
        name = request.split(b" ")[1].decode().lstrip("/")
        body = FILES.get(name, b"x" * 5000)  # other names: bytes no checksum matches
        head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        if self.mode == "good":
            sock.sendall(head + body)
        elif self.mode == "500":
            sock.sendall(b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
        elif self.mode == "not-http":
            sock.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
        elif self.mode == "truncated":
            sock.sendall(head + body[:len(body) // 2])
        elif self.mode == "wrong-bytes":
            sock.sendall(head + bytes(len(body)))
        elif self.mode == "trickle":  # one byte every TICK seconds: the socket never times out
            sock.sendall(head)
            self.trickle(sock, body)
        elif self.mode == "slow-headers":
            self.trickle(sock, b"HTTP/1.0 200 OK\r\nX-Padding: " + b"x" * 10000)
        elif self.mode == "silent":
            self.stopping.wait(30)

    def close(self):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirrors():
    made = []

    def start(mode):
        made.append(Mirror(mode))
        return made[-1].url

    yield start
    for m in made:
        m.close()


REASONS = {
    "500": "HTTP 500",
    "not-http": r"not a valid HTTP reply \(BadStatusLine",
    "truncated": "the reply was cut short",
    "wrong-bytes": "checksum mismatch",
    "trickle": r"no whole file within the deadline of 1 s \(FASTNN_DOWNLOAD_DEADLINE\)",
    "slow-headers": r"no whole file within the deadline of 1 s",
    "silent": ".*(timed out|within the deadline)",
}


@pytest.mark.parametrize("mode", list(REASONS))
def test_a_bad_mirror_is_given_up_for_the_next(tmp_path, mirrors, mode):
    dest = tmp_path / "cache" / "d"
    start = time.monotonic()
    download.fetch(MD5, [mirrors(mode), mirrors("good")], dest, progress=False, deadline=DEADLINE)
    assert time.monotonic() - start < 30  # the deadline bounds every attempt (generous: a loaded machine)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == FILES
    assert sorted(p.name for p in dest.parent.iterdir()) == ["d"]  # no staging folder left


@pytest.mark.parametrize("mode", list(REASONS))
def test_only_bad_mirrors_fail_in_one_line_and_leave_nothing(tmp_path, mirrors, mode):
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=f"could not download a.gz from 1 mirror.s.: ({REASONS[mode]})") as caught:
        download.fetch(MD5, [mirrors(mode)], cache / "d", progress=False, deadline=DEADLINE)
    assert "\n" not in str(caught.value)
    assert not cache.exists()


def test_the_command_with_a_non_http_mirror_then_a_trickle(tmp_path, mirrors):
    """The whole path through a real process: $FASTNN_MIRROR, $FASTNN_DOWNLOAD_DEADLINE, one line, exit 1."""
    env = {"FASTNN_MIRROR": f"{mirrors('not-http')},{mirrors('trickle')}", "FASTNN_DOWNLOAD_DEADLINE": "1",
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "FASTNN_DATA": ""}
    run = fastnn("train", "--dataset", "mnist", "--epochs", "1", env=env, cwd=tmp_path, timeout=120)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(lines) == 1, run.stderr
    assert "not a valid HTTP reply" in lines[0] and "within the deadline of 1 s" in lines[0], lines[0]
    assert not (tmp_path / "cache").exists()


def test_a_bad_deadline_is_a_config_error(monkeypatch):
    monkeypatch.setenv("FASTNN_DOWNLOAD_DEADLINE", "soon")
    with pytest.raises(Exception, match="FASTNN_DOWNLOAD_DEADLINE must be a number of seconds > 0; got 'soon'"):
        download.deadline_seconds()


KILLED = """
import sys
from fastnn import download
download.fetch({md5!r}, [sys.argv[1]], sys.argv[2], progress=False, deadline=60)
"""


def test_a_killed_download_leaves_a_staging_folder_the_next_one_removes(tmp_path, mirrors):
    dest = tmp_path / "cache" / "d"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED.format(md5=MD5), mirrors("trickle"), str(dest)], env=env)
    try:
        for _ in range(300):
            staging = list(dest.parent.glob(".d.download-*")) if dest.parent.exists() else []
            if staging and any(p.iterdir() for p in staging):
                break
            time.sleep(0.1)
        else:
            pytest.fail("the download never started")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert staging[0].name.startswith(f".d.download-{proc.pid}-")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = dest.parent / f".d.download-{live.pid}-abcd"  # another download, still going: kept
        running.mkdir()
        download.fetch(MD5, [mirrors("good")], dest, progress=False, deadline=DEADLINE)
        assert sorted(p.name for p in dest.parent.iterdir()) == sorted(["d", running.name])
    finally:
        live.kill()
        live.wait()
    download.remove_stale(dest)  # its process has ended now
    assert sorted(p.name for p in dest.parent.iterdir()) == ["d"]
