"""Seeded fits on a compiled CPU engine, with the heap shifted between them; prints one hash per fit.

    python -m tests.fused_bits_worker SHIFT [fused|blas]

Run by tests/test_cpu_fused_bits.py in fresh processes, each with its own SHIFT: small buffers then sit
at other addresses relative to each other (issue 24: 1 fit in 6 differed in the last bit).
"""

import hashlib
import sys
import warnings

import numpy as np

from fastnn import Network


def configs():
    """Small networks of every depth the bug showed on, both dtypes, odd batch sizes."""
    rng = np.random.default_rng(24)
    out = []
    for trial in range(24):
        n_in = int(rng.integers(1, 60))
        hidden = [int(s) for s in rng.integers(1, 40, trial % 3)]
        sizes = [n_in, *hidden, int(rng.integers(2, 8))]
        out.append((sizes, ("float32", "float64")[trial % 2], ("sigmoid", "tanh", "relu")[trial % 3],
                    int(rng.integers(1, 20)), int(rng.integers(5, 80))))
    return out


def main(shift, engine="fused", reps=3):
    warnings.simplefilter("ignore")  # not-learning notices: these fits are 2 epochs of noise
    pads = []
    for sizes, dtype, hidden, batch_size, n in configs():
        rng = np.random.default_rng(n)
        X, y = rng.normal(size=(n, sizes[0])), rng.integers(0, sizes[-1], n)
        hashes = []
        for rep in range(reps):
            pads.append(np.empty(1 + (shift * 7 + rep * 5) % 61, np.float32))  # moves the next allocations
            net = Network(sizes, activation=hidden, device="cpu", dtype=dtype, seed=3)
            history = net.fit(X, y, epochs=2, batch_size=batch_size, lr=0.05, momentum=0.5, engine=engine)
            assert [r["engine"] for r in history.records] == [f"{engine}-cpu"] * 2
            hashes.append(hashlib.sha256(net.params.tobytes() + np.float64(history.loss).tobytes()).hexdigest()[:16])
        print(" ".join(hashes))


if __name__ == "__main__":
    main(int(sys.argv[1]), *sys.argv[2:3])
