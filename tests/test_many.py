"""fit_many: many networks at once, each ending as its solo run ends (fastnn.many, fastnn.many_batched)."""

import numpy as np
import pytest

from fastnn import ConfigError, Network
from fastnn.many import BATCHED_RTOL, fit_many

KINDS = [{}, {"activation": "relu"}, {"activation": "tanh", "output": "sigmoid", "cost": "cross-entropy"}]
LR = {"sigmoid": [0.5, 1.0, 0.1, 2.0], "relu": [0.05, 0.1, 0.02, 0.01], "tanh": [0.5, 1.0, 0.1, 0.3]}
SETTINGS = {"l2": [0.0, 1.0, 0.0, 2.0], "momentum": [0.0, 0.0, 0.5, 0.9], "batch_size": [10, 10, 7, 7]}


def data(n=300, n_in=8, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_in))
    return X, rng.integers(0, n_out, n)


def nets(seeds=range(4), **kind):
    return [Network([8, 6, 3], seed=s, **kind) for s in seeds]


def solo(kind, dtype, epochs=3, engine="generic"):
    X, y = data()
    lrs = LR[kind.get("activation", "sigmoid")]
    out = nets(dtype=dtype, **kind)
    histories = [net.fit(X, y, epochs, b, lr=lr, l2=l2, momentum=mu, validation_data=(X[:50], y[:50]),
                         engine=engine, threads=1)
                 for net, lr, l2, mu, b in zip(out, lrs, *SETTINGS.values())]
    return out, histories


def many(kind, dtype, method, epochs=3, engine="generic", **options):
    X, y = data()
    out = nets(dtype=dtype, **kind)
    histories = fit_many(out, X, y, epochs, SETTINGS["batch_size"], lr=LR[kind.get("activation", "sigmoid")],
                         l2=SETTINGS["l2"], momentum=SETTINGS["momentum"], validation_data=(X[:50], y[:50]),
                         engine=engine, method=method, **options)
    return out, histories


@pytest.mark.filterwarnings("ignore::fastnn.NotLearningWarning")
@pytest.mark.parametrize("method", ["processes", "one-by-one"])
def test_each_network_ends_with_its_solo_weights_byte_for_byte(method):
    for kind in KINDS[:2]:
        alone, expected = solo(kind, "float32")
        together, histories = many(kind, "float32", method, workers=2)
        for k, (a, b, h, e) in enumerate(zip(together, alone, histories, expected)):
            assert a.params.tobytes() == b.params.tobytes(), (kind, k)
            assert a.rng.bit_generator.state == b.rng.bit_generator.state  # the shuffling went on alike
            assert h.val_accuracy == e.val_accuracy and h.loss == e.loss
            assert len(h) == 3 and h.diverged is None


@pytest.mark.filterwarnings("ignore::fastnn.NotLearningWarning")
def test_processes_with_the_fused_engine_equal_solo_fused_runs():
    alone, _ = solo(KINDS[0], "float32", engine="auto")
    together, histories = many(KINDS[0], "float32", "processes", engine="auto", workers=2)
    assert histories[0].records[0]["engine"] == "fused-cpu"
    for a, b in zip(together, alone):
        assert a.params.tobytes() == b.params.tobytes()


@pytest.mark.filterwarnings("ignore::fastnn.NotLearningWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
def test_batched_matches_each_solo_generic_run(kind, dtype):
    alone, expected = solo(kind, dtype)
    together, histories = many(kind, dtype, "batched")
    for a, b, h, e in zip(together, alone, histories, expected):
        gap = np.abs(a.params - b.params).max() / np.abs(b.params).max()
        assert gap <= BATCHED_RTOL[dtype]
        assert h.records[-1]["engine"] == "batched-generic"
        assert h.loss == pytest.approx(e.loss, rel=1e-5) and h.val_accuracy == e.val_accuracy
