"""IDX files, .npz files, dataset resolution, and downloads from a local HTTP server."""

import gzip
import hashlib
import http.server
import io
import os
import re
import shutil
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from fastnn import ConfigError, DataError, DownloadError, data, download, load_dataset, split_validation

from .conftest import MNIST_DIR, env_skip


def idx_bytes(array, type_code=0x08):
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(">u1" if type_code == 0x08 else array.dtype).tobytes()


def write_dataset(folder, n_train=6, n_test=4, gz=True):
    """Write the four IDX files of a tiny 28x28 dataset; return its arrays."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, arr in (("images", images), ("labels", labels)):
            name = f"{split}-{kind}-{data.KINDS[kind]}"
            raw = idx_bytes(arr)
            (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_reads_idx_gz_and_raw(tmp_path, gz):
    arrays = write_dataset(tmp_path, gz=gz)
    X_train, y_train, X_test, y_test = load_dataset("mnist", data_dir=tmp_path)
    images, labels = arrays["train"]
    assert X_train.shape == (6, 784) and X_train.dtype == np.float32
    np.testing.assert_allclose(X_train, images.reshape(6, -1) / 255, rtol=1e-6)
    np.testing.assert_array_equal(y_train, labels)
    assert y_test.dtype == np.int64 and len(X_test) == 4


@pytest.mark.needs_mnist
def test_reads_the_real_mnist_test_set():
    if not MNIST_DIR.exists():
        env_skip("needs_mnist", f"no MNIST at {MNIST_DIR}")
    X, y = data.read_idx_pair(MNIST_DIR / "t10k-images-idx3-ubyte.gz", MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert X.shape == (10000, 784) and 0 <= X.min() and X.max() == 1.0
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.parametrize("content, words", [
    (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "truncated"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "trailing bytes"),
    (b"\x12\x34\x08\x01\x00\x00\x00\x01\x01", "bad magic number"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated: its header"),
    (b"", "not an IDX file"),
])
def test_bad_idx_files(tmp_path, content, words):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match=words):
        data.read_idx(path)


def test_gz_name_without_gzip_and_truncated_gzip(tmp_path):
    fake = tmp_path / "a.gz"
    fake.write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="named .gz but is not gzip"):
        data.read_idx(fake)
    cut = tmp_path / "b.gz"
    cut.write_bytes(gzip.compress(idx_bytes(np.zeros(300, np.uint8)))[:20])
    with pytest.raises(DataError, match="cannot read"):
        data.read_idx(cut)


def test_mismatched_counts_dimensions_and_labels(tmp_path):
    images, labels, flat = tmp_path / "i", tmp_path / "l", tmp_path / "f"
    images.write_bytes(idx_bytes(np.zeros((3, 2, 2), np.uint8)))
    labels.write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    flat.write_bytes(idx_bytes(np.zeros((3, 4), np.uint8)))
    with pytest.raises(DataError, match="3 images but .* 4 labels"):
        data.read_idx_pair(images, labels)
    with pytest.raises(DataError, match="must hold uint8 images"):
        data.read_idx_pair(flat, labels)
    labels.write_bytes(idx_bytes(np.array([0, 1, 12], np.uint8)))
    with pytest.raises(DataError, match="label 12"):
        data.read_idx_pair(images, labels)


def test_npz_datasets(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x_train=np.full((5, 2, 2), 255, np.uint8), y_train=np.arange(5),
             x_test=np.zeros((2, 4), np.float64), y_test=np.array([1, 0]))
    X_train, _y_train, X_test, _ = load_dataset(str(good))
    assert X_train.shape == (5, 4) and X_train.max() == 1.0 and X_test.dtype == np.float32
    missing = tmp_path / "missing.npz"
    np.savez(missing, x_train=np.zeros((2, 2)))
    with pytest.raises(DataError, match="lacks the arrays y_train, x_test, y_test"):
        load_dataset(str(missing))
    broken = tmp_path / "broken.npz"
    broken.write_bytes(good.read_bytes()[:100])
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(str(broken))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "nope.npz"))
    with pytest.raises(ConfigError, match="mnist, fashion-mnist"):
        load_dataset("cifar")


@pytest.mark.parametrize("arrays, words", [
    ({"x_train": np.zeros((0, 4)), "y_train": np.zeros(0, int)}, r"x_train in .* is empty: .*got shape \(0, 4\)"),
    ({"x_train": np.zeros((3, 0)), "y_train": np.zeros(3, int)}, r"x_train in .* is empty"),
    ({"x_train": np.zeros(3), "y_train": np.zeros(3, int)}, r"x_train in .* must be a numeric array .*\(3,\)"),
    ({"x_train": np.array([[0.0, np.nan]]), "y_train": np.zeros(1, int)}, "x_train in .* must be finite; .* example 0"),
    # real y is a regression target now (issue 21); a 2-D integer y is still refused
    ({"x_train": np.zeros((2, 2)), "y_train": np.zeros((2, 2), int)}, "y_train in .* must be 2 integer labels"),
    ({"x_train": np.zeros((2, 2)), "y_train": np.array([0, -1])}, "y_train in .* labels >= 0; got -1"),
    ({"x_test": np.array([[np.inf, 0.0]])}, "x_test in .* must be finite"),
])
def test_bad_npz_contents(tmp_path, arrays, words):
    path = tmp_path / "d.npz"
    good = {"x_train": np.zeros((2, 2)), "y_train": np.zeros(2, int), "x_test": np.zeros((1, 2)),
            "y_test": np.zeros(1, int)}
    np.savez(path, **(good | arrays))
    with pytest.raises(DataError, match=words):
        load_dataset(str(path))


def test_npy_or_folder_named_npz(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    (tmp_path / "a.npy").rename(tmp_path / "a.npz")
    with pytest.raises(DataError, match="not a zip archive of arrays"):
        load_dataset(str(tmp_path / "a.npz"))
    (tmp_path / "b.npz").mkdir()
    with pytest.raises(DataError, match="is not a file"):
        load_dataset(str(tmp_path / "b.npz"))


def test_empty_idx_and_train_test_size_mismatch(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((4, 5, 5), np.uint8))))
    with pytest.raises(DataError, match="training and test images of mnist differ in size: 784 vs 25"):
        load_dataset("mnist", data_dir=tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((0, 28, 28), np.uint8))))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(0, np.uint8))))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz is empty"):
        load_dataset("mnist", data_dir=tmp_path)


def test_split_validation():
    X, y = np.arange(10).reshape(10, 1), np.arange(10)
    _X_train, y_train, _X_val, y_val = split_validation(X, y, 3)
    assert y_train.tolist() == list(range(7)) and y_val.tolist() == [7, 8, 9]
    with pytest.raises(ConfigError, match="validation size"):
        split_validation(X, y, 10)
    with pytest.raises(ConfigError, match="X and y must hold the same number of examples; got 10 and 9"):
        split_validation(X, y[:9], 3)


def test_resolution_order(tmp_path, monkeypatch):
    env, cache = tmp_path / "env", tmp_path / "cache"
    monkeypatch.setenv("FASTNN_DATA", str(env))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    assert data.candidate_dirs("mnist")[:2] == [env / "mnist", cache / "fastnn" / "mnist"]
    write_dataset(cache / "fastnn" / "mnist", n_train=3)
    assert len(load_dataset("mnist")[0]) == 3
    write_dataset(env / "mnist", n_train=5)
    assert len(load_dataset("mnist")[0]) == 5
    with pytest.raises(DataError, match="lacks the mnist IDX files train-images"):
        load_dataset("mnist", data_dir=tmp_path / "empty")


class Server:
    """A static file server on 127.0.0.1; ``fail`` makes it answer 500 to everything."""

    def __init__(self, root, fail=False):
        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                if fail:
                    self.send_error(500, "broken mirror")
                else:
                    super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror(tmp_path):
    if not MNIST_DIR.exists():
        pytest.skip(f"no MNIST at {MNIST_DIR}")
    root = tmp_path / "mirror"
    root.mkdir()
    for f in MNIST_DIR.glob("t10k-*.gz"):
        shutil.copy(f, root / f.name)
    servers = []

    def start(fail=False):
        servers.append(Server(root, fail))
        return servers[-1].url

    yield root, start
    for s in servers:
        s.close()


T10K = {name: md5 for name, md5 in data.DATASETS["mnist"]["md5"].items() if name.startswith("t10k")}


def test_download_verifies_checksums_and_lands_atomically(tmp_path, mirror):
    _root, start = mirror
    dest = tmp_path / "cache" / "mnist"
    download.fetch(T10K, [start(fail=True), start()], dest, progress=False)  # the first mirror fails
    for name, md5 in T10K.items():
        assert hashlib.md5((dest / name).read_bytes()).hexdigest() == md5
    assert sorted(p.name for p in dest.parent.iterdir()) == ["mnist"]


def test_download_checksum_mismatch_leaves_nothing(tmp_path, mirror):
    root, start = mirror
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not the real file")
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download.fetch(T10K, [start()], cache / "mnist", progress=False)
    assert not cache.exists()  # not even the folder the download made


def test_download_server_error_leaves_nothing(tmp_path, mirror):
    _, start = mirror
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="HTTP 500"):
        download.fetch(T10K, [start(fail=True)], cache / "mnist", progress=False)
    assert not cache.exists()  # not even the folder the download made


def test_load_dataset_downloads_into_the_cache(tmp_path, mirror, monkeypatch):
    """The whole path: not on disk, fetched from $FASTNN_MIRROR, verified, cached, read.

    Only the MNIST test files exist here, so the mirror serves them under the training
    names too and the test swaps in their checksums.
    """
    root, start = mirror
    for kind in ("images-idx3", "labels-idx1"):
        shutil.copy(root / f"t10k-{kind}-ubyte.gz", root / f"train-{kind}-ubyte.gz")
    md5 = {name: T10K[name.replace("train", "t10k")] for name in data.DATASETS["mnist"]["md5"]}
    monkeypatch.setitem(data.DATASETS["mnist"], "md5", md5)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTNN_DATA", raising=False)
    monkeypatch.setattr(data, "candidate_dirs", lambda name, d=None: [data.cache_dir() / name])
    monkeypatch.setenv("FASTNN_MIRROR", start())
    X_train, _, X_test, _ = load_dataset("mnist", progress=False)
    assert X_train.shape == X_test.shape == (10000, 784)
    assert sorted(p.name for p in (tmp_path / "cache" / "fastnn" / "mnist").iterdir()) == sorted(md5)


def test_failed_dataset_download_says_how_to_supply_files(tmp_path, mirror, monkeypatch):
    _, start = mirror
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "candidate_dirs", lambda name, d=None: [data.cache_dir() / name])
    monkeypatch.setenv("FASTNN_MIRROR", start(fail=True))
    with pytest.raises(DownloadError) as caught:
        load_dataset("mnist", progress=False)
    message = str(caught.value)
    assert "\n" not in message and "--data-dir" in message and "dataset-fashion-mnist" in message
    assert not (tmp_path / "cache").exists()


def test_fashion_mnist_from_debian():
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    X_train, y_train, X_test, _y_test = data.load_dataset("fashion-mnist", data_dir="/usr/share/datasets/fashion-mnist")
    assert X_train.shape == (60000, 784) and X_test.shape == (10000, 784)
    assert np.bincount(y_train).tolist() == [6000] * 10


def zip_of(path, members):
    """Write a zip of {name: (method, crc, size, data)} by hand (zipfile would compress 4 GB to write one)."""
    import struct

    local, central = b"", b""
    for name, (method, crc, size, raw) in members.items():
        head = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(raw), size, len(name), 0)
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(raw), size,
                               len(name), 0, 0, 0, 0, 0, len(local)) + name.encode()
        local += head + name.encode() + raw
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(local), 0)
    path.write_bytes(local + central + end)


def stored(array):
    out = io.BytesIO()
    np.save(out, array)
    raw = out.getvalue()
    return 0, zlib.crc32(raw), len(raw), raw


def zeros_member(mib):
    """A deflated .npy member of ``mib`` MiB of float64 zeros, made in a few MB: full-flushed blocks repeat."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": "<f8", "fortran_order": False, "shape": (mib << 17,)})
    head, block = out.getvalue(), bytes(1 << 20)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = z.compress(head) + z.flush(zlib.Z_FULL_FLUSH)
    chunk = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)  # the same bytes for every MiB of zeros
    data = first + chunk * mib + z.flush(zlib.Z_FINISH)
    crc = zlib.crc32(head)
    for _ in range(mib):
        crc = zlib.crc32(block, crc)
    return 8, crc, len(head) + (mib << 20), data


def test_only_the_members_needed_are_decompressed(tmp_path):
    """A 4 MB .npz with a 4 GB member besides the arrays fastnn reads: the member is never decompressed."""
    import tracemalloc

    junk = zeros_member(3800)  # 3.98 GB of zeros; under 2**32 bytes, so no zip64
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.normal(size=(20, 4)), "y_train": np.arange(20) % 3, "x_test": rng.normal(size=(5, 4)),
              "y_test": np.arange(5) % 3}
    path = tmp_path / "d.npz"
    zip_of(path, {"junk.npy": junk, **{f"{k}.npy": stored(v) for k, v in arrays.items()}})
    assert path.stat().st_size < 8 << 20 and junk[2] > 3_900_000_000
    tracemalloc.start()
    try:
        _, y_train, X_test, _ = load_dataset(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20, peak  # the 4 GB member was not read
    np.testing.assert_array_equal(y_train, arrays["y_train"])
    np.testing.assert_allclose(X_test, arrays["x_test"].astype(np.float32))
    with zipfile.ZipFile(path) as z, z.open("junk.npy") as f:  # an honest member: zipfile reads its first MiB back
        f.read(1 << 20)
    # A member fastnn needs that claims more than its compressed bytes can hold is refused unread.
    zip_of(path, {**{f"{k}.npy": stored(v) for k, v in arrays.items()},
                  "x_train.npy": (8, 0, 4_000_000_000, bytes(1000))})
    with pytest.raises(DataError, match="array x_train claims 4000000000 bytes from 1000 compressed bytes"):
        load_dataset(str(path))


def test_a_model_file_with_a_huge_extra_member_loads(tmp_path):
    from fastnn import Network, load_model, save_model

    net = Network([4, 5, 3], device="cpu", seed=0)
    save_model(net, tmp_path / "m.npz")
    with zipfile.ZipFile(tmp_path / "m.npz") as z:
        members = {i.filename: (0, i.CRC, i.file_size, z.read(i.filename)) for i in z.infolist()}
    zip_of(tmp_path / "m.npz", {**members, "velocity.npy": zeros_member(1000)})  # 1 GB of junk it does not need
    back = load_model(tmp_path / "m.npz", device="cpu")
    assert all(np.array_equal(a, b) for a, b in zip(back.weights, net.weights))


def within(seconds, call):
    """Run ``call()`` in a thread; fail (not hang) when it has not returned after ``seconds``."""
    done = []
    thread = threading.Thread(target=lambda: done.append(_outcome(call)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert done, f"still blocked after {seconds} s"
    return done[0]


def _outcome(call):
    try:
        return call()
    except Exception as e:  # noqa: BLE001 - handed back to the test
        return e


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    from fastnn import ModelFileError, load_checkpoint, load_model

    fifo = tmp_path / "m.npz"
    os.mkfifo(fifo)
    (tmp_path / "ck").mkdir()
    os.mkfifo(tmp_path / "ck" / "checkpoint.npz")
    os.mkfifo(tmp_path / "train-images-idx3-ubyte.gz")
    for call, kind, words in [
        (lambda: load_model(fifo, device="cpu"), ModelFileError, r"m.npz is a FIFO \(named pipe\), not a regular file"),
        (lambda: load_model(tmp_path / "ck" / "checkpoint.npz", device="cpu"), ModelFileError, "is a FIFO"),
        (lambda: load_checkpoint(tmp_path / "ck", device="cpu"), ModelFileError, "checkpoint.npz is a FIFO"),
        (lambda: load_checkpoint(fifo, device="cpu"), ModelFileError,
         "m.npz is a FIFO .named pipe.; expected a checkpoint folder"),
        (lambda: data.read_idx(tmp_path / "train-images-idx3-ubyte.gz"), DataError, "is a FIFO"),
        (lambda: data.load_npz(fifo), DataError, "m.npz is a FIFO"),
    ]:
        got = within(10, call)
        assert isinstance(got, kind) and re.search(words, str(got)), got


def test_out_of_memory_under_the_limit_is_device_out_of_memory(monkeypatch):
    """A network that fits the memory the device reports but cannot be allocated: DeviceOutOfMemory, not ConfigError."""
    from fastnn import DeviceOutOfMemory, Network, backend

    monkeypatch.setattr(backend.Backend, "memory", lambda self: 1 << 62)
    with pytest.raises(DeviceOutOfMemory, match=r"out of memory on cpu making a network of 1,000,003,000,000 "
                                                r"parameters \(.*\); try smaller layers"):
        Network([1, 10**6, 10**6], device="cpu")
