"""The training loop's numbers and guards: the epoch's loss against an independent SGD, each guard of ``fit``,
divergence by the loss alone or the weights alone, History's records, and the checks of ``set_parameters``
and of the data at the door.  (Written to kill the mutants that survived bench.mutation.)"""

import shutil

import numpy as np
import pytest

from fastnn import ConfigError, DataError, DivergenceError, Network, ShapeError, load_checkpoint, validate
from fastnn.engines.generic import GenericEngine
from fastnn.train import History, _divergence

from .test_network_values import cost, outputs

pytestmark = pytest.mark.filterwarnings("ignore::fastnn.NotLearningWarning", "ignore::RuntimeWarning")


def _problem(n=23, n_in=4, n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_in)), rng.integers(0, n_out, n)


def independent_sgd(net, X, y, order, batch_size, lr):
    """Plain SGD from the public API: each batch's summed cost before its update, then W ← W - η mean ∇C.
    Returns the batches' costs; leaves ``net`` as the updates left it."""
    costs = []
    n_out = net.sizes[-1]
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        z, a = outputs(net, X[rows])
        costs.append(cost(net.cost.name, z, a, np.eye(n_out)[y[rows]].T))
        grads = net.gradients(X[rows], y[rows])
        net.set_parameters([w - lr * dw for w, (dw, _) in zip(net.weights, grads)],
                           [b - lr * db for b, (_, db) in zip(net.biases, grads)])
    return costs


@pytest.mark.parametrize("engine", ["generic", "fused"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_epoch_loss_is_the_mean_of_the_batches_costs(engine, shuffle):
    """23 rows in batches of 5 (the last of 3), two epochs: each epoch's loss is Σ C(batch) / 23, every
    batch measured before its own update, as an independent SGD computes it."""
    X, y = _problem()
    net = Network([4, 5, 3], dtype="float64", device="cpu", seed=3)
    twin = Network([4, 5, 3], dtype="float64", device="cpu", seed=3)
    history = net.fit(X, y, epochs=2, batch_size=5, lr=0.5, shuffle=shuffle, engine=engine)
    assert {r["engine"] for r in history.records} == {"generic" if engine == "generic" else "fused-cpu"}
    for epoch in range(2):
        order = twin.rng.permutation(23) if shuffle else np.arange(23)  # the twin's generator is where net's was
        costs = independent_sgd(twin, X, y, order, 5, 0.5)
        assert len(costs) == 5
        assert history.loss[epoch] == pytest.approx(sum(costs) / 23, rel=1e-9)
    np.testing.assert_allclose(net.params, np.concatenate([w.ravel() for w in twin.weights] + twin.biases),
                               rtol=1e-9, atol=1e-12)


def test_a_generic_engine_reused_on_a_shorter_order_sums_only_its_batches():
    """The engine keeps its per-batch cost buffer between epochs: a shorter pass sums its own batches only."""
    X, y = _problem()
    net = Network([4, 5, 3], dtype="float64", device="cpu", seed=3)
    twin = Network([4, 5, 3], dtype="float64", device="cpu", seed=3)
    Xd, Yd, _ = net._inputs(X, y)
    engine = GenericEngine(net)
    for order in (np.arange(23), np.arange(7), np.arange(23)[::-1].copy()):
        got = float(engine.epoch(Xd, Yd, order, 5, 0.5, 0.0, 0.0, None))
        assert got == pytest.approx(sum(independent_sgd(twin, X, y, order, 5, 0.5)), rel=1e-9)


# -- the guards of fit -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    ({"save_best": "best.npz"}, "early_stop and save_best compare validation accuracies (regression: losses): they need validation_data"),
    ({"early_stop": 2}, "they need validation_data"),
    ({"validation_data": "triple"}, "validation_data must be a pair (X_val, y_val)"),
    ({"validation_data": [1]}, "validation_data must be a pair (X_val, y_val)"),
    ({"shuffle": 1}, "shuffle must be True or False; got 1"),
    ({"progress": "yes"}, "progress must be True, False or 'bar'; got 'yes'"),
    ({"callback": 5}, "callback must be a function of one epoch's record, or None; got 5"),
    ({"state": {}}, "state must be a fastnn.TrainState or None; got dict"),
    ({"early_stop": 0}, "early_stop must be an integer >= 1; got 0"),
    ({"precision": "fp16"}, "precision must be one of"),
    ({"engine": "fast"}, "engine must be one of auto, fused, blas, generic; got 'fast'"),
])
def test_each_guard_of_fit(tmp_path, kwargs, words):
    X, y = _problem()
    if kwargs.get("validation_data") == "triple":
        kwargs = {"validation_data": (X, y, y)}
    if "save_best" in kwargs:
        kwargs = {"save_best": tmp_path / kwargs["save_best"]}
    net = Network([4, 5, 3], device="cpu", seed=0)
    before = net.params.copy()
    with pytest.raises(ConfigError) as caught:
        net.fit(X, y, epochs=1, batch_size=5, lr=0.1, **kwargs)
    assert words in str(caught.value)
    np.testing.assert_array_equal(net.params, before)
    assert not list(tmp_path.iterdir())


def test_divergence_of_the_weights_alone():
    """One batch per epoch: the loss is measured before the update, so only the weights overflow."""
    X, y = _problem()
    net = Network([4, 5, 3], activation="identity", output="identity", dtype="float64", device="cpu", seed=0)
    before = net.params.copy()
    with pytest.raises(DivergenceError, match=r"epoch 1: the weights became non-finite; no epoch had completed"):
        net.fit(X * 1e5, y, epochs=1, batch_size=23, lr=1e306, engine="generic")
    np.testing.assert_array_equal(net.params, before)


def test_divergence_of_the_loss_alone():
    """float32 outputs of 1e20: their squares overflow the float32 cost, while a tiny step keeps the weights finite."""
    X, y = _problem()
    net = Network([4, 3], output="identity", cost="quadratic", device="cpu", seed=0)
    net.set_parameters([np.full((3, 4), 1e19)], [np.zeros(3)])
    with pytest.raises(DivergenceError, match=r"epoch 1: the cost became inf"):
        net.fit(np.abs(X) + 1, y, epochs=1, batch_size=23, lr=1e-30, engine="generic")


def test_divergence_names_the_cause_and_the_kept_epoch():
    records = [{"epoch": 1, "loss": 2.0}]
    assert "the cost became nan; the weights of the last good epoch (1)" in _divergence(2, float("nan"), True,
                                                                                        records, 0.1)
    assert "the weights became non-finite" in _divergence(2, 1.0, False, records, 0.1)
    assert "the cost rose to 2001, over 1000 times epoch 1's 2" in _divergence(2, 2001.0, True, records, 0.1)
    assert _divergence(2, 2000.0, True, records, 0.1) is None
    assert _divergence(1, 1e9, True, [], 0.1) is None


def test_a_checkpoint_folder_deleted_during_the_run_is_made_again(tmp_path):
    X, y = _problem()
    folder = tmp_path / "run"
    deleted = []

    def delete_once(record):
        if not deleted:
            shutil.rmtree(folder)
            deleted.append(record["epoch"])

    Network([4, 5, 3], device="cpu", seed=0).fit(X, y, epochs=3, batch_size=5, lr=0.1, checkpoint=folder,
                                                 callback=delete_once)
    _, state = load_checkpoint(folder, device="cpu")
    assert deleted == [1] and state.epoch == 3


# -- History ---------------------------------------------------------------------------------------------------

def test_best_epoch_is_the_first_of_tied_bests():
    history = History([{"epoch": 1, "loss": 1.0, "val_accuracy": 0.5}, {"epoch": 2, "loss": 1.0, "val_accuracy": 0.7},
                       {"epoch": 3, "loss": 1.0, "val_accuracy": 0.7}, {"epoch": 4, "loss": 1.0, "val_accuracy": 0.6}])
    assert history.best_epoch == 2 and history.since_best() == 2
    assert History([{"epoch": 1, "loss": 1.0}]).best_epoch is None and History().since_best() == 0


@pytest.mark.parametrize("records", ["abc", [1, 2], ({"epoch": 1}, 5)])
def test_history_records_must_be_dicts(records):
    with pytest.raises(ConfigError, match="records must be a list of dicts, one per epoch"):
        History(records)


# -- set_parameters --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weights, biases, error, words", [
    ([np.zeros((3, 4))], [np.array(["a", "b", "c"])], DataError, "weights and biases must hold numbers"),
    ([np.zeros((3, 4)).astype(str)], [np.zeros(3)], DataError, "weights and biases must hold numbers"),
    ([np.zeros((3, 4))], [np.zeros((3, 1, 1))], ShapeError, "expected W (3, 4) and b (3,)"),
    ([np.zeros((3, 4))], [np.zeros(4)], ShapeError, "expected W (3, 4) and b (3,)"),
    ([np.zeros((4, 3))], [np.zeros(3)], ShapeError, "expected W (3, 4) and b (3,)"),
    ([np.zeros((3, 4))], [np.array([0, np.nan, 0])], DataError, "weights or biases hold NaN or infinity"),
    ([np.zeros((3, 4))], [np.array([0, 0, -np.inf])], DataError, "weights or biases hold NaN or infinity"),
    ([np.full((3, 4), np.nan)], [np.zeros(3)], DataError, "weights or biases hold NaN or infinity"),
    ([np.zeros((3, 4))], [np.array([0, 1e39, 0])], DataError, "beyond float32's range: the largest magnitude is 1e+39"),
    ([np.full((3, 4), -1e39)], [np.zeros(3)], DataError, "beyond float32's range"),
    ([np.zeros((3, 4))], np.zeros(3), ShapeError, "biases must be a list of 1 arrays"),
    (np.zeros((3, 4)), [np.zeros(3)], ShapeError, "weights must be a list of 1 arrays"),
    ([np.zeros((3, 4))] * 2, [np.zeros(3)], ShapeError, "expected 1 weight and bias arrays; got 2 and 1"),
])
def test_set_parameters_refuses_and_keeps_the_old_ones(weights, biases, error, words):
    net = Network([4, 3], device="cpu", seed=0)
    before = net.params.copy()
    with pytest.raises(error) as caught:
        net.set_parameters(weights, biases)
    assert words in str(caught.value)
    np.testing.assert_array_equal(net.params, before)


def test_set_parameters_takes_column_biases_and_integers():
    net = Network([2, 2], device="cpu")
    net.set_parameters([np.array([[1, 2], [3, 4]])], [np.array([[5], [6]])])
    np.testing.assert_array_equal(net.weights[0], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(net.biases[0], [5, 6])


# -- finiteness at the door ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_target_matrix_is_refused(bad):
    X, y = _problem()
    Y = np.eye(3)[y]
    Y[17, 2] = bad
    net = Network([4, 3], device="cpu", seed=0)
    with pytest.raises(DataError, match=r"y must be finite; got NaN or infinity.* in row 17 "):
        net.fit(X, Y, epochs=1, batch_size=5, lr=0.1)
    with pytest.raises(DataError, match=r"y must be finite; got NaN or infinity.* in row 17 "):
        net.evaluate(X, Y)


def test_a_target_matrix_beyond_float32_is_named_as_such():
    X, y = _problem()
    Y = np.eye(3)[y]
    Y[3, 0] = 1e300
    with pytest.raises(DataError, match=r"in row 3 .*|or a value beyond float32's range"):
        Network([4, 3], device="cpu").evaluate(X, Y)


@pytest.mark.parametrize("row", [0, 3, 4, 7, 9, 22])
def test_the_finiteness_check_sees_every_row_of_every_chunk(monkeypatch, row):
    """Chunks of 4 rows: a NaN in the first or last row of any chunk, or in the short last chunk, is found."""
    monkeypatch.setattr(validate, "CHUNK", 4)
    X, y = _problem()
    X[row, 1] = np.nan
    with pytest.raises(DataError, match=rf"X must be finite; got NaN or infinity.* in row {row} \(the first"):
        Network([4, 3], device="cpu").predict(X)
    X[row, 1] = 0
    X[row, 3] = np.inf
    with pytest.raises(DataError, match=rf"in row {row} "):
        Network([4, 3], device="cpu").evaluate(X, y)


@pytest.mark.parametrize("engine", ["generic", "fused"])
def test_the_progress_bar_counts_every_example_of_each_epoch(monkeypatch, engine):
    """progress=True: one bar per epoch, advanced by the 23 examples of the epoch, batch by batch or at once."""
    from fastnn import train as train_module

    bars = []

    class Bar:
        def __init__(self, total, disable, **kwargs):
            self.total, self.disable, self.count = total, disable, 0
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, m):
            self.count += m

        @staticmethod
        def write(line, file=None):  # fit(progress=True) prints one line per epoch through the bar
            pass

    monkeypatch.setattr(train_module, "tqdm", Bar)
    X, y = _problem()
    history = Network([4, 5, 3], device="cpu", seed=0).fit(X, y, epochs=2, batch_size=5, lr=0.1, progress=True,
                                                            engine=engine)
    assert history.records[-1]["engine"] == ("generic" if engine == "generic" else "fused-cpu")
    assert [(b.total, b.count, b.disable) for b in bars] == [(23, 23, False)] * 2


def test_a_run_that_is_not_learning_is_told_once_after_epoch_1():
    import warnings

    from fastnn import NotLearningWarning

    X, y = _problem()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Network([4, 5, 3], device="cpu", seed=0).fit(X, y, epochs=3, batch_size=5, lr=1e-9)
    told = [w for w in caught if issubclass(w.category, NotLearningWarning)]
    assert len(told) == 1 and "after epoch 1" in str(told[0].message)
