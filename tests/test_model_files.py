"""Every field of model files and checkpoints: written, read back, and refused when wrong; extra arrays.
(Written to kill the mutants of checkpoint.py that survived bench.mutation.)"""

import json

import numpy as np
import pytest

from fastnn import (
    ConfigError,
    ModelFileError,
    Network,
    TrainState,
    load_checkpoint,
    load_model,
    save_checkpoint,
    save_model,
)
from fastnn.train import History

pytestmark = pytest.mark.filterwarnings("ignore::fastnn.NotLearningWarning")


def _trained(tmp_path, momentum=0.9):
    """A [3, 4, 2] float64 network after 2 epochs, and its TrainState; its checkpoint in tmp_path/run."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(12, 3)), rng.integers(0, 2, 12)
    net = Network([3, 4, 2], activation="tanh", output="softmax", dtype="float64", device="cpu", seed=9)
    net.dataset = {"name": "tiny", "data_dir": "/data", "validation_size": 0}
    state = TrainState()
    net.fit(X, y, epochs=2, batch_size=5, lr=0.3, momentum=momentum, state=state, checkpoint=tmp_path / "run",
            validation_data=(X, y))
    return net, state


def _rewrite(path, **changes):
    """Rewrite the .npz at ``path`` with arrays replaced (None: removed); a dict value replaces a JSON record."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        elif isinstance(value, dict):
            arrays[key] = np.array(json.dumps(value))
        else:
            arrays[key] = value
    np.savez(path, **arrays)


def _record(path, key):
    with np.load(path) as npz:
        return json.loads(str(npz[key]))


def test_every_field_of_a_model_file_round_trips(tmp_path):
    net, state = _trained(tmp_path)
    path = tmp_path / "m.npz"
    save_model(net, path, history=state.history)
    header = _record(path, "header")
    assert header["format"] == "fastnn-model" and header["version"] == 1 and isinstance(header["fastnn"], str)
    assert (header["sizes"], header["activation"], header["output"], header["cost"], header["dtype"], header["seed"]) \
        == ([3, 4, 2], "tanh", "softmax", "log-likelihood", "float64", 9)
    assert header["dataset"] == net.dataset and header["history"] == state.history.records
    back = load_model(path, device="cpu")
    assert (back.sizes, [a.name for a in back.activations], back.cost.name, back.dtype, back.seed, back.dataset) == (
        [3, 4, 2], ["tanh", "softmax"], "log-likelihood", np.float64, 9, net.dataset)
    assert back.history.records == state.history.records and back.history.best_epoch == state.history.best_epoch
    for a, b in zip(back.weights + back.biases, net.weights + net.biases):
        np.testing.assert_array_equal(a, b)
    plain = tmp_path / "plain.npz"
    save_model(Network([2, 1], device="cpu"), plain)
    assert {"seed", "dataset", "history"}.isdisjoint(_record(plain, "header"))
    assert load_model(plain, device="cpu").history is None


def test_net_history_is_saved_by_default(tmp_path):
    net, state = _trained(tmp_path)
    net.history = History(state.history.records[:1])
    save_model(net, tmp_path / "m.npz")
    assert _record(tmp_path / "m.npz", "header")["history"] == state.history.records[:1]


@pytest.mark.parametrize("change, words", [
    ({"dataset": "tiny"}, "dataset must be a record with a name (or absent); got 'tiny'"),
    ({"dataset": {"name": 5}}, "dataset must be a record with a name"),
    ({"history": {"epoch": 1}}, "the history must be a list of epoch records; got dict"),
    ({"history": [{"epoch": 1, "loss": 0.5}, 2]}, "epoch record 2 must be a record (a dict); got 2"),
    ({"seed": -1}, "seed must be an integer >= 0 (or absent); got -1"),
    ({"seed": True}, "seed must be an integer >= 0 (or absent); got True"),
    ({"sizes": [3, 0, 2]}, "sizes must be a list of two or more integers >= 1; got [3, 0, 2]"),
    ({"sizes": [3]}, "sizes must be a list of two or more integers >= 1; got [3]"),
    ({"sizes": [3, True, 2]}, "sizes must be a list of two or more integers >= 1"),
    ({"sizes": [3, 4.0, 2]}, "sizes must be a list of two or more integers >= 1"),
    ({"activation": None}, "activation must be a name (a string) for a network with hidden layers; got None"),
    ({"output": 1}, "output must be a name (a string); got 1"),
    ({"cost": None}, "cost must be a name (a string); got None"),
    ({"dtype": ["float32"]}, "dtype must be a name (a string)"),
    ({"fastnn": 0.1}, "fastnn must be a name (a string); got 0.1"),
    ({"version": True}, "version must be an integer >= 1; got True"),
    ({"version": "1"}, "version must be an integer >= 1; got '1'"),
    ({"version": 2}, "has model format version 2, newer than this fastnn"),
    ({"format": "fastnn-checkpoint"}, "is not a fastnn model file (no fastnn header)"),
])
def test_each_header_field_is_checked(tmp_path, change, words):
    net, _ = _trained(tmp_path)
    path = tmp_path / "m.npz"
    save_model(net, path)
    _rewrite(path, header={**_record(path, "header"), **change})
    with pytest.raises(ModelFileError) as caught:
        load_model(path, device="cpu")
    assert words in str(caught.value)


def test_a_network_without_hidden_layers_needs_no_hidden_activation(tmp_path):
    path = tmp_path / "m.npz"
    save_model(Network([3, 2], device="cpu", seed=1), path)
    assert _record(path, "header")["activation"] is None
    assert load_model(path, device="cpu").sizes == [3, 2]


@pytest.mark.parametrize("array, value, words", [
    ("b0", np.array([0.0, np.nan, 0.0, 0.0]), "weights or biases hold NaN or infinity"),
    ("b1", np.array([np.inf, 0.0]), "weights or biases hold NaN or infinity"),
    ("W1", np.full((2, 4), -np.inf), "weights or biases hold NaN or infinity"),
    ("b0", np.zeros((4, 1, 1)), "layer 0: expected b (4,) for the header's sizes [3, 4, 2]; got b (4, 1, 1)"),
    ("b0", np.zeros(5), "expected b (4,)"),
    ("W0", np.zeros((3, 4)), "layer 0: expected W (4, 3)"),
    ("b1", np.array(["a", "b"]), "array b1 must hold numbers"),
    ("b1", None, "lacks the arrays b1"),
])
def test_the_arrays_of_a_model_file_are_checked(tmp_path, array, value, words):
    net, _ = _trained(tmp_path)
    path = tmp_path / "m.npz"
    save_model(net, path)
    _rewrite(path, **{array: value})
    with pytest.raises(ModelFileError) as caught:
        load_model(path, device="cpu")
    assert words in str(caught.value)


def test_biases_beyond_float32_are_refused(tmp_path):
    path = tmp_path / "m.npz"
    save_model(Network([3, 2], device="cpu", seed=1), path)
    _rewrite(path, b0=np.array([1e39, 0.0]))
    with pytest.raises(ModelFileError, match=r"beyond float32's range"):
        load_model(path, device="cpu")
    _rewrite(path, b0=np.array([[1.0], [2.0]]))  # a column of biases is read as it was meant
    assert load_model(path, device="cpu").biases[0].tolist() == [1.0, 2.0]


# -- extra arrays ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["W0", "b1", "W12", "header", "training", "velocity", "not an identifier", 3])
def test_extra_arrays_may_not_take_the_files_own_names(tmp_path, name):
    net = Network([3, 4, 2], device="cpu", seed=1)
    with pytest.raises(ConfigError, match="extra array names must be identifiers other than header"):
        save_model(net, tmp_path / "m.npz", extra={name: np.ones((4, 3))})
    assert not (tmp_path / "m.npz").exists()


def test_extra_arrays_are_saved_beside_the_weights(tmp_path):
    net = Network([3, 4, 2], device="cpu", seed=1)
    path = tmp_path / "m.npz"
    save_model(net, path, extra={"mean": np.arange(3.0), "Wide": np.ones(2), "b": np.zeros(1)})
    with np.load(path) as npz:
        np.testing.assert_array_equal(npz["mean"], np.arange(3.0))
        np.testing.assert_array_equal(npz["W0"], net.weights[0])
    np.testing.assert_array_equal(load_model(path, device="cpu").weights[0], net.weights[0])


# -- checkpoints -----------------------------------------------------------------------------------------------

def test_every_field_of_a_checkpoint_round_trips(tmp_path):
    net, state = _trained(tmp_path)
    file = tmp_path / "run" / "checkpoint.npz"
    training = _record(file, "training")
    assert (training["format"], training["version"], training["epoch"]) == ("fastnn-checkpoint", 1, 2)
    assert training["settings"] == {"batch_size": 5, "lr": 0.3, "momentum": 0.9, "l2": 0.0, "shuffle": True,
                                    "n_train": 12, "epochs": 2}
    assert training["history"] == state.history.records and training["rng"] == net.rng.bit_generator.state
    back, back_state = load_checkpoint(tmp_path / "run", device="cpu")
    np.testing.assert_array_equal(back.params, net.params)
    np.testing.assert_array_equal(back_state.velocity, state.velocity)
    assert back.rng.bit_generator.state == net.rng.bit_generator.state
    assert back_state.epoch == 2 and back_state.history.records == state.history.records
    assert back_state.settings == state.settings


def _rng_state(**inner):
    state = Network([2, 1], device="cpu", seed=0).rng.bit_generator.state
    return {**state, **{k: v for k, v in inner.items() if k in ("has_uint32", "uinteger", "bit_generator")},
            "state": {**state["state"], **{k: v for k, v in inner.items() if k in ("state", "inc")}}}


@pytest.mark.parametrize("change, words", [
    ({"rng": _rng_state(has_uint32=2)}, "has_uint32 must be 0 or 1 and uinteger in [0, 2**32); got 2"),
    ({"rng": _rng_state(uinteger=2**32)}, "has_uint32 must be 0 or 1 and uinteger in [0, 2**32)"),
    ({"rng": _rng_state(uinteger=-1)}, "uinteger in [0, 2**32)"),
    ({"rng": _rng_state(inc=4)}, "a PCG64 increment is odd; got 4"),
    ({"rng": _rng_state(state=2**128)}, "state and inc must be integers in [0, 2**128)"),
    ({"rng": _rng_state(state=-1)}, "state and inc must be integers in [0, 2**128)"),
    ({"rng": _rng_state(bit_generator="MT19937")}, "expected the state of a PCG64 generator"),
    ({"epoch": -1}, "epoch must be an integer >= 0; got -1"),
    ({"epoch": True}, "epoch must be an integer >= 0; got True"),
    ({"epoch": 3}, "expected one history entry per epoch (3); got 2"),
    ({"history": [{"epoch": 1, "loss": 0.5}, 5]}, "epoch record 2 must be a record (a dict); got 5"),
    ({"history": "x"}, "expected one history entry per epoch (2); got 'x'"),
    ({"version": 2}, "has checkpoint format version 2"),
    ({"version": 0}, "has checkpoint format version 0"),
    ({"format": "fastnn-model"}, "has an unreadable training record; expected fastnn checkpoint JSON"),
    ({"settings": {"batch_size": 5}}, "settings must give"),
    ({"settings:batch_size": 0}, "is out of range or of the wrong type"),
    ({"settings:batch_size": True}, "is out of range or of the wrong type"),
    ({"settings:n_train": 0}, "is out of range or of the wrong type"),
    ({"settings:lr": "0.3"}, "is out of range or of the wrong type"),
    ({"settings:l2": float("inf")}, "is out of range or of the wrong type"),
    ({"settings:momentum": False}, "is out of range or of the wrong type"),
    ({"settings:shuffle": 1}, "is out of range or of the wrong type"),
    ({"settings:momentum": 0.0}, "has momentum 0.0 but a momentum buffer"),
])
def test_each_training_field_is_checked(tmp_path, change, words):
    _trained(tmp_path)
    file = tmp_path / "run" / "checkpoint.npz"
    training = _record(file, "training")
    for key, value in change.items():
        if key.startswith("settings:"):
            training["settings"] = {**training["settings"], key.split(":")[1]: value}
        else:
            training[key] = value
    _rewrite(file, training=training)
    with pytest.raises(ModelFileError) as caught:
        load_checkpoint(tmp_path / "run", device="cpu")
    assert words in str(caught.value)


@pytest.mark.parametrize("velocity, words", [
    (np.full(26, np.nan), "the momentum buffer must be 26 finite float64 numbers; got NaN or infinity"),
    (np.full(26, np.inf), "got NaN or infinity"),
    (np.zeros(26, np.float32), "the momentum buffer must be 26 finite float64 numbers; got float32 (26,)"),
    (np.zeros((26, 1)), "got float64 (26, 1)"),
    (None, "has momentum 0.9 but no momentum buffer"),
])
def test_the_momentum_buffer_is_checked(tmp_path, velocity, words):
    _trained(tmp_path)
    file = tmp_path / "run" / "checkpoint.npz"
    _rewrite(file, velocity=velocity)
    with pytest.raises(ModelFileError) as caught:
        load_checkpoint(tmp_path / "run", device="cpu")
    assert words in str(caught.value)


def test_a_model_file_is_not_a_checkpoint(tmp_path):
    net, state = _trained(tmp_path, momentum=0.0)
    save_model(net, tmp_path / "m.npz")
    with pytest.raises(ModelFileError, match="is a fastnn model file, not a checkpoint: it holds no training state"):
        load_checkpoint(tmp_path / "m.npz", device="cpu")
    save_checkpoint(tmp_path / "again", net, state)
    assert "velocity" not in np.load(tmp_path / "again" / "checkpoint.npz").files
    assert load_checkpoint(tmp_path / "again", device="cpu")[1].velocity is None


def test_a_checkpoint_of_batches_of_one_example_loads(tmp_path):
    """The smallest settings a run can have (batch_size 1, one training example) are valid in a checkpoint."""
    net = Network([2, 2], device="cpu", seed=0)
    net.fit(np.ones((1, 2)), np.array([1]), epochs=1, batch_size=1, lr=0.1, checkpoint=tmp_path / "run")
    _, state = load_checkpoint(tmp_path / "run", device="cpu")
    assert (state.settings["batch_size"], state.settings["n_train"], state.epoch) == (1, 1, 1)


@pytest.mark.parametrize("header", ["{'descr': '<f8', 'fortran_order': False, 'shape': (4, 3), 'extra': 1, }",
                                    "{'descr': '<f8', 'shape': (4, 3), }", "[1, 2]"])
def test_an_array_header_that_is_not_numpys_is_refused(tmp_path, header):
    """readers.Npz reads each .npy header itself: a dict with other keys than numpy's three is refused."""
    import zipfile

    path = tmp_path / "m.npz"
    save_model(Network([3, 4, 2], device="cpu", seed=1), path)
    text = header.encode().ljust(118) + b"\n"
    raw = b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + np.zeros((4, 3)).tobytes()
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    members["W0.npy"] = raw
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(ModelFileError, match="W0.npy has an array header that is not numpy's|W0 has an array header"):
        load_model(path, device="cpu")


def test_array_headers_of_up_to_32_dimensions_are_read(tmp_path):
    """The bounded .npy reader takes numpy's classic limit of 32 dimensions, and no more."""
    from fastnn import readers

    np.savez(tmp_path / "a.npz", ok=np.zeros((1,) * 32), deep=np.zeros((1,) * 33))
    with readers.Npz(tmp_path / "a.npz", "a.npz", ModelFileError) as npz:
        assert npz.describe("ok") == ((1,) * 32, np.dtype(np.float64))
        with pytest.raises(ModelFileError, match="deep"):
            npz.describe("deep")


def test_byte_counts_in_words():
    from fastnn.readers import describe_bytes

    assert [describe_bytes(n) for n in (0, 1023, 1024, 1536, 1024**2, 3 * 1024**3)] == [
        "0 bytes", "1023 bytes", "1 KiB", "1.5 KiB", "1 MiB", "3 GiB"]


def test_an_npz_reader_closes_its_file(tmp_path):
    from fastnn import readers

    np.savez(tmp_path / "a.npz", a=np.zeros(3))
    with readers.Npz(tmp_path / "a.npz", "a.npz", ModelFileError) as npz:
        assert not npz._file.closed
    assert npz._file.closed
