"""Checks of the records fastnn keeps and reads back, field by field: the per-epoch records (History, logs,
model files and checkpoints), the dataset record of a model file, and a checkpoint's settings.

Each ``*_problem`` function returns None for a good record, else what is wrong in words; the caller
names the file (or the argument) and raises its own one-line error, so that a hostile record never
reaches code that would fail on it with a KeyError or a TypeError.
"""

import math
import numbers

NUMBERS = ("loss", "val_loss", "val_accuracy", "seconds", "examples_per_second")
TEXTS = ("engine", "precision")
MAX_BATCH = 2**31 - 1  # examples per batch: numpy's largest dimension on every platform
MAX_EXAMPLES = 2**48


def short(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def whole(value, low, high=math.inf):
    """Whether ``value`` is an int (not a bool) in [low, high]."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value <= high


def real(value):
    """Whether ``value`` is a real number (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def epoch_problem(record, n):
    """None when ``record`` is a good record of epoch ``n`` (1-based), else what is wrong."""
    if not isinstance(record, dict):
        return f"epoch record {n} must be a record (a dict); got {short(record)}"
    if record.get("epoch") != n or not whole(record.get("epoch"), 1):
        return f"epoch record {n} must have epoch {n} (records are epochs 1, 2, … in order); got " \
               f"{short(record.get('epoch'))}"
    if "loss" not in record:
        return f"epoch record {n} has no loss"
    for key in NUMBERS:
        if key in record and not real(record[key]):
            return f"epoch record {n}: {key} must be a number; got {short(record[key])}"
    if "val_accuracy" in record and not 0 <= record["val_accuracy"] <= 1:
        return f"epoch record {n}: val_accuracy must be in [0, 1]; got {short(record['val_accuracy'])}"
    for key in TEXTS:
        if key in record and not isinstance(record[key], str):
            return f"epoch record {n}: {key} must be a name (a string); got {short(record[key])}"
    return None


def history_problem(records):
    """None when ``records`` is a list (or tuple) of good records of epochs 1, 2, …, else what is wrong."""
    if not isinstance(records, (list, tuple)):
        return f"the history must be a list of epoch records; got {type(records).__name__}"
    for n, record in enumerate(records, 1):
        problem = epoch_problem(record, n)
        if problem:
            return problem
    return None


def dataset_problem(dataset):
    """None when ``dataset`` is a good record of what a model was trained on (or None), else what is wrong."""
    if dataset is None:
        return None
    if not isinstance(dataset, dict) or not isinstance(dataset.get("name"), str) or not dataset["name"]:
        return f"dataset must be a record with a name (or absent); got {short(dataset)}"
    if dataset.get("data_dir") is not None and not isinstance(dataset["data_dir"], str):
        return f"dataset's data_dir must be a folder name (or absent); got {short(dataset['data_dir'])}"
    size = dataset.get("validation_size")
    if size is not None and not whole(size, 0, MAX_EXAMPLES) and not (
            isinstance(size, str) and (size == "auto" or size.isdigit())):
        return f"dataset's validation_size must be 'auto' or an integer >= 0; got {short(size)}"
    return None


def settings_problem(settings, names):
    """None when a checkpoint's ``settings`` give every one of ``names`` in range, else what is wrong."""
    if not isinstance(settings, dict) or any(k not in settings for k in names):
        return f"settings must give {', '.join(names)}; got {short(settings)}"
    checks = {"batch_size": whole(settings["batch_size"], 1, MAX_BATCH),
              "n_train": whole(settings["n_train"], 1, MAX_EXAMPLES),
              "lr": real(settings["lr"]) and math.isfinite(settings["lr"]) and settings["lr"] > 0,
              "momentum": real(settings["momentum"]) and 0 <= settings["momentum"] < 1,
              "l2": real(settings["l2"]) and math.isfinite(settings["l2"]) and settings["l2"] >= 0,
              "shuffle": isinstance(settings["shuffle"], bool),
              "epochs": "epochs" not in settings or whole(settings["epochs"], 0, MAX_EXAMPLES)}
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        return f"settings' {bad[0]} is out of range or of the wrong type; got {short(settings.get(bad[0]))}"
    return None
