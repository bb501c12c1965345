"""The README's commands, for tests/test_readme.py and for CI (.ci/run runs the test command as the README writes it).

Every fenced ``sh`` block's lines are commands.  A command ending in ``# needs: WHAT …`` cannot run
offline in a temporary folder (WHAT is one of NEEDS) and is listed with that reason instead.

    python3 tests/readme.py --test-command    prints the README's test command, without its comment
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
NEEDS = ("network", "root", "mpi", "docker", "gpu")
MAX_LINES = 300


def blocks(language, text=None):
    """The fenced blocks of ``language`` in the README, as strings."""
    text = README.read_text() if text is None else text
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def commands(text=None):
    """[(command, need or None)] of every sh block, in order; the comment after `# needs:` is dropped."""
    found = []
    for block in blocks("sh", text):
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            need = re.search(r"\s#\s*needs:\s*([\w-]+)", line)
            command = line[:need.start()].rstrip() if need else line.split("  # ")[0].rstrip()
            found.append((command, need.group(1) if need else None))
    return found


def test_command(text=None):
    """The README's command that runs the tests: the sh line that installs ".[test]" and runs pytest."""
    lines = [c for c, _ in commands(text) if '".[test]"' in c and "pytest" in c]
    if len(lines) != 1:
        raise SystemExit(f"README.md must hold one test command (installs \".[test]\", runs pytest); found {lines}")
    return lines[0]


if __name__ == "__main__":
    if sys.argv[1:] != ["--test-command"]:
        raise SystemExit("usage: python3 tests/readme.py --test-command")
    print(test_command())
