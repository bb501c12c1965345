"""The fastnn command: train, evaluate, info.  The only module that prints.

Every error becomes one line on stderr and a non-zero exit: 2 for a bad option, 1 for a
failure (bad data, missing dataset or device, divergence), 130 for Ctrl-C.
"""

import argparse
import logging
import math
import os
import sys

from . import __version__, distributed, machine, validate
from .backend import get_backend
from .checkpoint import load_model, save_model
from .data import DATASETS, load_dataset, split_validation
from .errors import ConfigError, DivergenceError, FastnnError
from .network import Network
from .activations import HIDDEN, OUTPUT
from .costs import COSTS


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not a usage block."""

    def error(self, message):
        print(f"fastnn: error: {message} (see 'fastnn {self.prog.split()[-1]} --help')", file=sys.stderr)
        sys.exit(2)


def layers_arg(text):
    try:
        return validate.layer_sizes(text.split(","))
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def make_parser():
    parser = Parser(prog="fastnn", description="Train fully-connected networks, a whole mini-batch at once.")
    parser.add_argument("--version", action="version", version=f"fastnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,info}")

    train = sub.add_parser("train", help="train a network (defaults: the textbook's MNIST run)")
    data_options(train)
    train.add_argument("--layers", type=layers_arg, default=[784, 30, 10], help="units per layer (784,30,10)")
    train.add_argument("--activation", default="sigmoid", choices=list(HIDDEN), help="hidden activation")
    train.add_argument("--output", choices=list(OUTPUT), help="output activation (default: --activation)")
    train.add_argument("--cost", default="quadratic", choices=list(COSTS))
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--batch-size", type=int, default=10)
    train.add_argument("--lr", type=float, default=3.0, help="learning rate η")
    train.add_argument("--momentum", type=float, default=0.0, help="momentum μ in [0, 1)")
    train.add_argument("--l2", type=float, default=0.0, help="L2 weight decay λ (scaled λ/n)")
    train.add_argument("--dtype", default="float32", choices=list(validate.DTYPES))
    train.add_argument("--seed", type=int, help="seed for weights and shuffling (default: random, printed)")
    train.add_argument("--validation-size", default="auto",
                       help="examples carved off the training set (auto: 10000 for mnist/fashion-mnist, 0 for .npz)")
    train.add_argument("--out", help="save the trained model here (.npz)")
    train.add_argument("--quiet", action="store_true", help="print only the final result")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over the ranks of 'mpirun -n N' (MPI on CPUs, NCCL on GPUs)")

    evaluate = sub.add_parser("evaluate", help="loss and accuracy of a saved model on a test split")
    evaluate.add_argument("--model", required=True, help="model file written by 'fastnn train --out'")
    data_options(evaluate)

    info = sub.add_parser("info", help="versions, the backend chosen and why, GPU and BLAS")
    info.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: $FASTNN_DEVICE or auto)")
    return parser


def data_options(p):
    p.add_argument("--dataset", default="mnist", help=f"{' | '.join(DATASETS)} | FILE.npz")
    p.add_argument("--data-dir", help="folder holding the dataset's IDX files")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: $FASTNN_DEVICE or auto)")


def epoch_line(record, epochs, device):
    line = f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}"
    if "val_accuracy" in record:
        line += f", val loss {record['val_loss']:.4f}, val accuracy {record['val_accuracy']:.4f}"
    return line + f", {record['seconds']:.2f} s, {record['examples_per_second']:,.0f} ex/s, {device}"


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
        args.out, progress = None, False
    epochs = validate.integer("--epochs", args.epochs, 0)
    batch_size = validate.integer("--batch-size", args.batch_size, 1)
    lr = validate.real("--lr", args.lr, 0.0, low_open=True)
    momentum = validate.real("--momentum", args.momentum, 0.0, 1.0, high_open=True)
    l2 = validate.real("--l2", args.l2, 0.0)
    backend = comm.backend if comm is not None else get_backend(args.device)
    X_train, y_train, X_test, y_test = load_dataset(args.dataset, args.data_dir, progress=progress or None)
    X_train, y_train, X_val, y_val = split_validation(X_train, y_train, validation_size(args, len(X_train)))
    if args.layers[0] != X_train.shape[1]:
        raise ConfigError(f"--layers starts with {args.layers[0]} inputs, but {args.dataset} has "
                          f"{X_train.shape[1]} features per example")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    if comm is not None:
        seed = comm.broadcast(seed)  # rank 0's, so that every rank draws the same weights and batches
    net = Network(args.layers, activation=args.activation, output=args.output, cost=args.cost,
                  device=backend, dtype=args.dtype, seed=seed)
    if not args.quiet:
        print(f"{net}, seed {seed}; {len(X_train)} training, {len(X_val)} validation, {len(X_test)} test examples")
    say = None if args.quiet else (lambda r: print(epoch_line(r, epochs, backend.device), flush=True))
    try:
        net.fit(X_train, y_train, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, l2=l2,
                validation_data=(X_val, y_val) if len(X_val) else None, progress=progress, callback=say,
                distributed=comm)
    except DivergenceError as e:
        if args.out:
            save_model(net, args.out)
            raise DivergenceError(f"{e}; saved them to {args.out}") from e
        raise
    result = net.evaluate(X_test, y_test)
    print(f"test: loss {result['loss']:.4f}, accuracy {result['accuracy']:.4f} on {len(X_test)} examples")
    if args.out:
        save_model(net, args.out)
        if not args.quiet:
            print(f"saved the model to {args.out}")


def run_evaluate(args, progress):
    net = load_model(args.model, device=args.device)
    _, _, X_test, y_test = load_dataset(args.dataset, args.data_dir, progress=progress or None)
    result = net.evaluate(X_test, y_test)
    print(f"test: loss {result['loss']:.4f}, accuracy {result['accuracy']:.4f} "
          f"on {len(X_test)} examples ({args.dataset}, {net.backend.device})")


def run_info(args, progress):
    for key, value in machine.facts(get_backend(args.device)).items():
        print(f"{key}: {value}")


COMMANDS = {"train": run_train, "evaluate": run_evaluate, "info": run_info}


def main(argv=None):
    """Run the fastnn command; return its exit status."""
    logging.basicConfig(format="%(message)s", level=logging.WARNING, stream=sys.stderr)
    args = make_parser().parse_args(argv)
    progress = sys.stderr.isatty() and not getattr(args, "quiet", False)
    try:
        COMMANDS[args.command](args, progress)
    except ConfigError as e:
        return fail(f"error: {e}", 2)
    except FastnnError as e:
        return fail(f"error: {e}", 1)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Exception as e:  # a bug: still one line, the traceback on request
        if os.environ.get("FASTNN_DEBUG"):
            raise
        return fail(f"internal error: {type(e).__name__}: {e} (set FASTNN_DEBUG=1 for the traceback)", 70)
    return 0


AGREE_SECONDS = 5  # how long a rank that failed waits to learn whether every rank failed with it


def fail(what, code):
    """Print ``fastnn: what`` on stderr and return ``code``; under --distributed, end the job cleanly.

    When every rank failed (a check that fails everywhere), only rank 0 prints and all exit with
    ``code``.  A rank that failed alone prints with its rank and ends every rank (MPI_Abort), so
    that the others do not wait for it forever.
    """
    comm = distributed.joined()
    if comm is not None and not comm.all_failed(AGREE_SECONDS):
        print(f"fastnn: rank {comm.rank} of {comm.size}: {what}; ending every rank", file=sys.stderr, flush=True)
        comm.abort(code)
    if comm is None or comm.rank == 0:
        print(f"fastnn: {what}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
