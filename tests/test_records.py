"""Every field of every record validated (fastnn/records.py; issue 20, items 13, 14, 20 and 24's fingerprint):
hostile model and checkpoint records give the one line of any other bad file, and every public API call given
junk raises a FastnnError, never a KeyError or TypeError."""

import json

import numpy as np
import pytest

from fastnn import (
    ConfigError,
    DataError,
    FastnnError,
    History,
    MetricsLog,
    ModelFileError,
    Network,
    cli,
    load_checkpoint,
    load_model,
    save_model,
)
from fastnn.metrics_log import read_log

from .test_bad_input import checkpoint, model

HEADERS = [
    ("data_dir a number", {"dataset": {"name": "mnist", "data_dir": 5, "validation_size": "auto"}}, "data_dir"),
    ("validation_size a list", {"dataset": {"name": "mnist", "validation_size": [1]}}, "validation_size"),
    ("validation_size junk text", {"dataset": {"name": "x.npz", "validation_size": "lots"}}, "validation_size"),
    ("history without loss", {"history": [{"epoch": 1}]}, "has no loss"),
    ("history without epoch", {"history": [{"loss": 1.0}]}, "must have epoch 1"),
    ("history with a string loss", {"history": [{"epoch": 1, "loss": "low"}]}, "loss must be a number"),
    ("history epochs out of order", {"history": [{"epoch": 2, "loss": 1.0}]}, "must have epoch 1"),
    ("history with a list engine", {"history": [{"epoch": 1, "loss": 1.0, "engine": []}]}, "engine must be a name"),
    ("val_accuracy of 7", {"history": [{"epoch": 1, "loss": 1.0, "val_accuracy": 7}]}, r"val_accuracy must be in"),
]


@pytest.mark.parametrize("header", [h[1] for h in HEADERS], ids=[h[0] for h in HEADERS])
def test_a_hostile_model_header_is_one_line(tmp_path, header, capsys):
    """Item 13: load_model raises ModelFileError; evaluate and predict exit 1 with one line."""
    model(tmp_path, **header)
    words = next(h[2] for h in HEADERS if h[1] == header)
    with pytest.raises(ModelFileError, match=words):
        load_model(tmp_path / "m.npz", device="cpu")
    np.save(tmp_path / "x.npy", np.ones((2, 4)))
    for args in (["evaluate", "--model", str(tmp_path / "m.npz")],
                 ["predict", "--model", str(tmp_path / "m.npz"), str(tmp_path / "x.npy")]):
        assert cli.main([*args, "--device", "cpu"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "has an invalid header" in err, err


TRAINING = [
    ("batch_size 10**30", {"settings": {"batch_size": 10**30}}, "batch_size"),
    ("lr a string", {"settings": {"lr": "fast"}}, "lr"),
    ("momentum 2", {"settings": {"momentum": 2}}, "momentum"),
    ("epochs a string", {"settings": {"epochs": "many"}}, "epochs"),
    ("history with strings", {"history": [{"epoch": "one", "loss": "x"}]}, "must have epoch 1"),
    ("fingerprint a dict", {"fingerprint": {"a": 1}}, "fingerprint"),
]


@pytest.mark.parametrize("training", [t[1] for t in TRAINING], ids=[t[0] for t in TRAINING])
def test_a_hostile_checkpoint_record_is_one_line(tmp_path, tiny, training, capsys):
    """Item 13: load_checkpoint raises ModelFileError; train --resume exits 1 with one line."""
    checkpoint(tmp_path)
    path = tmp_path / "ck" / "checkpoint.npz"
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    record = json.loads(str(arrays["training"]))
    for key, value in training.items():
        record[key] = record[key] | value if isinstance(value, dict) and key == "settings" else value
    arrays["training"] = np.array(json.dumps(record))
    np.savez(path, **arrays)
    with pytest.raises(ModelFileError, match=next(t[2] for t in TRAINING if t[1] == training)):
        load_checkpoint(tmp_path / "ck", device="cpu")
    assert cli.main(["train", "--dataset", str(tiny), "--resume", str(tmp_path / "ck"), "--epochs", "3",
                     "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid training record" in err, err


def test_a_huge_batch_size_is_refused_at_the_door(tiny, capsys):
    """Item 14: --batch-size 10**30 is one line, exit 2 (not numpy's 'Maximum allowed dimension exceeded')."""
    assert cli.main(["train", "--dataset", str(tiny), "--layers", "4,3", "--epochs", "1", "--device", "cpu",
                     "--batch-size", str(10**30)]) == 2
    assert "--batch-size must be an integer <= 2147483647" in capsys.readouterr().err


def test_resume_refuses_another_training_set_of_the_same_size(tmp_path, tiny, capsys):
    """Item 24: the checkpoint keeps a fingerprint of the training set; another set of the same size is refused."""
    base = ["train", "--layers", "4,5,3", "--device", "cpu", "--seed", "1", "--quiet"]
    assert cli.main([*base, "--dataset", str(tiny), "--epochs", "1", "--checkpoint", str(tmp_path / "ck")]) == 0
    with np.load(tiny) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["x_train"] = arrays["x_train"][::-1].copy()
    np.savez(tmp_path / "other.npz", **arrays)
    capsys.readouterr()
    assert cli.main([*base, "--dataset", str(tmp_path / "other.npz"), "--epochs", "2",
                     "--resume", str(tmp_path / "ck")]) == 2
    assert "trained on another training set" in capsys.readouterr().err
    assert cli.main([*base, "--dataset", str(tiny), "--epochs", "2", "--resume", str(tmp_path / "ck")]) == 0
    assert load_checkpoint(tmp_path / "ck", device="cpu")[1].epoch == 2


class StringDtype:
    """An array-like whose dtype is a string."""
    shape = (2, 4)
    dtype = "float32"

    def __array__(self, dtype=None, copy=None):
        return np.ones((2, 4), dtype or np.float32)


def junk_log(tmp):
    (tmp / "bad.jsonl").write_text('{"epoch": 1, "loss": 0.5}\n{"epoch": "two", "loss": [1]}\n')
    return read_log(tmp / "bad.jsonl")


API = [  # (what, call(tmp)): every call must raise a FastnnError
    ("fit on an array-like with a string dtype and bad labels",
     lambda t: Network([4, 3], device="cpu").fit(StringDtype(), [0, 7], epochs=1, batch_size=2)),
    ("save_model(history='h')", lambda t: save_model(Network([4, 3], device="cpu"), t / "m.npz", history="h")),
    ("MetricsLog(records='x')", lambda t: MetricsLog(t / "log.jsonl", records="x")),
    ("MetricsLog(records=[5])", lambda t: MetricsLog(t / "log.jsonl", records=[5])),
    ("History of mixed types", lambda t: History([{"epoch": 1, "loss": 1.0, "val_accuracy": "high"},
                                                  {"epoch": 2, "loss": 1.0, "val_accuracy": 0.5}]).best_epoch),
    ("History without epochs", lambda t: History([{"loss": 1.0}])),
    ("read_log of junk records", junk_log),
    ("fit with batch_size 10**30", lambda t: Network([4, 3], device="cpu").fit(np.ones((4, 4)), [0, 1, 2, 0],
                                                                                epochs=1, batch_size=10**30)),
]


def test_an_array_like_with_a_string_dtype_is_read_through_numpy():
    """Item 20: such an array-like is not taken for an array (its dtype has no .kind): numpy converts it."""
    assert Network([4, 3], device="cpu", seed=0).predict(StringDtype()).shape == (2,)


@pytest.mark.parametrize("call", [a[1] for a in API], ids=[a[0] for a in API])
def test_api_calls_with_junk_raise_a_fastnn_error(tmp_path, call):
    """Item 20: a FastnnError (ConfigError, DataError or ModelFileError), never KeyError/TypeError/AttributeError."""
    with pytest.raises(FastnnError) as caught:
        call(tmp_path)
    assert isinstance(caught.value, (ConfigError, DataError, ModelFileError))
