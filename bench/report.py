"""What the CPU benches share: a report whose lines are printed as they come and, with ``--out``, written to a
file atomically at the end; and the load averages each report records."""

from fastnn import files


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
