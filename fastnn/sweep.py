"""``fastnn sweep``: train every setting of a grid, for every seed, at once (``fastnn.fit_many``).

    fastnn sweep --lr 0.1,0.5,1,3 --l2 0,5 --seeds 0-4 --batch-size 10,32 --out-dir runs/

The swept options (--lr, --l2, --momentum, --batch-size) take comma-separated lists and --seeds a list or
a range; the grid is their product, and every setting is trained once per seed.  The rest are ``train``'s.
Into --out-dir it writes (``sweep_files``): the table (sweep-table.txt, also printed: one row per setting,
the final and best validation accuracy as mean ± spread over the seeds, the time), the log of every epoch
of every model (sweep-log.jsonl), the plot (sweep.png; without matplotlib, one line says so), the best
model by final validation accuracy (best-model.npz), with --keep-all every other model (models/), with
--ensemble the best setting's seeds as one ensemble (best-ensemble.npz, read by predict and evaluate).

--checkpoint DIR saves the whole sweep after every epoch (DIR/sweep-checkpoint.npz); --resume DIR goes on
from it with its own settings, bit-identical to a straight run.  A stop signal saves it too (in --checkpoint
DIR, else in OUT_DIR/checkpoint) and says how to go on.

The paths are checked up front (``sweep_files.check_paths``); branch 20's register of paths per command
(fastnn/files) is where that check belongs once merged.
"""

import itertools
import os
import time
import warnings

import numpy as np

from . import defaults, interrupts, options, sweep_files, validate
from .backend import get_backend
from .data import load_dataset, split_validation
from .errors import ConfigError, NotLearningWarning
from .many import check_memory, fit_many
from .network import Network

SWEPT = {"lr": float, "l2": float, "momentum": float, "batch_size": int}
KEPT = ("dataset", "data_dir", "layers", "activation", "output", "cost", "init", "dtype", "validation_size",
        "lr", "l2", "momentum", "batch_size", "seeds", "engine", "method")  # what a checkpoint records of the command


def add_options(p):
    """The options of ``fastnn sweep`` beside the data options (``cli.data_options``)."""
    d = options.DEFAULTS
    p.add_argument("--layers", help="units per layer, input first (default: 784,30,10)")
    p.add_argument("--activation", help=f"hidden activation (default: {d['activation']})")
    p.add_argument("--output", help="output activation (default: as train's)")
    p.add_argument("--cost", help="cost (default: as train's)")
    p.add_argument("--epochs", type=int, help=f"epochs of every model (default: {d['epochs']})")
    p.add_argument("--batch-size", help=f"LIST of batch sizes, e.g. 10,32 (default: {d['batch_size']})")
    p.add_argument("--lr", help="LIST of learning rates, e.g. 0.1,0.5,1,3 (default: train's for the network)")
    p.add_argument("--momentum", help="LIST of momenta in [0, 1) (default: 0)")
    p.add_argument("--l2", help="LIST of L2 weight decays λ (default: 0)")
    p.add_argument("--seeds", help="seeds of every setting: a LIST, or a range such as 0-4 (default: 0)")
    p.add_argument("--init", choices=list(defaults.INITS), help="initial weights (default: auto)")
    p.add_argument("--dtype", choices=list(validate.DTYPES), help=f"floating-point type (default: {d['dtype']})")
    p.add_argument("--validation-size", help="examples carved off the training set (default: auto, as train's)")
    p.add_argument("--out-dir", required=True, help="folder for the table, log, plot and models (made if missing)")
    p.add_argument("--keep-all", action="store_true", help="save every model, not only the best (default: the best)")
    p.add_argument("--ensemble", action="store_true", help="save the best setting's seeds as one ensemble model")
    p.add_argument("--checkpoint", metavar="DIR", help="save the whole sweep to DIR after every epoch")
    p.add_argument("--resume", metavar="DIR", help="continue the sweep checkpointed in DIR, with its settings")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier sweep in --out-dir")
    p.add_argument("--quiet", action="store_true", help="print only the table and the files written")
    p.add_argument("--engine", choices=("auto", "fused", "generic"), help="each model's engine (default: auto)")
    p.add_argument("--method", choices=("auto", "processes", "batched", "fused", "one-by-one"),
                   help="how the models share the machine (see fastnn/many.py; default: auto)")
    p.add_argument("--workers", type=int, help="processes of the CPU's method (default: one per core)")


def number_list(flag, text, kind):
    """The numbers of a comma-separated list, refused in one line when empty or not numbers."""
    parts = [part.strip() for part in str(text).split(",")]
    if not any(parts) or not all(parts):
        raise ConfigError(f"{flag} must be a comma-separated list of numbers, such as {flag} 1,2; got {text!r}")
    values = []
    for part in parts:
        try:
            values.append(kind(part))
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise ConfigError(f"{flag}: {part!r} is not {what} (in {text!r})") from None
    if len(set(values)) != len(values):
        raise ConfigError(f"{flag} lists a value twice: {text!r}")
    return values


def seed_list(text):
    """Seeds from '0-4' (inclusive), '3' or '1,5,9', each an integer >= 0, none twice."""
    seeds = []
    for part in str(text).split(","):
        low, dash, high = part.strip().partition("-")
        try:
            seeds += list(range(int(low), int(high) + 1)) if dash else [int(low)]
        except ValueError:
            raise ConfigError(f"--seeds must be integers >= 0 or ranges such as 0-4, comma-separated; got "
                              f"{text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must name at least one seed, none twice, such as 0-4; got {text!r}")
    return seeds


def grid(args):
    """The settings (dicts of lr, l2, momentum, batch_size), their product in that order, each value checked."""
    lists = {}
    for key, kind in SWEPT.items():
        flag = options.flag(key)
        lists[key] = number_list(flag, getattr(args, key), kind)
    for b in lists["batch_size"]:
        validate.integer("--batch-size", b, 1)
    for r in lists["lr"]:
        validate.real("--lr", r, 0.0, low_open=True)
    for m in lists["momentum"]:
        validate.real("--momentum", m, 0.0, 1.0, high_open=True)
    for d in lists["l2"]:
        validate.real("--l2", d, 0.0)
    return [dict(zip(SWEPT, values)) for values in itertools.product(*lists.values())], \
        [key for key, values in lists.items() if len(values) > 1]


def fill(args):
    """Fill the options left out: a resumed sweep's from its checkpoint, a new one's from train's defaults."""
    if args.resume:
        had = sweep_files.read_options(args.resume)
        for key in KEPT:
            given = getattr(args, key)
            if given is not None and str(given) != str(had[key]):
                raise ConfigError(f"--resume {args.resume}: the sweep used {options.flag(key)} {had[key]}, but this "
                                  f"command has {options.flag(key)} {given}; leave it out or give the first run's")
            setattr(args, key, had[key])
        if args.epochs is None:
            args.epochs = had["epochs"]
        if args.checkpoint is None and not str(args.resume).endswith(".npz"):
            args.checkpoint = args.resume  # a resumed sweep goes on checkpointing where it was
        return
    given = lambda value, default: default if value is None else value
    args.engine, args.method = given(args.engine, "auto"), given(args.method, "auto")
    for key in ("dataset", "activation", "epochs", "dtype", "validation_size", "init"):
        setattr(args, key, given(getattr(args, key), options.DEFAULTS[key]))
    args.layers = given(args.layers, ",".join(map(str, options.DEFAULTS["layers"])))
    args.output = defaults.output(args.activation, args.output)
    args.cost = defaults.cost(args.output, args.cost)
    args.lr = given(args.lr, str(defaults.learning_rate(args.activation, args.output, args.cost)))
    args.batch_size = given(args.batch_size, str(options.DEFAULTS["batch_size"]))
    args.momentum, args.l2, args.seeds = given(args.momentum, "0"), given(args.l2, "0"), given(args.seeds, "0")


def run(args, progress, show, validation_size, check_labels):
    """The sweep command (``show`` prints a line; the other two are ``cli``'s helpers)."""
    fill(args)
    sizes = validate.layer_sizes(str(args.layers).split(","))
    settings, swept = grid(args)
    seeds = seed_list(args.seeds)
    epochs = validate.integer("--epochs", args.epochs, 0)
    workers = None if args.workers is None else validate.integer("--workers", args.workers, 1)
    models = [(s, seed) for s in settings for seed in seeds]
    backend = get_backend(args.device)
    check_memory(len(models), sizes, validate.dtype(args.dtype), max(s["batch_size"] for s in settings),
                 any(s["momentum"] for s in settings), backend, 0)
    files = sweep_files.check_paths(args)
    X_train, y_train, X_test, y_test = load_dataset(args.dataset, args.data_dir, progress=progress or None)
    X_train, y_train, X_val, y_val = split_validation(X_train, y_train, validation_size(args, len(X_train)))
    if not len(X_val):
        raise ConfigError(f"a sweep compares validation accuracies, but --validation-size is {args.validation_size} "
                          f"for {args.dataset}: give --validation-size N > 0")
    check_memory(len(models), sizes, validate.dtype(args.dtype), max(s["batch_size"] for s in settings),
                 any(s["momentum"] for s in settings), backend, X_train.nbytes)
    nets = [Network(sizes, activation=args.activation, output=args.output, cost=args.cost, device=backend,
                    dtype=args.dtype, seed=seed, init=args.init) for _, seed in models]
    if sizes[0] != X_train.shape[1]:
        raise ConfigError(f"--layers starts with {sizes[0]} inputs, but {args.dataset} has {X_train.shape[1]} "
                          f"features per example")
    check_labels(nets[0], args.dataset, y_train, y_test, where="the last of --layers sets the output units")
    record = options.dataset_record(args)
    for net in nets:
        net.dataset = record
    states = sweep_files.read_states(args.resume, nets) if args.resume else None
    if not args.quiet:
        show(f"sweep: {len(settings)} settings × {len(seeds)} seeds = {len(models)} models of {nets[0]}, "
             f"{epochs} epochs; {len(X_train)} training, {len(X_val)} validation examples")
    log = sweep_files.Log(files["log"], models, settings)
    kept = {"epoch": min(s.epoch for s in states) if states else 0, "states": states}

    def on_epoch(epoch, now):
        kept["epoch"], kept["states"] = epoch, now
        log.write(now)
        if args.checkpoint:
            sweep_files.save(args.checkpoint, args, epochs, nets, now)
        if not args.quiet:
            best = max(range(len(now)), key=lambda i: _final(now[i].history))
            show(f"epoch {epoch}/{epochs}: best validation accuracy {_final(now[best].history):.4f} "
                 f"({sweep_files.name(*models[best])})")

    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotLearningWarning)  # a sweep tries settings that do not learn
            histories = fit_many(nets, X_train, y_train, epochs, [s["batch_size"] for s, _ in models],
                                 lr=[s["lr"] for s, _ in models], momentum=[s["momentum"] for s, _ in models],
                                 l2=[s["l2"] for s, _ in models], validation_data=(X_val, y_val), engine=args.engine,
                                 method=args.method, workers=workers, progress=progress, states=states,
                                 on_epoch=on_epoch)
    except KeyboardInterrupt as e:
        raise interrupts.Interrupted(interrupts.signal_of(e), _after_stop(args, epochs, nets, kept)) from None
    seconds = time.perf_counter() - start
    for net, history in zip(nets, histories):
        net.history = history
    finish(args, show, files, models, settings, swept, nets, histories, seconds, (X_test, y_test))


def _final(history):
    accuracy = history.val_accuracy
    return accuracy[-1] if accuracy else -1.0


def _after_stop(args, epochs, nets, kept):
    """Save the sweep after a stop signal; the sentence that says where and how to go on."""
    if not kept["epoch"]:
        return "no epoch of the sweep had completed: nothing was saved"
    folder = args.checkpoint or os.path.join(args.out_dir, "checkpoint")
    with interrupts.deferred():
        sweep_files.save(folder, args, epochs, nets, kept["states"])
    return (f"saved the sweep as it stood after epoch {kept['epoch']} of {epochs} to {folder}; to continue, run the "
            f"same command with --resume {folder}")


def finish(args, show, files, models, settings, swept, nets, histories, seconds, test):
    """The table, the plot, the best model (and the rest, and the ensemble), each file said."""
    rows = sweep_files.table(models, settings, swept, histories)
    for line in rows:
        show(line)
    sweep_files.write_text(files["table"], rows)
    show(f"trained {len(nets)} models in {seconds:.1f} s; wrote the table to {files['table']} and every epoch to "
         f"{files['log']}")
    said = sweep_files.plot(files["plot"], models, settings, swept, histories)
    show(said)
    best = max(range(len(nets)), key=lambda i: _final(histories[i]))
    from .checkpoint import save_model

    save_model(nets[best], files["best"], history=histories[best])
    result = nets[best].evaluate(*test)
    show(f"best model: {sweep_files.name(*models[best])}, validation accuracy {_final(histories[best]):.4f}, test "
         f"accuracy {result['accuracy']:.4f} on {len(test[0])} examples; saved to {files['best']}")
    if args.keep_all:
        os.makedirs(files["models"], exist_ok=True)
        for i, net in enumerate(nets):
            if i != best:
                save_model(net, os.path.join(files["models"], f"model-{sweep_files.name(*models[i])}.npz"),
                           history=histories[i])
        show(f"saved the other {len(nets) - 1} models to {files['models']}")
    if args.ensemble:
        from .ensemble import Ensemble, save_ensemble

        means = {}
        for i, (setting, _) in enumerate(models):
            means.setdefault(settings.index(setting), []).append(_final(histories[i]))
        top = max(means, key=lambda s: np.mean(means[s]))
        members = Ensemble([net for net, (s, _) in zip(nets, models) if s == settings[top]])
        save_ensemble(members, files["ensemble"])
        result = members.evaluate(*test)
        show(f"ensemble of the best setting's {len(members.members)} seeds ({sweep_files.name(settings[top])}): "
             f"test accuracy {result['accuracy']:.4f}; saved to {files['ensemble']}")
