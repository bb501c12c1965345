"""Per-epoch metrics kept in a file and drawn as curves: JSON lines or CSV, chosen by the file's extension.

    log = MetricsLog("run.jsonl")          # or run.csv
    net.fit(X, y, ..., callback=log)       # the whole history so far, rewritten atomically after each epoch
    plot(read_log("run.jsonl"), "run.png")  # loss and accuracy curves (needs matplotlib)
"""

import csv
import io
import json
import math
import os
from pathlib import Path

from . import records as records_module
from . import validate
from .errors import ConfigError, DataError, MissingPackage, ModelFileError
from .files import atomic_write

COLUMNS = ("epoch", "loss", "val_loss", "val_accuracy", "seconds", "examples_per_second", "engine")


def log_format(path):
    """'csv' for a .csv path, else 'jsonl' (JSON lines)."""
    return "csv" if Path(path).suffix.lower() == ".csv" else "jsonl"


def format_records(records, fmt):
    """The text of a log holding ``records`` in ``fmt`` ('jsonl' or 'csv')."""
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in records)
    keys = [k for k in COLUMNS if any(k in r for r in records)]
    keys += sorted({k for r in records for k in r} - set(keys))
    out = io.StringIO()
    writer = csv.DictWriter(out, keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


class MetricsLog:
    """A ``fit`` callback that keeps every epoch's record in ``path`` (rewritten whole, atomically, each epoch).

    ``records``: the epochs before this fit (a resumed run's history), written first.
    """

    def __init__(self, path, records=()):
        self.path = validate.writable_file(path, "log")
        self.format = log_format(self.path)
        problem = records_module.history_problem(records)
        if problem:
            raise ConfigError(f"records must be the epoch records before this fit (a list of dicts); got "
                              f"{type(records).__name__}: {problem}")
        self.records = [dict(r) for r in records]

    def __call__(self, record):
        self.records.append(dict(record))
        text = format_records(self.records, self.format).encode()
        try:
            atomic_write(self.path, lambda f: f.write(text))
        except OSError as e:
            raise ModelFileError(f"cannot write the log {self.path}: {e.strerror or e}") from e


def _number(text):
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def read_log(path):
    """The records of a log written by MetricsLog (JSON lines or CSV), as a list of dicts."""
    path = validate.as_path(path, "log")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the log {path}: {getattr(e, 'strerror', None) or e}") from e
    try:
        if log_format(path) == "csv":
            records = [{k: _number(v) for k, v in row.items() if v not in ("", None)}
                       for row in csv.DictReader(io.StringIO(text))]
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (ValueError, csv.Error) as e:
        raise DataError(f"{path} is not a fastnn log ({log_format(path)}): {e}") from e
    problem = records_module.history_problem(records) if records else "it holds no records"
    if problem:
        raise DataError(f"{path} is not a fastnn log: expected one record per epoch with 'epoch' and 'loss' "
                        f"({problem})")
    return records


def pyplot():
    """matplotlib.pyplot (Agg backend); MissingPackage with the one-line reason when it is not installed."""
    junk = os.environ.pop("MPLBACKEND", None)  # fastnn draws with Agg: a junk setting must not stop the import
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingPackage(f"drawing curves needs matplotlib, which cannot be imported ({e}); "
                             "install it with: pip install matplotlib") from None
    finally:
        if junk is not None:
            os.environ["MPLBACKEND"] = junk
    return plt


def plot(records, path, title=None):
    """Draw the loss (training, validation) and validation accuracy of ``records`` by epoch into ``path``."""
    path = validate.writable_file(path, "plot")
    plt = pyplot()
    epochs = [r["epoch"] for r in records]
    column = lambda k: [r.get(k, math.nan) for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, column("loss"), marker="o", label="training")
    if any("val_loss" in r for r in records):
        left.plot(epochs, column("val_loss"), marker="o", label="validation")
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    left.legend()
    score, name = ("val_r2", "R²") if any("val_r2" in r for r in records) else ("val_accuracy", "accuracy")
    if any(score in r for r in records):  # a regression's R², else the accuracy
        right.plot(epochs, column(score), marker="o", color="tab:green")
    else:
        right.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=right.transAxes)
    right.set(xlabel="epoch", ylabel=name, title=f"validation {name}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    image = io.BytesIO()
    try:
        fig.savefig(image, format=path.suffix[1:].lower() or "png")
    except ValueError as e:  # an extension matplotlib cannot write
        raise ConfigError(f"cannot draw the plot {path}: {e}") from None
    finally:
        plt.close(fig)
    try:
        atomic_write(path, lambda f: f.write(image.getvalue()))  # a full disk leaves no 0-byte image
    except OSError as e:
        raise ModelFileError(f"cannot write the plot {path}: {e.strerror or e}") from e
    return path
