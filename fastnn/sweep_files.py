"""What ``fastnn sweep`` reads and writes: its paths (checked up front), the log, the table, the plot and
the checkpoint of the whole sweep.

The checkpoint (``sweep-checkpoint.npz``) holds every model's parameters as one (K, n_params) array
``params`` (and ``velocity`` when any model has momentum) and one JSON record ``sweep``: the command's
options, and per model its completed epochs, generator state, settings and history.  Written atomically.
"""

import json
from pathlib import Path

import numpy as np

from . import metrics_log, readers, validate
from .checkpoint import rng_state_problem
from .errors import ConfigError, MissingPackage, ModelFileError
from .files import atomic_write, same_file
from .paths import Paths
from .state import TrainState

FILE = "sweep-checkpoint.npz"
FORMAT = "fastnn-sweep"
VERSION = 1
OUTPUTS = {"table": "sweep-table.txt", "log": "sweep-log.jsonl", "plot": "sweep.png", "best": "best-model.npz",
           "ensemble": "best-ensemble.npz", "models": "models"}


def name(setting, seed=None):
    """'lr0.5-l2_0-momentum0-batch10' (-seed3): a setting (and seed) as a file name."""
    text = f"lr{setting['lr']:g}-l2_{setting['l2']:g}-momentum{setting['momentum']:g}-batch{setting['batch_size']}"
    return text if seed is None else f"{text}-seed{seed}"


def check_paths(args):
    """The output paths in --out-dir, checked before any work: none may be an input (the dataset, the
    checkpoint resumed), none may replace an earlier sweep's unless --overwrite or --resume."""
    out = validate.as_path(args.out_dir, "--out-dir")
    validate.writable_folder(out, "--out-dir")
    files = {key: out / file for key, file in OUTPUTS.items()}
    inputs = {}
    if Path(str(args.dataset)).is_file():
        inputs[Path(args.dataset)] = "the dataset (--dataset)"
    for flag, folder in (("--resume", args.resume), ("--checkpoint", args.checkpoint)):
        if folder:
            inputs[Path(folder) / FILE] = f"the sweep's checkpoint ({flag})"
            if Path(folder).resolve() == out.resolve() or same_file(folder, out):
                inputs[out / FILE] = f"the sweep's checkpoint ({flag})"
    for key, path in files.items():
        for source, what in inputs.items():
            if same_file(path, source):
                raise ConfigError(f"--out-dir {out}: the sweep's {key} file {path} is {what}; choose another folder")
    if args.checkpoint:
        validate.writable_folder(args.checkpoint, "--checkpoint")
        if not args.resume and not args.overwrite and (Path(args.checkpoint) / FILE).exists():
            raise ConfigError(f"--checkpoint {args.checkpoint} already holds a sweep's checkpoint; continue it "
                              f"(--resume {args.checkpoint}) or replace it (--overwrite)")
    stop_file = out / "checkpoint" / FILE  # where a stop signal saves a sweep without --checkpoint
    earlier = [str(p) for p in [*files.values(), *([] if args.checkpoint else [stop_file])] if p.exists()]
    if earlier and not (args.overwrite or args.resume):
        raise ConfigError(f"--out-dir {out} already holds an earlier sweep's {earlier[0]}; choose another folder, or "
                          f"--overwrite to replace it")
    if not args.ensemble:
        files.pop("ensemble")
    paths = Paths()  # the command's one register (fastnn.paths): links, names, lengths, each output's folder
    paths.read("--dataset", args.dataset if Path(str(args.dataset)).is_file() else None, "the dataset")
    for key, path in files.items():
        paths.write("--out-dir", path, f"the sweep's {key} file")
    paths.check()
    return {key: str(p) for key, p in files.items()}


class Log:
    """Every epoch of every model as JSON lines (the model's index, seed and setting in each), rewritten whole."""

    def __init__(self, path, models, settings):
        self.path, self.models = path, models

    def write(self, states):
        lines = []
        for i, ((setting, seed), state) in enumerate(zip(self.models, states)):
            for record in state.history.records:
                lines.append(json.dumps({"model": i, "seed": seed, **setting, **record}))
        atomic_write(self.path, lambda f: f.write(("\n".join(lines) + "\n").encode()))


def _spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}"


def table(models, settings, swept, histories):
    """One row per setting: its values, final and best validation accuracy (mean ± spread over seeds), time."""
    head = f"{'setting':<44} {'final val acc':>17} {'best val acc':>17} {'time/model':>10}  diverged"
    rows = [head, "-" * len(head)]
    for setting in settings:
        mine = [h for (s, _), h in zip(models, histories) if s == setting]
        final = [h.val_accuracy[-1] if len(h) else None for h in mine]
        best = [max(h.val_accuracy) if len(h) else None for h in mine]
        seconds = np.mean([sum(h.seconds) for h in mine])
        diverged = sum(h.diverged is not None for h in mine)
        rows.append(f"{name(setting):<44} {_spread(final):>17} {_spread(best):>17} {seconds:>9.1f}s  "
                    f"{diverged}/{len(mine)}")
    return rows


def write_text(path, rows):
    atomic_write(path, lambda f: f.write(("\n".join(rows) + "\n").encode()))


def plot(path, models, settings, swept, histories):
    """Draw the sweep: validation accuracy per epoch per setting, and final accuracy against each swept
    hyperparameter with the seeds' spread.  Returns the line that says what was drawn (or why not)."""
    try:
        plt = metrics_log.pyplot()
    except MissingPackage as e:
        return f"no plot: {e}"
    fig, axes = plt.subplots(1, 1 + len(swept), figsize=(5 * (1 + len(swept)), 4), squeeze=False)
    axes = axes[0]
    finals = {}
    for setting in settings:
        mine = [h for (s, _), h in zip(models, histories) if s == setting and len(h)]
        if not mine:
            continue
        length = min(len(h) for h in mine)
        curve = np.mean([h.val_accuracy[:length] for h in mine], axis=0)
        axes[0].plot(range(1, length + 1), curve, label=name(setting))
        finals[name(setting)] = (setting, [h.val_accuracy[-1] for h in mine])
    axes[0].set(xlabel="epoch", ylabel="validation accuracy (mean over seeds)", title="every setting")
    if len(settings) <= 12:
        axes[0].legend(fontsize=6)
    for ax, key in zip(axes[1:], swept):
        for setting, values in finals.values():
            ax.errorbar(setting[key], np.mean(values), yerr=np.std(values), fmt="o", capsize=3)
        ax.set(xlabel=key, ylabel="final validation accuracy", title=f"against {key} (bars: spread over seeds)")
        if key in ("lr", "l2") and all(s[key] > 0 for s, _ in finals.values()):
            ax.set_xscale("log")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return f"drew the sweep to {path}"


def save(folder, args, epochs, nets, states):
    """Write the whole sweep (every model's state after the last epoch all completed) to folder/FILE."""
    from .sweep import KEPT

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"params": np.stack([nets[0].backend.to_host(s.params) for s in states])}
    if any(s.velocity is not None for s in states):
        arrays["velocity"] = np.stack([nets[0].backend.to_host(s.params * 0 if s.velocity is None else s.velocity)
                                       for s in states])
    record = {"format": FORMAT, "version": VERSION, "options": {k: str(getattr(args, k)) for k in KEPT},
              "epochs": epochs, "models": [{"epoch": s.epoch, "rng": s.rng, "settings": s.settings,
                                            "records": s.history.records} for s in states]}
    arrays["sweep"] = np.array(json.dumps(record))
    try:
        atomic_write(folder / FILE, lambda f: np.savez(f, **arrays))
    except OSError as e:
        raise ModelFileError(f"cannot write the sweep's checkpoint {folder / FILE}: {e.strerror or e}") from e


def _open(folder):
    file = Path(folder) / FILE if not str(folder).endswith(".npz") else Path(folder)
    if not file.is_file():
        raise ModelFileError(f"--resume {folder}: no sweep checkpoint there (expected {file}, written by "
                             f"fastnn sweep --checkpoint)")
    return file, readers.Npz(file, f"{file} is not a readable sweep checkpoint (truncated or corrupt?)",
                             ModelFileError, expected="a sweep checkpoint written by fastnn")


def _record(file, npz):
    try:
        record = json.loads(npz.text("sweep")) if "sweep" in npz.names else None
    except ValueError:
        record = None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("version") != VERSION:
        raise ModelFileError(f"{file} is not a fastnn sweep checkpoint of version {VERSION}")
    if not isinstance(record.get("options"), dict) or not isinstance(record.get("models"), list):
        raise ModelFileError(f"{file} has an invalid sweep record: it lacks its options or models")
    return record


def read_options(folder):
    """The options of the sweep checkpointed in ``folder`` (strings, as given), and its epochs."""
    from .sweep import KEPT

    file, npz = _open(folder)
    with npz:
        record = _record(file, npz)
    missing = [k for k in KEPT if k not in record["options"]]
    if missing:
        raise ModelFileError(f"{file} has an invalid sweep record: its options lack {', '.join(missing)}")
    options = {k: (None if record["options"][k] == "None" else record["options"][k]) for k in KEPT}
    options["epochs"] = record.get("epochs")
    return options


def read_states(folder, nets):
    """One TrainState per network from the sweep checkpoint in ``folder``, each checked against it."""
    file, npz = _open(folder)
    k, n = len(nets), nets[0].params.size
    with npz:
        record = _record(file, npz)
        if len(record["models"]) != k:
            raise ModelFileError(f"{file} holds {len(record['models'])} models; this sweep makes {k}")
        arrays = {}
        for key in ("params", "velocity"):
            if key in npz.names:
                shape, dtype = npz.describe(key)
                if shape != (k, n) or dtype != nets[0].dtype:
                    raise ModelFileError(f"{file}: {key} must be {nets[0].dtype} ({k}, {n}); got {dtype} {shape}")
                arrays[key] = npz.array(key, k * n * dtype.itemsize)
    if "params" not in arrays or not np.isfinite(arrays["params"]).all():
        raise ModelFileError(f"{file}: the models' parameters are missing or not finite")
    states = []
    for i, (net, model) in enumerate(zip(nets, record["models"])):
        problem = rng_state_problem(model.get("rng"), type(net.rng.bit_generator).__name__)
        epoch, records = model.get("epoch"), model.get("records")
        if problem or not isinstance(epoch, int) or not isinstance(records, list) or len(records) != epoch:
            raise ModelFileError(f"{file}: model {i} has an invalid state ({problem or 'epoch and history'})")
        momentum = model.get("settings", {}).get("momentum")
        velocity = arrays.get("velocity")
        velocity = None if not momentum or velocity is None else net.backend.to_device(velocity[i])
        params = net.backend.to_device(arrays["params"][i])
        states.append(TrainState.from_parts(epoch, params, velocity, model["rng"], records, model["settings"]))
    return states

