"""The fastnn command: train, evaluate, info.  The only module that prints.

Every error becomes one line on stderr and a non-zero exit: 2 for a bad option, 1 for a
failure (bad data, missing dataset or device, divergence), 128 + the signal's number for a stop
signal (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP; see ``fastnn.interrupts``).
"""

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from . import __version__, distributed, engines, interrupts, keeping, validate
from . import threads as thread_policy
from .activations import HIDDEN, OUTPUT
from .backend import PRECISIONS, describe_precision, get_backend, is_out_of_memory, out_of_memory_message
from .bench import machine
from .checkpoint import CHECKPOINT_FILE, checkpoint_file, load_checkpoint, load_model, save_model
from .costs import COSTS
from .data import DATASETS, load_dataset, split_validation
from .errors import ConfigError, DataError, DivergenceError, FastnnError, ModelFileError
from .files import FolderLock
from .network import Network
from .state import TrainState


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, not a usage block."""

    def error(self, message):
        print(f"fastnn: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(2)


def layers_arg(text):
    try:
        return validate.layer_sizes(text.split(","))
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def make_parser():
    parser = Parser(prog="fastnn", description="Train fully-connected networks, a whole mini-batch at once.")
    parser.add_argument("--version", action="version", version=f"fastnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,info,bench}")

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
    train.add_argument("--checkpoint", metavar="DIR",
                       help="save DIR/checkpoint.npz (model, momentum, random state, history) after every epoch")
    train.add_argument("--resume", metavar="DIR",
                       help="continue the run checkpointed in DIR: the same command as that run, plus --resume DIR")
    train.add_argument("--quiet", action="store_true", help="print only the final result")
    train.add_argument("--engine", default="auto", choices=list(engines.ENGINES),
                       help="auto: the device's fused engine where the network fits, else generic (see 'fastnn info')")
    train.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                       help="tf32: float32 cuBLAS matmuls on TF32 tensor cores (CUDA; ignored on the CPU)")
    train.add_argument("--threads", type=int,
                       help="BLAS threads while training on the CPU (default: picked from the network's size; see info)")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over the ranks of 'mpirun -n N' (MPI on CPUs, NCCL on GPUs)")

    evaluate = sub.add_parser("evaluate", help="loss and accuracy of a saved model on a test split")
    evaluate.add_argument("--model", required=True, help="model file written by 'fastnn train --out'")
    data_options(evaluate)

    info = sub.add_parser("info", help="versions, the backend chosen and why, GPU and BLAS")
    info.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: $FASTNN_DEVICE or auto)")
    bench_options(sub.add_parser("bench", help="time fastnn against the textbook loop, PyTorch and the GEMM floor"))
    return parser


def bench_options(p):
    p.add_argument("--configs", help="comma-separated, of textbook,mid,wide,huge (default: what fits the devices)")
    p.add_argument("--impl", help="comma-separated, of fastnn,textbook-loop,torch,torch-graph,jax (default: all; the "
                   "floor always runs; torch-graph on a GPU only)")
    p.add_argument("--device", default="auto", help="auto (the CPU, and the GPU when usable), cpu, cuda or cuda:N")
    p.add_argument("--quick", action="store_true", help="a short smoke run: 2,000 examples, one timed epoch")
    p.add_argument("--epochs", type=int, help="timed epochs per implementation, median reported (default 3; quick 1)")
    p.add_argument("--threads", type=int, help="BLAS and PyTorch threads (default: the number of cores)")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="fastnn's matmuls: fp32 or tf32 (CUDA)")
    p.add_argument("--threads", type=int, help="BLAS, PyTorch and XLA threads (default: the number of cores; fastnn: "
                   "its training policy)")
    p.add_argument("--json", default="fastnn-bench.json", help="write the report here (fastnn-bench.json)")
    p.add_argument("--chart", default="fastnn-bench.png", help="write the chart here (fastnn-bench.png; 'none': no chart)")


def data_options(p):
    p.add_argument("--dataset", default="mnist", help=f"{' | '.join(DATASETS)} | FILE.npz")
    p.add_argument("--data-dir", help="folder holding the dataset's IDX files")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: $FASTNN_DEVICE or auto)")


def epoch_line(record, epochs, device):
    line = f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}"
    if "val_accuracy" in record:
        line += f", val loss {record['val_loss']:.4f}, val accuracy {record['val_accuracy']:.4f}"
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
        args.out, progress = None, False
    epochs = validate.integer("--epochs", args.epochs, 0)
    batch_size = validate.integer("--batch-size", args.batch_size, 1)
    lr = validate.real("--lr", args.lr, 0.0, low_open=True)
    momentum = validate.real("--momentum", args.momentum, 0.0, 1.0, high_open=True)
    l2 = validate.real("--l2", args.l2, 0.0)
    seed = None if args.seed is None else validate.integer("--seed", args.seed, 0)
    if args.threads is not None:
        validate.integer("--threads", args.threads, 1)
    if args.out:
        validate.writable_file(args.out, "--out")
    folder = args.checkpoint or resume_folder(args.resume)
    if args.checkpoint:
        validate.writable_folder(args.checkpoint, "--checkpoint")
    if args.out:
        keeping.refuse_own_inputs(args.out, run_inputs(args, folder))
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
        check_resume(args, net, state, seed, {"batch_size": batch_size, "lr": lr, "momentum": momentum, "l2": l2})
        if folder is None and (comm is None or comm.rank == 0):  # ranks other than 0 write no checkpoints
            raise ConfigError(f"--resume {args.resume}: a checkpoint file not named {CHECKPOINT_FILE}, so this run "
                              f"would have nowhere to go on checkpointing; add --checkpoint DIR, or resume its folder")
        seed = net.seed
    else:
        seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little")
        if comm is not None:
            seed = comm.broadcast(seed)  # rank 0's, so that every rank draws the same weights and batches
        net = Network(args.layers, activation=args.activation, output=args.output, cost=args.cost,
                      device=backend, dtype=args.dtype, seed=seed)  # before the data: bad options fail fast
        state = TrainState()
    X_train, y_train, X_test, y_test = load_dataset(args.dataset, args.data_dir, progress=progress or None)
    X_train, y_train, X_val, y_val = split_validation(X_train, y_train, validation_size(args, len(X_train)))
    if net.sizes[0] != X_train.shape[1]:
        raise ConfigError(f"--layers starts with {net.sizes[0]} inputs, but {args.dataset} has "
                          f"{X_train.shape[1]} features per example")
    check_labels(net, args.dataset, y_train, y_test, where="the last of --layers sets the output units")
    if args.resume and state.settings["n_train"] != len(X_train):
        raise ConfigError(f"--resume {args.resume}: the run trained on {state.settings['n_train']} examples, but "
                          f"--dataset {args.dataset} with --validation-size {args.validation_size} leaves "
                          f"{len(X_train)}; use the first run's --dataset and --validation-size")
    if not args.quiet:
        again = f", resuming after epoch {state.epoch}" if state.started else ""
        show(f"{net}, seed {seed}{again}; {len(X_train)} training, {len(X_val)} validation, {len(X_test)} test "
             "examples")
    say = None if args.quiet else (lambda r: show(epoch_line(r, epochs, backend.device)))
    try:
        net.fit(X_train, y_train, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, l2=l2,
                validation_data=(X_val, y_val) if len(X_val) else None, progress=progress, callback=say,
                state=state, checkpoint=folder, distributed=comm, engine=args.engine,
                precision=args.precision, threads=args.threads)
        result = net.evaluate(X_test, y_test)
    except DivergenceError as e:
        kept = f"; {folder} holds the checkpoint of epoch {state.epoch}" if folder and state.epoch else ""
        if args.out and state.epoch:  # in epoch 1 no epoch was good: nothing is saved as if it were
            save_model(net, args.out)
            raise DivergenceError(f"{e}; saved them to {args.out}{kept}") from e
        raise DivergenceError(f"{e}{kept}") from e
    except ModelFileError as e:  # the checkpoint could not be written (a full disk): keep the run elsewhere
        raise ModelFileError(keeping.after_failed_write(net, state, None, e, "continue")) from e
    except KeyboardInterrupt as e:
        saves = comm is None or comm.rank == 0  # under --distributed, rank 0 alone writes the checkpoint
        raise interrupts.Interrupted(interrupts.signal_of(e),
                                     keeping.after_stop(net, state, folder, epochs) if saves else "") from None
    show(f"test: loss {result['loss']:.4f}, accuracy {result['accuracy']:.4f} on {len(X_test)} examples")
    if args.out:
        write_out(args, net, state, folder)


def write_out(args, net, state, folder):
    """Write --out, the last part of the run: a stop signal lets it finish; if it fails, the run is kept."""
    failed = None
    try:
        with interrupts.deferred():
            try:
                save_model(net, args.out)
            except ModelFileError as e:
                failed = ModelFileError(keeping.after_failed_write(net, state, folder, e, "write the model"))
    except KeyboardInterrupt as e:  # came while --out was written, acted on once it was done (or failed)
        said = str(failed) if failed else f"the run had finished and the model was saved to {args.out}"
        raise interrupts.Interrupted(interrupts.signal_of(e), said) from None
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


def run_inputs(args, folder):
    """The files a training run reads or keeps writing, which --out must not overwrite."""
    inputs = {args.dataset: "the dataset (--dataset)"} if Path(args.dataset).is_file() else {}
    if args.resume:
        inputs[checkpoint_file(args.resume)] = "the checkpoint this run resumes (--resume)"
    if folder:
        inputs[Path(folder) / CHECKPOINT_FILE] = "the checkpoint this run writes after every epoch"
    if args.data_dir and args.dataset in DATASETS:
        for name in DATASETS[args.dataset]["md5"]:
            for file in (name, name.removesuffix(".gz")):
                inputs[Path(args.data_dir) / file] = f"a file of the dataset (--data-dir {args.data_dir})"
    return inputs


_stdout_gone = []  # non-empty once stdout was closed under us (a reader such as 'head' went away)


def show(line):
    """Print ``line``; once stdout is a broken pipe, print nothing more and let the run go on."""
    if _stdout_gone:
        return
    try:
        print(line, flush=True)
    except BrokenPipeError:
        _stdout_gone.append(line)
        with contextlib.suppress(OSError, ValueError):  # later writes, and Python's last flush, go nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def check_resume(args, net, state, seed, settings):
    """Refuse --resume when an option of this command disagrees with the checkpointed run."""
    had = {"--layers": ",".join(map(str, net.sizes)), "--output": net.activations[-1].name,
           "--cost": net.cost.name, "--dtype": net.dtype.name,
           **{f"--{k.replace('_', '-')}": state.settings[k] for k in settings}}
    has = {"--layers": ",".join(map(str, args.layers)), "--output": args.output or args.activation,
           "--cost": args.cost, "--dtype": args.dtype, **{f"--{k.replace('_', '-')}": v for k, v in settings.items()}}
    if len(net.sizes) > 2:
        had["--activation"], has["--activation"] = net.activations[0].name, args.activation
    if seed is not None and net.seed is not None:
        had["--seed"], has["--seed"] = net.seed, seed
    differ = [k for k in had if had[k] != has[k]]
    if differ:
        raise ConfigError(f"--resume {args.resume}: the checkpointed run used "
                          f"{' '.join(f'{k} {had[k]}' for k in differ)}, but this command has "
                          f"{' '.join(f'{k} {has[k]}' for k in differ)}; resume with the first run's options")


def check_labels(net, dataset, y_train, y_test, where):
    """Refuse labels the output layer cannot represent before any work, test labels included."""
    cpu = get_backend("cpu")
    for which, y in (("training", y_train), ("test", y_test)):
        if y is None:
            continue
        try:
            validate.class_labels(cpu, y, net.sizes[-1])
        except DataError as e:
            raise DataError(f"{e} (the {which} labels of {dataset}; {where})") from None


def run_evaluate(args, progress):
    net = load_model(args.model, device=args.device)
    _, _, X_test, y_test = load_dataset(args.dataset, args.data_dir, progress=progress or None)
    if net.sizes[0] != X_test.shape[1]:
        raise ConfigError(f"the model {args.model} takes {net.sizes[0]} inputs, but {args.dataset} has "
                          f"{X_test.shape[1]} features per example")
    check_labels(net, args.dataset, None, y_test, where=f"the model {args.model} has {net.sizes[-1]} output units")
    result = net.evaluate(X_test, y_test)
    print(f"test: loss {result['loss']:.4f}, accuracy {result['accuracy']:.4f} "
          f"on {len(X_test)} examples ({args.dataset}, {net.backend.device})")


def run_info(args, progress):
    backend = get_backend(args.device)
    for key, value in machine.facts(backend).items():
        print(f"{key}: {value}")
    print(f"engine: {engines.describe(backend)}")
    print(f"precision: {describe_precision(backend)}")
    print(f"blas threads policy: {thread_policy.describe()}")


def device_name(args):
    """The device the command ran on, for a message about it."""
    try:
        return get_backend(args.device).device
    except FastnnError:
        return str(args.device)


def run_bench(args, progress):
    from . import bench
    from .bench import report as benchreport

    configs = bench.names("--configs", args.configs, list(bench.CONFIGS)) if args.configs else None
    impls = bench.names("--impl", args.impl, list(bench.IMPLS)) if args.impl else None
    report = bench.run(configs, impls, device=args.device, quick=args.quick, epochs=args.epochs, threads=args.threads,
                       precision=args.precision, progress=lambda line: print(f"bench: {line}", file=sys.stderr, flush=True))
    options = {"configs": args.configs, "impl": args.impl, "device": args.device, "epochs": args.epochs,
               "threads": args.threads,
               "precision": None if args.precision == "fp32" else args.precision, "json": args.json, "chart": args.chart}
    report["command"] = " ".join(["fastnn bench", *(["--quick"] if args.quick else []),
                                  *(f"--{name} {value}" for name, value in options.items() if value is not None)])
    print("\n".join(benchreport.table(report)))
    benchreport.write_json(report, args.json)
    print(f"wrote {args.json}")
    if args.chart != "none":
        print(benchreport.write_chart(report, args.chart) or f"wrote {args.chart}")


COMMANDS = {"train": run_train, "evaluate": run_evaluate, "info": run_info, "bench": run_bench}


def main(argv=None):
    """Run the fastnn command; return its exit status."""
    logging.basicConfig(format="%(message)s", level=logging.WARNING, stream=sys.stderr)
    args = make_parser().parse_args(argv)
    progress = sys.stderr.isatty() and not getattr(args, "quiet", False)
    _stdout_gone.clear()
    try:
        with interrupts.installed(restore=argv is not None):  # argv None: the process's own command line
            COMMANDS[args.command](args, progress)
    except ConfigError as e:
        return fail(f"error: {e}", 2)
    except FastnnError as e:
        return fail(f"error: {e}", 1)
    except KeyboardInterrupt as e:
        signum = interrupts.signal_of(e)
        return fail(f"interrupted ({interrupts.Interrupted(signum).name}){f'; {e}' if str(e) else ''}", 128 + signum)
    except BrokenPipeError:  # stdout closed by its reader (fastnn train goes on regardless: see show)
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return fail("stdout was closed early (broken pipe)", 1)
    except Exception as e:  # a bug: still one line, the traceback on request
        if is_out_of_memory(e):
            print(f"fastnn: error: {out_of_memory_message(device_name(args), e, getattr(args, 'batch_size', None))}",
                  file=sys.stderr)
            return 1
        if os.environ.get("FASTNN_DEBUG"):
            raise
        return fail(f"internal error: {type(e).__name__}: {e} (set FASTNN_DEBUG=1 for the traceback)", 70)
    if _stdout_gone and args.command == "train":
        print("fastnn: stdout was closed early (broken pipe); training went on to the end"
              f"{f' and saved the model to {args.out}' if args.out else ''}", file=sys.stderr)
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
