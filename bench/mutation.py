"""Mutation testing of fastnn's core: do the tests notice a one-line mistake?

    python -m bench.mutation                                  # every mutant of every core module (hours)
    python -m bench.mutation --sample 20 --seed 1             # 20 mutants per module, picked by seed 1
    python -m bench.mutation --module network --module costs  # some modules only
    python -m bench.mutation --sample 40 --report bench/results/mutation.md

For each mutant (bench/mutants.py says which edits are made) the tree is copied once to a temporary
folder, the one file is rewritten there, and the test files that cover its module (MODULES) run with
``-x -q -p no:randomly -m "not slow"`` under a time limit (three times the unmutated run, plus 20 s).
A failing test kills the mutant; so does a timeout (a hang is noticed) and an import error.  A mutant that
does not compile (CUDA C under g++) is counted apart, as invalid.  The unmutated tests must pass first.

Survivors are listed with their stable id; those in bench/mutation_equivalent.txt (``<id>  <why>``, one a
line, reviewed by hand) are equivalent mutants: they change nothing a user can observe, and are left
out of the score.  The score of a module is killed / (mutants - invalid - equivalent).

The CUDA kernel (fastnn/engines/cuda_fused.cu) is mutated as C text and checked through the g++ shim
(tests/kernel_shim, ``-m kernel``) and the fused engine's tests on the CPU.

Why not mutmut (3.x): it rewrites every function into a trampoline that picks the mutant at run time,
which numba cannot compile (the fused CPU engine's loops are ``numba.njit``), it mutates Python only (not
the .cu kernel), and it runs the whole suite to map tests to functions first (over an hour on 2 cores
here).  Copying the tree and running a module's own test files per mutant is slower per mutant but
plain, and it runs every engine as users run it.
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.mutants import mutants

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT = ROOT / "bench" / "mutation_equivalent.txt"

# module -> (its files, the test files that cover it, the quickest and closest first: -x stops at the first failure)
MODULES = {
    "activations": (["fastnn/activations.py"], ["tests/test_network.py", "tests/test_oracle.py"]),
    "costs": (["fastnn/costs.py"], ["tests/test_network_values.py", "tests/test_network.py", "tests/test_oracle.py"]),
    "network": (["fastnn/network.py"], ["tests/test_network_values.py", "tests/test_network.py",
                                         "tests/test_model_files.py", "tests/test_train.py", "tests/test_bad_input.py"]),
    "train": (["fastnn/train.py"], ["tests/test_fit_guards.py", "tests/test_train.py", "tests/test_train_options.py",
                                     "tests/test_defaults.py", "tests/test_resume.py"]),
    "engines": (["fastnn/engines/__init__.py", "fastnn/engines/generic.py", "fastnn/engines/cpu_fused.py",
                 "fastnn/engines/cpu_kernels.py"],
                ["tests/test_cpu_fused_limits.py", "tests/test_fit_guards.py", "tests/test_cpu_fused.py",
                 "tests/test_train.py", "tests/test_network.py"]),
    "checkpoint": (["fastnn/checkpoint.py"], ["tests/test_model_files.py", "tests/test_checkpoint.py",
                                               "tests/test_resume.py", "tests/test_bad_input.py"]),
    "validate": (["fastnn/validate.py"], ["tests/test_fit_guards.py", "tests/test_network_values.py",
                                           "tests/test_model_files.py", "tests/test_bad_input.py",
                                           "tests/test_network.py"]),
    "readers": (["fastnn/readers.py"], ["tests/test_data.py", "tests/test_checkpoint.py", "tests/test_model_files.py",
                                       "tests/test_bad_input.py"]),
    "cuda-kernel": (["fastnn/engines/cuda_fused.cu"], ["tests/test_cuda_kernel_targets.py", "tests/test_cuda_kernel.py",
                                                      "tests/test_cuda_engine.py"]),
}
PYTEST = ["-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider", "-m", "not slow", "--no-header", "-o",
          "addopts="]
COPIED = ("fastnn", "tests", "bench", "pyproject.toml")
NUMBA_COMPILE = 600  # seconds more for a mutant of the fused CPU loops: numba compiles them for both dtypes


def read_equivalent(path=EQUIVALENT):
    """{mutant id: why it is equivalent} from the reviewed list."""
    found = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, why = line.partition(" ")
                found[key] = why.strip()
    return found


class Sandbox:
    """A copy of the tree in a temporary folder, where one file at a time is mutated and the tests run."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="fastnn-mutation-"))
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.so", "results")
        for name in COPIED:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, self.dir / name, ignore=ignore)
            else:
                shutil.copy2(source, self.dir / name)
        self.numba_cache = Path(tempfile.mkdtemp(prefix="numba-", dir=self.dir))

    def run(self, tests, timeout, fresh_numba=False):
        """(outcome, seconds, last line): outcome is passed, failed or timeout."""
        env = {**os.environ, "PYTHONPATH": str(self.dir), "PYTHONDONTWRITEBYTECODE": "1",
               "NUMBA_CACHE_DIR": str(self.numba_cache if not fresh_numba else tempfile.mkdtemp(dir=self.dir))}
        env.pop("FASTNN_TEST_CUPY_DOUBLE", None)
        start = time.perf_counter()
        with subprocess.Popen([sys.executable, "-m", "pytest", *PYTEST, *tests], cwd=self.dir, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True) as proc:
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.communicate()
                return "timeout", time.perf_counter() - start, ""
        seconds = time.perf_counter() - start
        last = (out.strip().splitlines() or [""])[-1]
        if proc.returncode == 0:
            return "passed", seconds, last
        if proc.returncode == 5:  # no tests collected: the mapping is wrong, not the mutant
            raise SystemExit(f"no tests ran for {tests}: {last}")
        return "failed", seconds, out

    def mutate(self, mutant):
        """A context: the sandbox's copy of ``mutant.path`` rewritten, restored on exit."""
        return _Mutated(self.dir / mutant.path, mutant)

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class _Mutated:
    def __init__(self, path, mutant):
        self.path, self.mutant = path, mutant

    def __enter__(self):
        self.original = self.path.read_text()
        self.path.write_text(self.mutant.apply(self.original))

    def __exit__(self, *exc):
        self.path.write_text(self.original)


def invalid(outcome, out, mutant):
    """True when the mutant does not compile (g++ refuses the CUDA C, or Python cannot parse it)."""
    if outcome != "failed":
        return False
    return "g++ failed" in out if mutant.path.endswith(".cu") else False


def choose(module, sample, seed, match=None):
    files, _ = MODULES[module]
    found = [m for f in files for m in mutants(f, (ROOT / f).read_text())]
    if match:
        found = [m for m in found if any(t in m.id or t in m.before or t in m.after for t in match)]
    if sample and sample < len(found):
        found = sorted(random.Random(f"{seed}:{module}").sample(found, sample), key=lambda m: (m.path, m.line))
    return found


def run_module(sandbox, module, sample, seed, equivalent, log, match=None):
    """Run the chosen mutants of ``module``; returns its results (a dict)."""
    _, tests = MODULES[module]
    tests = [t for t in tests if (ROOT / t).exists()]
    outcome, base, last = sandbox.run(tests, timeout=3600)
    if outcome != "passed":
        raise SystemExit(f"{module}: the unmutated tests do not pass ({last[-2000:]})")
    limit = 3 * base + 20
    log(f"{module}: tests {' '.join(tests)} pass in {base:.0f} s; limit per mutant {limit:.0f} s")
    chosen = choose(module, sample, seed, match)
    result = {"module": module, "tests": tests, "base_seconds": base, "total": len(choose(module, 0, seed)),
              "run": len(chosen), "killed": [], "survived": [], "equivalent": [], "invalid": [], "timeouts": []}
    for i, mutant in enumerate(chosen, 1):
        fresh = mutant.path.endswith("cpu_kernels.py")  # numba compiles the mutated loops anew: allow for it
        with sandbox.mutate(mutant):
            outcome, seconds, out = sandbox.run(tests, limit + (NUMBA_COMPILE if fresh else 0), fresh_numba=fresh)
        if invalid(outcome, out, mutant):
            verdict = "invalid"
        elif outcome in ("failed", "timeout"):
            verdict = "killed"
        elif mutant.id in equivalent:
            verdict = "equivalent"
        else:
            verdict = "survived"
        result[verdict].append(mutant)
        if outcome == "timeout":
            result["timeouts"].append(mutant)
        how = " (timeout)" if outcome == "timeout" else ""
        log(f"  [{i}/{len(chosen)}] {verdict:10} {seconds:5.0f} s  {mutant.path}:{mutant.line} {mutant.kind}: "
            f"{mutant.after}{how}")
    return result


def score(result):
    counted = len(result["killed"]) + len(result["survived"])
    return len(result["killed"]) / counted if counted else 1.0


def report(results, args, equivalent, seconds):
    """The run's report as Markdown."""
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    kind = f"a sample of {args.sample} mutants per module (seed {args.seed})" if args.sample else "every mutant"
    if args.match:
        kind = f"the mutants matching {', '.join(args.match)}"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = f"`python -m bench.mutation {' '.join(sys.argv[1:])}`"
    lines = [f"# Mutation testing: {kind}", "",
             f"{command}, {when}, {seconds / 60:.0f} min, load average {' '.join(load)} at the end.", "",
             "Score = killed / (run - invalid - equivalent); the equivalent mutants are listed, with why, in "
             + "bench/mutation_equivalent.txt.", "",
             "| module | mutants (all) | run | killed | survived | equivalent | invalid | score |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['module']} | {r['total']} | {r['run']} | {len(r['killed'])} | {len(r['survived'])} | "
                     f"{len(r['equivalent'])} | {len(r['invalid'])} | {score(r):.0%} |")
    lines += ["", "## Survivors", ""]
    for r in results:
        for m in r["survived"]:
            lines.append(f"- `{m.id}` {m.path}:{m.line} ({m.kind}): `{m.before}` → `{m.after}`")
    lines += ["", "## Killed by the time limit (a hang, or a loop made endless)", ""]
    for r in results:
        for m in r["timeouts"]:
            lines.append(f"- `{m.id}` {m.path}:{m.line} ({m.kind}): `{m.after}`")
    lines += ["", "## Equivalent (run, survived, explained)", ""]
    for r in results:
        for m in r["equivalent"]:
            lines.append(f"- `{m.id}` {m.path}:{m.line}: `{m.after}` — {equivalent[m.id]}")
    lines += ["", "## Test files per module", ""]
    for r in results:
        lines.append(f"- {r['module']}: {' '.join(r['tests'])} ({r['base_seconds']:.0f} s unmutated)")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", choices=list(MODULES), help="module(s) to mutate (default all)")
    parser.add_argument("--sample", type=int, default=0, help="mutants per module, chosen at random (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="which sample")
    parser.add_argument("--report", type=Path, help="write the Markdown report here")
    parser.add_argument("--match", action="append",
                        help="only the mutants whose id, or line before or after, contains this text (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    args = parser.parse_args(argv)
    modules = args.module or list(MODULES)
    equivalent = read_equivalent()
    if args.list:
        for module in modules:
            for m in choose(module, args.sample, args.seed, args.match):
                print(f"{m.id}  {m.path}:{m.line} {m.kind}: {m.after}")
        return 0
    start = time.perf_counter()
    sandbox = Sandbox()
    results = []
    try:
        for module in modules:
            results.append(run_module(sandbox, module, args.sample, args.seed, equivalent,
                                      lambda text: print(text, flush=True), args.match))
            if args.report:  # after each module: a run cut short keeps what it measured
                write(args.report, report(results, args, equivalent, time.perf_counter() - start))
    finally:
        sandbox.close()
    print(report(results, args, equivalent, time.perf_counter() - start))
    return 0


def write(path, text):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
