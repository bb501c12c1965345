"""The fastnn command: train, evaluate, predict, plot, info, bench.  The only module that prints.

Every error becomes one line on stderr and a non-zero exit: 2 for a bad option, 1 for a
failure (bad data, missing dataset or device, divergence), 128 + the signal's number for a stop
signal (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP; see ``fastnn.interrupts``).
"""

import argparse
import contextlib
import difflib
import errno
import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from . import (
    __version__,
    defaults,
    distributed,
    engines,
    interrupts,
    keeping,
    metrics_log,
    options,
    predict,
    sweep,
    train,
    validate,
)
from . import threads as thread_policy
from .activations import HIDDEN, OUTPUT
from .backend import (
    PRECISIONS,
    context_lost_message,
    describe_precision,
    get_backend,
    is_out_of_memory,
    is_sticky_fault,
    out_of_memory_message,
)
from .bench import machine
from .checkpoint import CHECKPOINT_FILE, checkpoint_file, load_checkpoint, load_model, read_run, save_model
from .costs import COSTS, PAIRS
from .data import DATASETS, input_scale, load_dataset, load_test_set, split_validation
from .errors import ConfigError, DataError, DivergenceError, FastnnError, ModelFileError
from .files import FolderLock
from .metrics_log import MetricsLog
from .network import Network
from .paths import Paths, shown
from .records import MAX_BATCH
from .state import TrainState, fingerprint


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not a usage block, and an unknown option suggests the nearest."""

    def error(self, message):
        print(f"fastnn: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(2)

    def parse_args(self, args=None, namespace=None):
        args, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = self.commands.get(getattr(args, "command", None), self)
            parser.error(f"unrecognized arguments: {' '.join(extras)}{nearest(parser, extras)}")
        return args


def nearest(parser, extras):
    """'; did you mean --lr?' for the first unknown option close to one of ``parser``'s, else ''."""
    known = [o[2:] for action in parser._actions for o in action.option_strings if o.startswith("--")]
    for word in extras:
        if word.startswith("-"):
            close = difflib.get_close_matches(word.split("=")[0].lstrip("-"), known, n=1, cutoff=0.6)
            if close:
                return f"; did you mean --{close[0]}?"
    return ""


def layers_arg(text):
    try:
        return validate.layer_sizes(text.split(","))
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def make_parser():
    parser = Parser(prog="fastnn", description="Train fully-connected networks, a whole mini-batch at once.")
    parser.add_argument("--version", action="version", version=f"fastnn {__version__}")
    names = "{train,sweep,evaluate,predict,plot,info,bench}"
    sub = parser.add_subparsers(dest="command", required=True, metavar=names)
    parser.commands = {}
    add = lambda name, **kw: parser.commands.setdefault(name, sub.add_parser(name, **kw))

    train = add("train", help="train a network (defaults: the textbook's MNIST run)",
                description="Train a network. Options left out take the defaults shown; with --resume, the "
                            "checkpointed run's own settings instead. --output, --cost and --lr follow the hidden "
                            "activation so that every one trains: sigmoid gets the textbook's sigmoid output, "
                            "quadratic cost and lr 3.0; tanh, relu and identity get a softmax output, log-likelihood "
                            "cost and lr 0.05 (other sigmoid runs: lr 0.5; see fastnn/defaults.py).")
    train_options(train)

    grid = add("sweep", help="train a grid of settings × seeds at once; the table, log, plot and best model",
               description="Train every setting of a grid (the product of the lists given to --lr, --l2, "
                           "--momentum, --batch-size) once per seed, all at once; see fastnn/sweep.py.")
    data_options(grid, dataset_default="mnist")
    sweep.add_options(grid)

    evaluate = add("evaluate", help="loss and accuracy of a saved model on a test split")
    evaluate.add_argument("--model", required=True, help="model file written by 'fastnn train --out', or a "
                                                         "checkpoint (its folder or file)")
    data_options(evaluate, dataset_default="the dataset the model was trained on")

    guess = add("predict", help="the class (or output activations) of each example in a file")
    guess.add_argument("--model", required=True, help="model file written by 'fastnn train --out'")
    guess.add_argument("input", metavar="INPUT", help=".npy, .npz or .csv of rows (one example each), or an IDX "
                                                        "image file; uint8 pixels are scaled to [0, 1]")
    guess.add_argument("--out", help="write the answers to FILE.csv or FILE.npy (default: one per line on stdout)")
    guess.add_argument("--proba", action="store_true", help="give the output activations, one row per example, "
                                                            "instead of the class")
    guess.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: $FASTNN_DEVICE or auto)")

    plot = add("plot", help="draw the loss and accuracy curves of a --log file")
    plot.add_argument("log", metavar="LOG", help="a log written by 'fastnn train --log' (.jsonl or .csv)")
    plot.add_argument("--out", help="the image to write (default: LOG with the extension .png)")
    plot.add_argument("--overwrite", action="store_true", help="replace an existing image (default: refused)")

    info = add("info", help="versions, the backend chosen and why, GPU and BLAS")
    info.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: $FASTNN_DEVICE or auto)")
    bench_options(add("bench", help="time fastnn against the textbook loop, PyTorch and the GEMM floor"))
    return parser


def train_options(p):
    data_options(p, dataset_default="mnist")
    d = options.DEFAULTS
    p.add_argument("--layers", type=layers_arg, help="units per layer, input first (default: 784,30,10)")
    p.add_argument("--activation", choices=list(HIDDEN), help=f"hidden activation (default: {d['activation']})")
    p.add_argument("--output", choices=list(OUTPUT),
                   help="output activation (default: sigmoid after a sigmoid hidden layer, else softmax)")
    p.add_argument("--cost", choices=list(COSTS),
                   help=f"cost (default: log-likelihood for a softmax output, else quadratic); pairs: {PAIRS}")
    p.add_argument("--epochs", type=int, help=f"epochs in all (default: {d['epochs']}; with --resume, the run's, "
                                              "and it may be raised)")
    p.add_argument("--batch-size", type=int, help=f"examples per mini-batch (default: {d['batch_size']})")
    p.add_argument("--lr", type=float, help="learning rate η (default: 3.0 for the textbook's sigmoid/sigmoid/"
                                            "quadratic, 0.5 for other sigmoid hidden layers, else 0.05)")
    p.add_argument("--momentum", type=float, help="momentum μ in [0, 1) (default: 0)")
    p.add_argument("--l2", type=float, help="L2 weight decay λ, scaled λ/n (default: 0)")
    p.add_argument("--init", choices=list(defaults.INITS),
                   help="initial weights: he N(0, 2/n_in) with zero biases; textbook N(0, 1/n_in) with N(0, 1) "
                        "biases; auto: he for the layers that feed a relu, textbook for the others (default: auto)")
    p.add_argument("--dtype", choices=list(validate.DTYPES), help=f"floating-point type (default: {d['dtype']})")
    p.add_argument("--seed", type=int, help="seed for weights and shuffling (default: random, printed)")
    p.add_argument("--validation-size", help="examples carved off the training set (default: auto, 10000 for "
                                             "mnist/fashion-mnist and 0 for a .npz)")
    p.add_argument("--out", help="save the trained model here, .npz (default: not saved)")
    p.add_argument("--save-best", action="store_true", help="keep the epoch with the best validation accuracy "
                   "(regression: loss) in --out instead of the last (default: the last)")
    p.add_argument("--early-stop", type=int, metavar="N", help="stop after N epochs without a better validation "
                                                               "accuracy (regression: loss) (default: never)")
    p.add_argument("--log", metavar="FILE", help="write one record per epoch to FILE: .csv, else JSON lines "
                                                 "(default: none)")
    p.add_argument("--plot", metavar="FILE", help="draw the loss and accuracy curves into FILE.png at the end; "
                                                  "needs matplotlib (default: none)")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="save DIR/checkpoint.npz (model, momentum, random state, history) after every epoch "
                        "(default: none)")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the run checkpointed in DIR, with its settings (default: a new run)")
    p.add_argument("--overwrite", action="store_true",
                   help="let a new run replace the checkpoint in --checkpoint DIR and an existing --log "
                        "(default: refused)")
    p.add_argument("--quiet", action="store_true", help="print only the final result (default: every epoch)")
    p.add_argument("--engine", default="auto", choices=list(engines.ENGINES),
                   help="auto: the device's fused engine where the network fits, else generic (see 'fastnn info'; "
                        "default: auto)")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="tf32: float32 cuBLAS matmuls on TF32 tensor cores (CUDA; ignored on the CPU; default: fp32)")
    p.add_argument("--threads", type=int,
                   help="BLAS threads while training on the CPU (default: picked from the network's size; see info)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over the ranks of 'mpirun -n N', MPI on CPUs, NCCL on GPUs (default: off)")


def bench_options(p):
    p.add_argument("--configs", help="comma-separated, of textbook,mid,wide,huge (default: what fits the devices)")
    p.add_argument("--impl", help="comma-separated, of fastnn,textbook-loop,torch,torch-graph,jax (default: all; the "
                   "floor always runs; torch-graph on a GPU only)")
    p.add_argument("--device", default="auto", help="auto (the CPU, and the GPU when usable), cpu, cuda or cuda:N")
    p.add_argument("--quick", action="store_true", help="a short smoke run: 2,000 examples, one timed epoch")
    p.add_argument("--epochs", type=int, help="timed epochs per implementation, median reported (default 3; quick 1)")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="fastnn's matmuls: fp32 or tf32 (CUDA)")
    p.add_argument("--threads", type=int, help="BLAS, PyTorch and XLA threads (default: the number of cores; fastnn: "
                   "its training policy)")
    p.add_argument("--sweep", metavar="K,...", help="time K textbook models at once instead (fit_many against one by "
                   "one, JAX vmap and torch.func.vmap), e.g. 1,2,8,32,132; see fastnn/bench/sweep.py")
    p.add_argument("--examples", type=int, help="training examples per epoch of --sweep (default 10000)")
    p.add_argument("--json", default="fastnn-bench.json", help="write the report here (fastnn-bench.json)")
    p.add_argument("--chart", default="fastnn-bench.png", help="write the chart here (fastnn-bench.png; 'none': no chart)")


def data_options(p, dataset_default):
    p.add_argument("--dataset", help=f"{' | '.join(DATASETS)} | FILE.npz (default: {dataset_default})")
    p.add_argument("--data-dir", help="folder holding the dataset's IDX files (default: searched, see README)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: $FASTNN_DEVICE or auto)")


def measured(result, prefix=""):
    """'loss L, accuracy A' of an evaluation (a regression's: 'loss L, RMSE E, R² R'); ``prefix``: 'val '."""
    key = lambda name: f"{prefix.strip()}_{name}" if prefix else name
    text = f"{prefix}loss {result[key('loss')]:.4f}"
    if key("accuracy") in result:
        return text + f", {prefix}accuracy {result[key('accuracy')]:.4f}"
    return text + f", {prefix}RMSE {result[key('rmse')]:.4g}, {prefix}R² {result[key('r2')]:.4f}"


def epoch_line(record, epochs, device):
    line = f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}"
    if "val_loss" in record:
        line += ", " + measured(record, "val ")
    line += f", {record['seconds']:.2f} s, {record['examples_per_second']:,.0f} ex/s, {device}"
    line += f", {record['engine']} engine" if "engine" in record else ""
    return line + (f", {record['precision']}" if record.get("precision", "fp32") != "fp32" else "")  # fp32: unsaid


def validation_size(args, n_train):
    if args.validation_size == "auto":
        return 0 if args.dataset.endswith(".npz") else min(10000, n_train // 2)
    try:
        return int(args.validation_size)
    except ValueError:
        raise ConfigError(f"--validation-size must be 'auto' or an integer; got {args.validation_size!r}") from None


def run_train(args, progress):
    comm = distributed.connect(args.device) if args.distributed else None
    if comm is not None and comm.rank != 0:  # only rank 0 prints and saves
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (open for the life of the process)
        args.out, args.log, args.plot, args.save_best, progress = None, None, None, False, False
    if args.resume:
        options.fill_resume(args, *read_run(args.resume))
    else:
        options.fill_new(args)
    epochs = validate.integer("--epochs", args.epochs, 1)
    batch_size = validate.integer("--batch-size", args.batch_size, 1, MAX_BATCH)
    lr = validate.real("--lr", args.lr, 0.0, low_open=True)
    momentum = validate.real("--momentum", args.momentum, 0.0, 1.0, high_open=True)
    l2 = validate.real("--l2", args.l2, 0.0)
    seed = None if args.seed is None else validate.integer("--seed", args.seed, 0)
    if args.threads is not None:
        validate.integer("--threads", args.threads, 1)
    folder = args.checkpoint or resume_folder(args.resume)
    train_paths(args, folder).check()
    check_outputs(args)
    if args.checkpoint:
        if not args.resume:
            train.refuse_other_run(args.checkpoint, TrainState(), args.overwrite)
        validate.writable_folder(args.checkpoint, "--checkpoint")
    if comm is not None and comm.rank != 0:
        folder = None  # every rank holds the same state: rank 0 writes checkpoints
    lock = FolderLock(folder) if folder and Path(folder).is_dir() else None  # a second run on it is refused
    with lock or contextlib.nullcontext():
        train_and_save(args, progress, comm, folder, epochs, batch_size, lr, momentum, l2, seed)


def train_and_save(args, progress, comm, folder, epochs, batch_size, lr, momentum, l2, seed):
    """Build or resume the network, train it, test it, write --out; whatever stops it keeps the run."""
    backend = comm.backend if comm is not None else get_backend(args.device)
    if args.resume:
        net, state = load_checkpoint(args.resume, device=backend)
        if folder is None and (comm is None or comm.rank == 0):  # ranks other than 0 write no checkpoints
            raise ConfigError(f"--resume {args.resume}: a checkpoint file not named {CHECKPOINT_FILE}, so this run "
                              f"would have nowhere to go on checkpointing; add --checkpoint DIR, or resume its folder")
        seed = net.seed
    else:
        seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little")
        if comm is not None:
            seed = comm.broadcast(seed)  # rank 0's, so that every rank draws the same weights and batches
        net = Network(args.layers, activation=args.activation, output=args.output, cost=args.cost,
                      device=backend, dtype=args.dtype, seed=seed, init=args.init)  # before the data: fail fast
        state = TrainState()
    net.dataset = options.dataset_record(args)
    X_train, y_train, X_test, y_test = load_dataset(args.dataset, args.data_dir, progress=progress or None)
    if net.input_scale is None:  # the loaders scale pixels to [0, 1]: the model records that they were pixels
        net.input_scale = input_scale(args.dataset)
    X_train, y_train, X_val, y_val = split_validation(X_train, y_train, validation_size(args, len(X_train)))
    if net.sizes[0] != X_train.shape[1]:
        raise ConfigError(f"--layers starts with {net.sizes[0]} inputs, but {args.dataset} has "
                          f"{X_train.shape[1]} features per example")
    check_labels(net, args.dataset, y_train, y_test, where="the last of --layers sets the output units")
    if args.resume and state.settings["n_train"] != len(X_train):
        raise ConfigError(f"--resume {args.resume}: the run trained on {state.settings['n_train']} examples, but "
                          f"--dataset {args.dataset} with --validation-size {args.validation_size} leaves "
                          f"{len(X_train)}; use the first run's --dataset and --validation-size")
    data = fingerprint(X_train, y_train)
    if args.resume and state.fingerprint not in (None, data):
        raise ConfigError(f"--resume {args.resume}: the run trained on another training set than --dataset "
                          f"{args.dataset} with --validation-size {args.validation_size} gives (same size, other "
                          f"examples); use the first run's --dataset and --validation-size")
    state.fingerprint = data
    if (args.save_best or args.early_stop) and not len(X_val):
        raise ConfigError(f"--save-best and --early-stop compare validation accuracies, but --validation-size is "
                          f"{args.validation_size} for {args.dataset}: give --validation-size N > 0")
    if not args.quiet:
        show(header_line(args, net, state, (epochs, batch_size, lr, momentum, l2), (X_train, X_val, X_test)))
    if state.started and state.epoch >= epochs:
        show(f"nothing left to train: the run in {args.resume} has done {state.epoch} epochs and --epochs is "
             f"{epochs}; give --epochs more than {state.epoch} to go on")
    log = MetricsLog(args.log, state.history.records) if args.log else None
    say = None if args.quiet else (lambda r: show(epoch_line(r, epochs, backend.device)))
    each = lambda r: [f(r) for f in (log, say) if f is not None]
    try:
        net.fit(X_train, y_train, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, l2=l2,
                validation_data=(X_val, y_val) if len(X_val) else None, progress="bar" if progress else False,
                callback=each,
                state=state, checkpoint=folder, distributed=comm, engine=args.engine, overwrite=args.overwrite,
                early_stop=args.early_stop, save_best=args.out if args.save_best else None,
                precision=args.precision, threads=args.threads)
    except DivergenceError as e:
        kept = f"; {folder} holds the checkpoint of epoch {state.epoch}" if folder and state.epoch else ""
        if args.out and state.epoch and not args.save_best:  # in epoch 1 no epoch was good: nothing is saved
            save_model(net, args.out, history=state.history)
            raise DivergenceError(f"{e}; saved them to {args.out}{kept}") from e
        raise DivergenceError(f"{e}{kept}") from e
    except ModelFileError as e:  # the checkpoint could not be written (a full disk): keep the run elsewhere
        raise ModelFileError(keeping.after_failed_write(net, state, None, e, "continue")) from e
    except KeyboardInterrupt as e:
        saves = comm is None or comm.rank == 0  # under --distributed, rank 0 alone writes the checkpoint
        raise interrupts.Interrupted(interrupts.signal_of(e),
                                     keeping.after_stop(net, state, folder, epochs) if saves
                                     else f"rank {comm.rank} leaves the checkpoint to rank 0") from None
    finish(args, net, state, folder, epochs, (X_test, y_test))


def check_outputs(args):
    """Check the files a run will write, and the options that go with them, before any work."""
    if args.out:
        validate.writable_file(args.out, "--out")
    if args.save_best and not args.out:
        raise ConfigError("--save-best keeps the best epoch's model in --out: give --out FILE.npz")
    if args.early_stop is not None:
        validate.integer("--early-stop", args.early_stop, 1)
    if args.log:
        validate.writable_file(args.log, "--log")
        if Path(args.log).exists() and not args.overwrite:
            if not args.resume:
                raise ConfigError(f"--log {args.log} already exists; give another name, or --overwrite to replace it")
            try:  # a resumed run rewrites its own log, never a file of another kind
                metrics_log.read_log(args.log)
            except DataError:
                raise ConfigError(f"--log {args.log} already exists and is not a fastnn log; the resumed run would "
                                  f"replace it: give another name, or --overwrite to replace it") from None
    if args.plot:
        validate.writable_file(args.plot, "--plot")
        metrics_log.pyplot()  # matplotlib missing: say so now, not after training


def header_line(args, net, state, hyper, sets):
    """The run's first line: the network and every hyperparameter, then the data."""
    epochs, batch_size, lr, momentum, l2 = hyper
    again = f", resuming after epoch {state.epoch}" if state.started else f", init {net.init}"
    extra = f", early stop {args.early_stop}" if args.early_stop else ""
    extra += ", keeping the best epoch" if args.save_best else ""
    X_train, X_val, X_test = sets
    return (f"{net}, seed {net.seed}{again}; epochs {epochs}, batch size {batch_size}, lr {lr:g}, momentum "
            f"{momentum:g}, l2 {l2:g}, engine {args.engine}{extra}; {len(X_train)} training, {len(X_val)} "
            f"validation, {len(X_test)} test examples")


def watched(net):
    """What --early-stop and --save-best compare: the validation accuracy, or a regression's loss."""
    return "loss" if net.regression else "accuracy"


def finish(args, net, state, folder, epochs, test):
    """After training: say why it stopped early, test the model kept, write --out, draw the curves."""
    history = state.history
    if len(history) and history.records[-1]["epoch"] < epochs:
        best = history.best_epoch
        show(f"stopped early after epoch {history.records[-1]['epoch']}: no better validation "
             f"{watched(net)} for {args.early_stop} epochs (best: epoch {best}, "
             f"{history.records[best - 1][f'val_{watched(net)}']:.4f})")
    kept = net
    if args.save_best and history.best_epoch is not None:
        kept = load_model(args.out, device=net.backend)  # written by fit at the best epoch
    result = kept.evaluate(*test)
    which = f" (the model of epoch {history.best_epoch})" if kept is not net else ""
    show(f"test{which}: {measured(result)} on {len(test[0])} examples")
    if args.out and kept is net:
        write_out(args, net, state, folder)
    elif args.out:
        args.saved_to = args.out  # the best epoch's model, written by fit: a stop signal from here on says so
        if not args.quiet:
            best = history.best_epoch
            show(f"saved the model of epoch {best} (the best validation {watched(net)}, "
                 f"{history.records[best - 1][f'val_{watched(net)}']:.4f}) to {args.out}")
    if args.plot:
        metrics_log.plot(history.records, args.plot, title=str(net))
        if not args.quiet:
            show(f"drew the curves to {args.plot}")
    if not args.out and not args.quiet:
        where = f"; its checkpoint is in {folder}" if folder else ""
        show(f"the trained model was not saved (give --out FILE.npz to keep it){where}")


def write_out(args, net, state, folder):
    """Write --out, the last part of the run: a stop signal lets it finish; if it fails, the run is kept."""
    failed = None
    try:
        with interrupts.deferred():
            try:
                save_model(net, args.out, history=state.history)
                args.saved_to = args.out  # a stop signal from here on says the model was saved (see main)
            except ModelFileError as e:
                failed = ModelFileError(keeping.after_failed_write(net, state, folder, e, "write the model"))
    except KeyboardInterrupt as e:  # came while --out was written, acted on once it was done (or failed)
        raise interrupts.Interrupted(interrupts.signal_of(e), str(failed or "")) from None  # main says what was saved
    if failed:
        raise failed
    if not args.quiet:
        show(f"saved the model to {args.out}")


def resume_folder(resume):
    """The folder a resumed run goes on checkpointing into: --resume DIR, or DIR of --resume DIR/checkpoint.npz
    (None for a checkpoint file of another name: see check_resume)."""
    if not resume or not Path(resume).is_file():
        return resume or None
    return str(Path(resume).parent) if Path(resume).name == CHECKPOINT_FILE else None


def train_paths(args, folder):
    """The register of every file a training run reads and writes (see fastnn.paths)."""
    paths = Paths()
    if args.dataset not in DATASETS:
        paths.read("--dataset", args.dataset, "the dataset")
    if args.data_dir is not None:
        paths.read("--data-dir", args.data_dir, "the dataset's folder")
        for name in DATASETS.get(args.dataset, {}).get("md5", ()):
            for file in (name, name.removesuffix(".gz")):
                paths.read("--data-dir", Path(args.data_dir) / file, "a file of the dataset")
    if args.resume is not None:
        paths.read("--resume", checkpoint_file(args.resume), "the checkpoint this run resumes")
    if folder is not None:
        option = "--checkpoint" if args.checkpoint is not None else "--resume"
        paths.write(option, folder, "the checkpoint folder", folder=True, rereads="--resume",
                    also=[(CHECKPOINT_FILE, "the checkpoint this run writes after every epoch")])
    paths.write("--out", args.out, "the model")
    paths.write("--log", args.log, "the log")
    paths.write("--plot", args.plot, "the plot")
    return paths


_stdout_gone = []  # the error, once stdout failed under us (a reader such as 'head' went away, a full disk)


class StdoutFailed(FastnnError):
    """The answers a command prints could not be written to stdout."""


def show(line):
    """Print ``line``; once stdout fails (a broken pipe, a full disk), print nothing more and let the run go on."""
    if _stdout_gone:
        return
    try:
        print(line, flush=True)
    except (OSError, ValueError) as e:
        _stdout_gone.append(e)
        with contextlib.suppress(OSError, ValueError):  # later writes, and Python's last flush, go nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def emit(text, hint=""):
    """Write ``text`` (the command's answer) to stdout; StdoutFailed, one line, when it cannot be written."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as e:
        with contextlib.suppress(OSError, ValueError):  # Python's last flush goes nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise StdoutFailed(f"cannot write to stdout: {getattr(e, 'strerror', None) or e}{hint}") from None


def stdout_note(e):
    """What happened to stdout, for the last line of a run that went on regardless."""
    if isinstance(e, BrokenPipeError):
        return "stdout was closed early (broken pipe)"
    return f"stdout failed ({getattr(e, 'strerror', None) or e})"




def check_labels(net, dataset, y_train, y_test, where):
    """Refuse labels the output layer cannot represent before any work, test labels included."""
    cpu = get_backend("cpu")
    for which, y in (("training", y_train), ("test", y_test)):
        if y is None or net.regression or y.dtype.kind == "f":  # real targets: checked by fit against the net
            continue
        try:
            validate.class_labels(cpu, y, net.sizes[-1])
        except DataError as e:
            raise DataError(f"{e} (the {which} labels of {dataset}; {where})") from None


def run_evaluate(args, progress):
    paths = Paths()
    paths.read("--model", args.model, "the model")
    paths.read("--data-dir", args.data_dir, "the dataset's folder")
    paths.read("--dataset", args.dataset, "the dataset")
    paths.check()
    if (Path(args.model) / CHECKPOINT_FILE).is_file() or Path(args.model).name == CHECKPOINT_FILE:  # as --resume
        net = load_checkpoint(args.model, device=args.device)[0]
    else:
        net = load_model(args.model, device=args.device)
    recorded = net.dataset if args.dataset is None and net.dataset else {}
    dataset = args.dataset or recorded.get("name")
    if dataset is None:
        raise ConfigError(f"the model {args.model} does not record the dataset it was trained on (written by an "
                          f"older fastnn): give --dataset")
    data_dir = args.data_dir or recorded.get("data_dir")
    X_test, y_test = load_test_set(dataset, data_dir, progress=progress or None)
    if net.sizes[0] != X_test.shape[1]:
        raise ConfigError(f"the model {args.model} takes {net.sizes[0]} inputs, but {dataset} has "
                          f"{X_test.shape[1]} features per example")
    check_labels(net, dataset, None, y_test, where=f"the model {args.model} has {net.sizes[-1]} output units")
    result = net.evaluate(X_test, y_test)
    emit(f"test: {measured(result)} on {len(X_test)} examples ({dataset}, {net.backend.device})\n")


def run_predict(args, progress):
    paths = Paths()
    paths.read("--model", args.model, "the model")
    paths.read("INPUT", args.input, "the input")
    paths.write("--out", args.out, "the answers")
    paths.check()
    if args.out is not None:
        predict.check_out(args.out)
    net = load_model(args.model, device=args.device)
    X = predict.read_inputs(args.input)
    if X.shape[1] != net.sizes[0]:
        raise ConfigError(f"{args.input} has {X.shape[1]} features per example, but the model {args.model} takes "
                          f"{net.sizes[0]} inputs")
    try:
        answers = net.forward(X) if args.proba else net.predict(X)
    except DataError as e:
        raise DataError(f"{args.input}: {e}") from None
    if args.out:
        predict.write(answers, args.out)
        print(f"wrote {len(answers)} {'rows of outputs' if args.proba else 'labels'} to {args.out}", file=sys.stderr)
    else:
        emit("".join(line + "\n" for line in predict.lines(answers)), hint="; give --out FILE to write a file")


def run_plot(args, progress):
    out = args.out if args.out is not None else str(Path(args.log).with_suffix(".png"))
    paths = Paths()
    paths.read("LOG", args.log, "the log")
    paths.write("--out" if args.out is not None else "LOG with .png", out, "the plot")
    paths.check()
    if Path(out).exists() and not args.overwrite:
        raise ConfigError(f"{shown(out)} already exists; give another --out, or --overwrite to replace it")
    records = metrics_log.read_log(args.log)
    metrics_log.plot(records, out, title=shown(Path(args.log).name))
    show(f"drew the curves of {len(records)} epochs to {out}")


def run_info(args, progress):
    backend = get_backend(args.device)
    lines = [f"{key}: {value}" for key, value in machine.facts(backend).items()]
    lines += [f"engine: {engines.describe(backend)}", f"precision: {describe_precision(backend)}",
              f"blas threads policy: {thread_policy.describe()}"]
    emit("".join(line + "\n" for line in lines))


def device_name(args):
    """The device the command ran on, for a message about it."""
    try:
        return get_backend(args.device).device
    except FastnnError:
        return str(args.device)


def run_bench(args, progress):
    from . import bench
    from .bench import report as benchreport

    paths = Paths()
    paths.write("--json", args.json, "the report")
    paths.write("--chart", None if args.chart == "none" else args.chart, "the chart")
    paths.check()
    validate.writable_file(args.json, "--json")
    if args.chart != "none":
        validate.writable_file(args.chart, "--chart")
    if args.sweep:
        return run_bench_sweep(args)
    configs = bench.names("--configs", args.configs, list(bench.CONFIGS)) if args.configs else None
    impls = bench.names("--impl", args.impl, list(bench.IMPLS)) if args.impl else None
    report = bench.run(configs, impls, device=args.device, quick=args.quick, epochs=args.epochs, threads=args.threads,
                       precision=args.precision, progress=lambda line: print(f"bench: {line}", file=sys.stderr, flush=True))
    options = {"configs": args.configs, "impl": args.impl, "device": args.device, "epochs": args.epochs,
               "threads": args.threads,
               "precision": None if args.precision == "fp32" else args.precision, "json": args.json, "chart": args.chart}
    report["command"] = " ".join(["fastnn bench", *(["--quick"] if args.quick else []),
                                  *(f"--{name} {value}" for name, value in options.items() if value is not None)])
    show("\n".join(benchreport.table(report)))  # a failing stdout loses no report
    for line in benchreport.warnings(report):
        print(f"fastnn: warning: {line}", file=sys.stderr)
    benchreport.write_json(report, args.json)
    show(f"wrote {args.json}")
    if args.chart != "none":
        show(benchreport.write_chart(report, args.chart) or f"wrote {args.chart}")


PATH_OPTIONS = ("dataset", "data_dir", "model", "input", "log", "out", "plot", "checkpoint", "resume", "json", "chart")


def refuse_empty_paths(args):
    """An empty path option (--out '') is a mistake, not 'none': refuse it rather than ignore it."""
    for name in PATH_OPTIONS:
        if getattr(args, name, None) == "":
            option = name.upper() if name in ("input",) or (name == "log" and args.command == "plot") else \
                "--" + name.replace("_", "-")
            raise ConfigError(f"{option} is empty; give a file or folder name")


def run_sweep(args, progress):
    sweep.run(args, progress, show, validation_size, check_labels)


def run_bench_sweep(args):
    from .bench import report as benchreport
    from .bench import sweep as sweepbench
    from .sweep import number_list

    ks = number_list("--sweep", args.sweep, int)
    impls = number_list("--impl", args.impl, str) if args.impl else list(sweepbench.IMPLS)
    unknown = [name for name in impls if name not in sweepbench.IMPLS]
    if unknown:
        raise ConfigError(f"--impl of --sweep must be of {', '.join(sweepbench.IMPLS)}; got {unknown[0]!r}")
    epochs = validate.integer("--epochs", args.epochs, 1) if args.epochs is not None else 1
    examples = validate.integer("--examples", args.examples, 1) if args.examples is not None else 10000
    report = sweepbench.run(ks, epochs, examples, impls, args.device,
                            say=lambda line: print(f"bench: {line}", file=sys.stderr, flush=True))
    report["command"] = " ".join(["fastnn bench --sweep", args.sweep, *(["--impl", args.impl] if args.impl else []),
                                  "--epochs", str(epochs), "--examples", str(examples), "--device", args.device])
    show("\n".join(sweepbench.table(report)))  # a failing stdout loses no report
    benchreport.write_json(report, args.json)
    show(f"wrote {args.json}")


COMMANDS = {"train": run_train, "sweep": run_sweep, "evaluate": run_evaluate, "predict": run_predict, "plot": run_plot,
            "info": run_info, "bench": run_bench}


_closed_at_start = []  # non-empty when this process started with stdout closed


def show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings (NotLearningWarning) as one line on stderr."""
    first = (str(message).strip().splitlines() or [""])[0]  # a library's warning may carry a whole traceback
    with contextlib.suppress(OSError, ValueError):  # a failing stderr must not stop the run
        print(f"fastnn: warning: {shown(first)}", file=sys.stderr, flush=True)


def main(argv=None):
    """Run the fastnn command; return its exit status."""
    for name in ("stdout", "stderr"):  # started with the stream closed ('>&-'): writes go nowhere, not to None
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 (for the life of the process)
            if name == "stdout":
                _closed_at_start.append(True)
    for stream in (sys.stdout, sys.stderr):  # a path with a stray byte prints as \xff, never a UnicodeEncodeError
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    args = make_parser().parse_args(argv)
    quiet = getattr(args, "quiet", False) or args.command == "info"  # info prints the reason itself
    logging.basicConfig(format="%(message)s", level=logging.ERROR if quiet else logging.WARNING, stream=sys.stderr)
    progress = sys.stderr.isatty() and not getattr(args, "quiet", False)
    _stdout_gone.clear()
    try:
        refuse_empty_paths(args)
        if _closed_at_start and args.command in ("predict", "info", "evaluate") and not getattr(args, "out", None):
            raise StdoutFailed("stdout is closed; the answers have nowhere to go" +
                               ("; give --out FILE" if args.command == "predict" else ""))
        if _closed_at_start:
            _stdout_gone.append(OSError(errno.EBADF, "closed when the command started"))
        with interrupts.installed(restore=argv is not None), warnings.catch_warnings(), \
                np.errstate(all="ignore"):  # argv None: this process's; numpy's overflow notes: fastnn checks itself
            warnings.showwarning = show_warning
            COMMANDS[args.command](args, progress)
    except ConfigError as e:
        return fail(f"error: {e}", 2)
    except FastnnError as e:
        return fail(f"error: {e}", 1)
    except KeyboardInterrupt as e:
        signum = interrupts.signal_of(e)
        said = str(e)  # fit's and --out's handlers say what was saved; elsewhere in train, say what is on disk
        if not said and getattr(args, "saved_to", None):  # after the model was written (a second signal, say, that
            said = f"the run had finished and the model was saved to {args.saved_to}"  # replaced --out's line)
        if not said and args.command == "train":
            folder = getattr(args, "checkpoint", None) or resume_folder(getattr(args, "resume", None)) or \
                getattr(args, "resume", None)
            kept = Path(folder) / CHECKPOINT_FILE if folder else None
            said = (f"{shown(kept)} holds the last completed epoch" if kept is not None and kept.is_file()
                    else "nothing was saved")
        return fail(f"interrupted ({interrupts.Interrupted(signum).name}){f'; {said}' if said else ''}", 128 + signum)
    except BrokenPipeError:  # stdout closed by its reader (fastnn train goes on regardless: see show)
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return fail("stdout was closed early (broken pipe)", 1)
    except Exception as e:  # a bug: still one line, the traceback on request
        if is_sticky_fault(e):  # a dead CUDA context outside training (loading data onto the GPU)
            print(f"fastnn: error: {context_lost_message(device_name(args), e)}", file=sys.stderr)
            return 1
        if is_out_of_memory(e):
            print(f"fastnn: error: {out_of_memory_message(device_name(args), e, getattr(args, 'batch_size', None))}",
                  file=sys.stderr)
            return 1
        if os.environ.get("FASTNN_DEBUG"):
            raise
        return fail(f"internal error: {type(e).__name__}: {e} (set FASTNN_DEBUG=1 for the traceback)", 70)
    if _stdout_gone and args.command in ("train", "bench", "plot"):
        went_on = {"train": "training went on to the end", "bench": "the benchmark went on to the end",
                   "plot": "the plot was drawn"}[args.command]
        saved = f" and saved the model to {args.out}" if args.command == "train" and args.out else ""
        with contextlib.suppress(OSError, ValueError):
            print(f"fastnn: {stdout_note(_stdout_gone[0])}; {went_on}{saved}", file=sys.stderr)
    return 0


AGREE_SECONDS = 5  # how long a rank that failed waits to learn whether every rank failed with it


def fail(what, code):
    """Print ``fastnn: what`` on stderr and return ``code``; under --distributed, end the job cleanly.

    When every rank failed (a check that fails everywhere), only rank 0 prints and all exit with
    ``code``.  A rank that failed alone prints with its rank and ends every rank (MPI_Abort), so
    that the others do not wait for it forever.
    """
    what = shown(what)  # one line whatever a path in it holds (a newline, a stray byte)
    comm = distributed.joined()
    if comm is not None and not comm.all_failed(AGREE_SECONDS):
        print(f"fastnn: rank {comm.rank} of {comm.size}: {what}; ending every rank", file=sys.stderr, flush=True)
        comm.abort(code)
    if comm is None or comm.rank == 0:
        print(f"fastnn: {what}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
