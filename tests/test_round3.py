"""Issue 20's remaining items, one test each: CSV byte-order mark and numeric header (7), the folder lock of a
folder deleted and made anew (8), a redirect to ftp:// (10), empty inputs (18), junk library settings (19), a
huge L2 (22), predict blaming the right thing (23), any killed download's staging folder (24)."""

import os
import socketserver
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from fastnn import ConfigError, DownloadError, ModelFileError, Network, cli, download
from fastnn import predict as predict_module
from fastnn.files import LOCK_FILE, FolderLock

from .conftest import fastnn


def test_a_csv_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    """Item 7: a UTF-8 byte-order mark is not part of the first value (the row was dropped as a header)."""
    (tmp_path / "x.csv").write_bytes(b"\xef\xbb\xbf1,2,3,4\n5,6,7,8\n")
    assert predict_module.read_inputs(tmp_path / "x.csv").tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_a_numeric_header_of_column_numbers_is_a_header(tmp_path):
    """Item 7: pandas' to_csv(index=False) header 0,1,2,3 is not an example; a lone 0,1,2,3 row is data."""
    (tmp_path / "x.csv").write_text("0,1,2,3\n5,6,7,8\n9,9,9,9\n")
    assert predict_module.read_inputs(tmp_path / "x.csv").tolist() == [[5, 6, 7, 8], [9, 9, 9, 9]]
    (tmp_path / "y.csv").write_text("1,2,3,4\n5,6,7,8\n")
    assert len(predict_module.read_inputs(tmp_path / "y.csv")) == 2


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_a_folder_deleted_and_made_anew_by_another_run(tmp_path, tiny):
    """Item 8: the first run keeps its own lock (closed once) and writes nothing into the other run's folder."""
    folder = tmp_path / "ck"
    folder.mkdir()
    lock = FolderLock(folder)
    lock.acquire()
    os.unlink(folder / LOCK_FILE)
    os.rmdir(folder)
    folder.mkdir()  # another run's folder now, locked by it
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(folder / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "held\n"
        with pytest.raises(ConfigError, match="in use by another fastnn run"):
            lock.renew()
        from fastnn import train

        net = Network([4, 3], device="cpu", seed=0)
        with np.load(tiny) as f:
            from fastnn import TrainState

            state = TrainState()
            net.fit(f["x_train"], f["y_train"], epochs=1, batch_size=10, lr=0.1, state=state)
        with pytest.raises(ModelFileError, match="made anew"):
            train._save_checkpoint(lock, net, state)
        assert not (folder / "checkpoint.npz").exists()
    finally:
        other.kill()
        other.wait()
    lock.release()  # closes its file once: no EBADF


class Redirect:
    """An HTTP server that redirects every request to ftp:// on a port that accepts and never answers."""

    def __init__(self):
        self.silent = socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler)
        ftp = f"ftp://127.0.0.1:{self.silent.server_address[1]}/a.gz"

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                self.rfile.readline()
                self.wfile.write(f"HTTP/1.0 302 Found\r\nLocation: {ftp}\r\nContent-Length: 0\r\n\r\n".encode())

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.silent.server_close()


def test_a_redirect_to_ftp_is_given_up_within_the_deadline(tmp_path):
    """Item 10: the deadline holds whatever the mirror redirects to."""
    mirror = Redirect()
    try:
        start = time.monotonic()
        with pytest.raises(DownloadError, match=r"HTTP 302, a redirect to ftp://"):
            download.fetch({"a.gz": "0" * 32}, [mirror.url], tmp_path / "cache" / "d", progress=False, deadline=2)
        assert time.monotonic() - start < 30
    finally:
        mirror.close()
    assert not (tmp_path / "cache").exists()


def test_a_killed_download_of_another_dataset_is_cleaned_up(tmp_path):
    """Item 24: a staging folder left by a killed download of any dataset goes at the next download."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (tmp_path / f".mnist.download-{dead}-abcd").mkdir(parents=True)
    (tmp_path / f".mnist.download-{dead}-abcd" / "part").write_bytes(b"x")
    with pytest.raises(DownloadError):
        download.fetch({"a.gz": "0" * 32}, [], tmp_path / "fashion-mnist", progress=False, deadline=1)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_cache_is_one_line(tmp_path):
    """Item 19: XDG_CACHE_HOME that cannot be written: a DownloadError naming it, not a PermissionError."""
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    if os.access(tmp_path / "ro", os.W_OK):
        pytest.skip("running as a user who may write anywhere (root)")
    with pytest.raises(DownloadError, match="XDG_CACHE_HOME"):
        download.fetch({"a.gz": "0" * 32}, ["http://127.0.0.1:9/"], tmp_path / "ro" / "c" / "d", progress=False)


def test_an_unwritable_cache_is_one_line_even_as_root(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(download.Path, "mkdir", refuse)
    with pytest.raises(DownloadError, match="cannot download into .*Permission denied.*XDG_CACHE_HOME"):
        download.fetch({"a.gz": "0" * 32}, ["http://127.0.0.1:9/"], tmp_path / "c" / "d", progress=False)


@pytest.fixture
def wide(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.random((300, 784), dtype=np.float32), rng.integers(0, 10, 300)
    np.savez(tmp_path / "w.npz", x_train=X[:200], y_train=y[:200], x_test=X[200:], y_test=y[200:])
    return tmp_path / "w.npz"


@pytest.mark.parametrize("env,extra", [({"NUMBA_NUM_THREADS": "0"}, []), ({"NUMBA_OPT": "junk"}, []),
                                       ({"MPLBACKEND": "junk"}, ["--plot", "p.png"])],
                         ids=["NUMBA_NUM_THREADS=0", "NUMBA_OPT=junk", "MPLBACKEND=junk"])
def test_junk_settings_of_libraries_do_not_stop_a_run(wide, env, extra):
    """Item 19: the textbook run (fused CPU engine, numba) trains; a library's complaint is at most one line each."""
    if extra:
        pytest.importorskip("matplotlib", reason="--plot draws with matplotlib (pip install '.[plot]')")
    done = fastnn("train", "--dataset", wide, "--layers", "784,30,10", "--epochs", 1, "--seed", 1, "--quiet",
                  "--out", "m.npz", *extra, env=env, cwd=wide.parent)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and all(line.startswith("fastnn: ") for line in done.stderr.splitlines())
    if extra:
        assert (wide.parent / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_a_huge_l2_is_refused_at_the_door(tiny):
    """Item 22: --l2 1e308 names l2 (not the learning rate), in one line, with no numpy overflow notes."""
    done = fastnn("train", "--dataset", tiny, "--layers", "4,3", "--epochs", 1, "--l2", "1e308")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "l2 1e+308 with lr" in done.stderr and "use an l2 below" in done.stderr
    with pytest.raises(ConfigError, match="weight decay factor"):
        Network([4, 3], device="cpu").fit(np.ones((10, 4)), np.zeros(10, int), epochs=1, batch_size=5, lr=1.0, l2=10)


@pytest.fixture
def model(tmp_path, tiny):
    assert cli.main(["train", "--dataset", str(tiny), "--layers", "4,3", "--epochs", "1", "--device", "cpu",
                     "--quiet", "--out", str(tmp_path / "m.npz")]) == 0
    return tmp_path / "m.npz"


def test_predict_blames_the_right_thing(tmp_path, model, capsys):
    """Items 18 and 23: 0 rows, a .npy that declares more rows than it holds, an empty np.savez()."""
    np.save(tmp_path / "empty.npy", np.zeros((0, 4)))
    np.savez(tmp_path / "none.npz")
    raw = (tmp_path / "empty.npy").read_bytes().replace(b"(0, 4)", b"(1000000000000, 4)")
    (tmp_path / "huge.npy").write_bytes(raw + bytes(200 - len(raw)))
    cases = {"empty.npy": r"holds no examples \(shape \(0, 4\)\); nothing to predict",
             "none.npz": r"none.npz holds no arrays; expected one array",
             "huge.npy": r"declares shape \(1000000000000, 4\) of float64 \(29.1 TiB\), but holds"}
    import re

    for name, words in cases.items():
        assert cli.main(["predict", "--model", str(model), str(tmp_path / name), "--device", "cpu"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and re.search(words, err) and err.count("corrupt") <= 1, err
        assert "batch size" not in err

