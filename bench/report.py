"""What the CPU benches share: their options, a report whose lines are printed as they come and, with ``--out``,
written to a file atomically at the end; and the load averages each report records."""

import argparse

from fastnn import files


def arguments(doc, helps=None, **defaults):
    """(the parsed options, a Report) for a bench whose docstring is ``doc``: an option --NAME for each default (an
    int, or None, takes an int; ``helps`` may say what one means), then --out."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, default in defaults.items():
        kind = int if default is None else type(default)
        parser.add_argument(f"--{name}", type=kind, default=default, help=(helps or {}).get(name))
    parser.add_argument("--out", help="also write the report to this file (atomically)")
    return parser.parse_args(), Report()


class Report:
    """Lines said one by one (printed at once), then written together: ``report.say(text)``, ``report.write(path)``."""

    def __init__(self):
        self.lines = []

    def say(self, text):
        print(text, flush=True)
        self.lines.append(text)

    def write(self, path):
        """The report to ``path`` (nothing where it is None), atomically: a reader never sees half of it."""
        if path:
            files.atomic_write(path, lambda f: f.write(("\n".join(self.lines) + "\n").encode()))


def load():
    """The load averages (1, 5, 15 minutes), as /proc/loadavg gives them."""
    with open("/proc/loadavg") as f:
        return f.read().split()[:3]
