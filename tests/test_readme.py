"""The README stays true: at most 300 lines, and every command in it runs (tests/readme.py extracts them).

Commands run in order in one temporary folder, where ``.venv/bin/fastnn`` and ``.venv/bin/python`` are this
test's interpreter with this source tree, as after the README's install command.  A command marked
``# needs: network`` (or root, docker, gpu) is not run here; ``# needs: mpi`` runs when mpirun and mpi4py are there.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from . import readme
from .conftest import FASHION_DIR, ROOT

FASHION = "--dataset fashion-mnist"


def venv(folder):
    """A stand-in for the README's .venv in ``folder``: its fastnn and python run this tree."""
    bin_ = folder / ".venv" / "bin"
    bin_.mkdir(parents=True)
    for name, run in (("fastnn", f'"{sys.executable}" -m fastnn'), ("python", f'"{sys.executable}"')):
        (bin_ / name).write_text(f'#!/bin/sh\nexec {run} "$@"\n')
        (bin_ / name).chmod(0o755)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
            "FASTNN_DEVICE": "cpu", "MPLBACKEND": "Agg",
            # mpirun as CI runs it: as root, loopback only, 2 ranks on however many cores
            "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "OMPI_MCA_rmaps_base_oversubscribe": "1", "OMPI_MCA_btl": "self,tcp"}


def run(command, folder, env, timeout=600):
    return subprocess.run(["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def mpi_ready():
    return shutil.which("mpirun") is not None and importlib.util.find_spec("mpi4py") is not None


def test_the_readme_is_at_most_300_lines():
    lines = readme.README.read_text().splitlines()
    assert len(lines) <= readme.MAX_LINES, f"README.md has {len(lines)} lines; at most {readme.MAX_LINES}"


def test_every_command_runs_here_or_names_what_it_needs():
    found = readme.commands()
    assert found, "no sh blocks in README.md"
    unknown = [(c, need) for c, need in found if need is not None and need not in readme.NEEDS]
    assert not unknown, f"'# needs:' must name one of {', '.join(readme.NEEDS)}; got {unknown}"
    assert readme.test_command() in (ROOT / ".ci" / "run").read_text() or "readme.py --test-command" in (
        ROOT / ".ci" / "run").read_text(), ".ci/run must run the README's test command as written"


def test_the_readme_commands_run_offline(tmp_path):
    env = venv(tmp_path)
    ran, left = [], []
    for command, need in readme.commands():
        if FASHION in command and not FASHION_DIR.is_dir():
            left.append((command, f"Fashion-MNIST is not in {FASHION_DIR}"))
            continue
        if need == "mpi" and mpi_ready():
            need = None
        if need is not None:
            left.append((command, f"needs {need}"))
            continue
        done = run(command, tmp_path, env)
        assert done.returncode == 0, f"README command failed ({done.returncode}): {command}\n{done.stderr}"
        ran.append(command)
    assert len(ran) >= 8, f"only {len(ran)} README commands ran; not run: {left}"
    print("\n".join(f"not run: {c} ({why})" for c, why in left))


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"Fashion-MNIST is not in {FASHION_DIR} "
                    "(apt-get install dataset-fashion-mnist)")
def test_the_offline_path_prints_what_the_readme_shows(tmp_path):
    command = next(c for c, _ in readme.commands() if FASHION in c)
    expected = readme.blocks("text")[0].splitlines()
    done = run(command, tmp_path, venv(tmp_path))
    assert done.returncode == 0, done.stderr
    got = done.stdout.splitlines()
    assert got[0] == expected[0]  # the header: network, seed, settings, data
    assert [line.split(":")[0] for line in got] == [line.split(":")[0] for line in expected]
    accuracy = lambda lines: float(re.search(r"accuracy ([\d.]+) on", lines[-2]).group(1))
    assert accuracy(got) == pytest.approx(accuracy(expected), abs=0.02)  # BLAS threads move the last bits


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"Fashion-MNIST is not in {FASHION_DIR} "
                    "(apt-get install dataset-fashion-mnist)")
def test_the_readme_api_example_runs(tmp_path):
    (example,) = readme.blocks("python")
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=venv(tmp_path), capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    assert "'accuracy'" in done.stdout and Path(tmp_path / "model.npz").is_file()
