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


def nets(seeds=range(4), device="cpu", **kind):
    return [Network([8, 6, 3], seed=s, device=device, **kind) for s in seeds]


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
@pytest.mark.parametrize(("engine", "name"), [("fused", "fused-cpu"), ("auto", "blas-cpu")])
def test_processes_with_the_compiled_engines_equal_solo_runs(engine, name):
    alone, _ = solo(KINDS[0], "float32", engine=engine)
    together, histories = many(KINDS[0], "float32", "processes", engine=engine, workers=2)
    assert histories[0].records[0]["engine"] == name
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


def test_networks_of_different_kinds_or_settings_of_the_wrong_length_are_refused():
    X, y = data()
    with pytest.raises(ConfigError, match=r"nets\[1\] is 8-7-3"):
        fit_many([Network([8, 6, 3]), Network([8, 7, 3])], X, y, 1, 10)
    with pytest.raises(ConfigError, match="relu/sigmoid"):
        fit_many([Network([8, 6, 3]), Network([8, 6, 3], activation="relu", output="sigmoid")], X, y, 1, 10)
    with pytest.raises(ConfigError, match=r"lr must be one value or a list of one per network \(2\); got a list of 3"):
        fit_many(nets(range(2)), X, y, 1, 10, lr=[0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match=r"network 1: batch_size must be an integer >= 1; got 0"):
        fit_many(nets(range(2)), X, y, 1, [10, 0])
    with pytest.raises(ConfigError, match="non-empty list"):
        fit_many([], X, y, 1, 10)
    twice = Network([8, 6, 3])
    with pytest.raises(ConfigError, match="the same Network twice"):
        fit_many([twice, twice], X, y, 1, 10)
    with pytest.raises(ConfigError, match="method must be one of auto, processes, batched, fused, one-by-one"):
        fit_many(nets(range(2)), X, y, 1, 10, method="threads")


def test_more_models_than_memory_holds_are_refused_saying_how_many_fit():
    from fastnn.backend import get_backend
    from fastnn.many import bytes_per_model, check_memory

    cpu = get_backend("cpu")
    each = bytes_per_model([784, 30, 10], np.dtype("float32"), 10, False)
    fit = cpu.memory() // each
    assert check_memory(fit, [784, 30, 10], np.dtype("float32"), 10, False, cpu, 0) == fit
    with pytest.raises(ConfigError, match=rf"{fit + 1:,} models of 784-30-10 .* {fit:,} fit; train fewer models"):
        check_memory(fit + 1, [784, 30, 10], np.dtype("float32"), 10, False, cpu, 0)


@pytest.mark.filterwarnings("ignore::fastnn.NotLearningWarning")
@pytest.mark.parametrize("method", ["processes", "batched"])
def test_a_model_that_diverges_stops_with_its_last_good_weights_and_the_others_go_on(method):
    X, y = data()
    X = X * 50
    together = nets(range(3), activation="relu", output="softmax")
    alone = nets(range(3), activation="relu", output="softmax")
    histories = fit_many(together, X, y, 4, 10, lr=[0.01, 1e4, 0.02], method=method, engine="generic", workers=2)
    assert histories[1].diverged and "training diverged" in histories[1].diverged
    assert len(histories[1]) < 4 and len(histories[0]) == len(histories[2]) == 4
    for k in (0, 2):
        alone[k].fit(X, y, 4, 10, lr=[0.01, 1e4, 0.02][k], engine="generic", threads=1)
        gap = np.abs(together[k].params - alone[k].params).max()
        assert gap <= BATCHED_RTOL["float32"] * np.abs(alone[k].params).max()
    assert np.isfinite(together[1].params).all()


@pytest.mark.filterwarnings("ignore::fastnn.NotLearningWarning")
@pytest.mark.parametrize("method", ["one-by-one", "batched"])
@pytest.mark.parametrize("where", ["in a model's epoch", "in the callback"])
def test_a_stop_leaves_every_model_at_the_last_epoch_all_completed_and_the_states_continue_it(method, where,
                                                                                             monkeypatch):
    from fastnn import TrainState, many, many_batched

    X, y = data()
    straight = nets()
    fit_many(straight, X, y, 3, 10, lr=0.5, method=method, engine="generic")
    stopped, states = nets(), [TrainState() for _ in range(4)]
    calls = []

    def stop(k, record):
        if record["epoch"] == 2 and k == 2:
            raise KeyboardInterrupt

    def interrupted(real):
        def run(*args):
            calls.append(1)
            if len(calls) == (7 if method == "one-by-one" else 4):  # epoch 2: its third model, its second group
                raise KeyboardInterrupt
            return real(*args)
        return run

    if where == "in a model's epoch":
        monkeypatch.setattr(many, "epoch_job", interrupted(many.epoch_job))
        monkeypatch.setattr(many_batched, "_group_epoch", interrupted(many_batched._group_epoch))
    with pytest.raises(KeyboardInterrupt):
        fit_many(stopped, X, y, 3, 10 if method == "one-by-one" else [10, 10, 7, 7], lr=0.5, method=method,
                 engine="generic", states=states, callback=stop if where == "in the callback" else None)
    monkeypatch.undo()
    epoch = 2 if where == "in the callback" else 1
    assert [s.epoch for s in states] == [epoch] * 4
    for net, state in zip(stopped, states):
        assert net.params.tobytes() == state.params.tobytes()
    fit_many(stopped, X, y, 3, 10 if method == "one-by-one" else [10, 10, 7, 7], lr=0.5, method=method,
             engine="generic", states=states)
    if method == "batched":  # the straight run above had one group; these, two: compare with solo runs
        straight = nets()
        for net, b in zip(straight, [10, 10, 7, 7]):
            net.fit(X, y, 3, b, lr=0.5, engine="generic", threads=1)
    for a, b in zip(stopped, straight):
        assert a.params.tobytes() == b.params.tobytes()


@pytest.mark.filterwarnings("ignore::fastnn.NotLearningWarning")
@pytest.mark.usefixtures("cupy_double")
@pytest.mark.parametrize("kind", KINDS)
def test_batched_on_the_cupy_double_matches_each_solo_generic_run(kind):
    X, y = data()
    lrs = LR[kind.get("activation", "sigmoid")]
    alone, expected = solo(kind, "float32")
    together = [Network([8, 6, 3], seed=s, device="cuda", **kind) for s in range(4)]
    histories = fit_many(together, X, y, 3, SETTINGS["batch_size"], lr=lrs, l2=SETTINGS["l2"],
                         momentum=SETTINGS["momentum"], validation_data=(X[:50], y[:50]))  # auto: batched on CUDA
    for a, b, h, e in zip(together, alone, histories, expected):
        assert a.backend.is_cuda and h.records[-1]["engine"] == "batched-generic"
        params = a.backend.to_host(a.params)
        assert params.dtype == b.params.dtype
        assert np.abs(params - b.params).max() <= BATCHED_RTOL["float32"] * np.abs(b.params).max()
        assert h.val_accuracy == e.val_accuracy


@pytest.mark.filterwarnings("ignore::fastnn.NotLearningWarning")
def test_one_progress_bar_counts_the_model_epochs_of_the_whole_run(capsys):
    X, y = data()
    fit_many(nets(), X, y, 2, 10, lr=0.5, method="one-by-one", progress=True)
    err = capsys.readouterr().err
    assert "4 models" in err and "/8 [" in err and "model-epoch" in err
    assert "epoch 1" not in err  # no bar per model
