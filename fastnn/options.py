"""The options of ``fastnn train``: defaults that fit each other, and a resumed run's own settings.

An option the user leaves out is None after parsing.  A new run fills it from DEFAULTS (the
output, cost and learning rate from ``fastnn.defaults``); a resumed run fills it from its
checkpoint, and refuses an option given explicitly that disagrees with the checkpoint
(``--epochs`` excepted: it may be raised).
"""

from pathlib import Path

from . import defaults
from .errors import ConfigError

DEFAULTS = {"dataset": "mnist", "layers": [784, 30, 10], "activation": "sigmoid", "epochs": 30, "batch_size": 10,
            "momentum": 0.0, "l2": 0.0, "dtype": "float32", "validation_size": "auto", "init": "auto"}
CHOSEN = ("output", "cost", "lr")  # from the hidden activation: fastnn.defaults


def flag(key):
    return f"--{key.replace('_', '-')}"


def fill_new(args):
    """Fill the options left out of a new run: DEFAULTS, then output, cost and lr from the activation."""
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    n_out = args.layers[-1]
    args.output = defaults.output(args.activation, args.output, n_out)
    defaults.one_unit(args.output, n_out)
    args.cost = defaults.cost(args.output, args.cost, n_out)
    if args.lr is None:
        args.lr = defaults.learning_rate(args.activation, args.output, args.cost)


def dataset_record(args):
    """What ``net.dataset`` records: the dataset (a .npz as an absolute path), its folder, the validation size."""
    name = str(Path(args.dataset).resolve()) if args.dataset.endswith(".npz") else args.dataset
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else None
    return {"name": name, "data_dir": data_dir, "validation_size": args.validation_size}


def checkpointed(header, training):
    """The options of the run a checkpoint holds, from its header and training record (``read_run``)."""
    settings = training["settings"]
    had = {"layers": list(header["sizes"]), "output": header["output"], "cost": header["cost"],
           "dtype": header["dtype"], **{k: settings[k] for k in ("batch_size", "lr", "momentum", "l2")}}
    if len(header["sizes"]) > 2:
        had["activation"] = header["activation"]
    if header.get("seed") is not None:
        had["seed"] = header["seed"]
    if "epochs" in settings:
        had["epochs"] = settings["epochs"]
    dataset = header.get("dataset")
    if dataset:
        had["dataset"], had["validation_size"] = dataset["name"], dataset.get("validation_size")
        if dataset.get("data_dir"):
            had["data_dir"] = dataset["data_dir"]
    return had


def fill_resume(args, header, training):
    """Fill a resumed run's options from its checkpoint; ConfigError naming each explicit option that disagrees."""
    had = checkpointed(header, training)
    compared = [k for k in had if k not in ("epochs", "dataset", "data_dir", "validation_size")]
    differ = [k for k in compared if getattr(args, k) is not None and getattr(args, k) != had[k]]
    if differ:
        show = lambda v: ",".join(map(str, v)) if isinstance(v, list) else v
        raise ConfigError(f"--resume {args.resume}: the checkpointed run used "
                          f"{' '.join(f'{flag(k)} {show(had[k])}' for k in differ)}, but this command has "
                          f"{' '.join(f'{flag(k)} {show(getattr(args, k))}' for k in differ)}; leave these options "
                          f"out (the checkpoint's are used) or give the first run's")
    for key, value in had.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.epochs is None:
        raise ConfigError(f"--resume {args.resume}: this checkpoint does not record the run's --epochs (written by "
                          f"an older fastnn): give --epochs")
    for key, value in DEFAULTS.items():  # what an older checkpoint does not record
        if getattr(args, key) is None:
            setattr(args, key, value)
