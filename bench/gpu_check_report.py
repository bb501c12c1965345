"""The summary parts of bench/gpu_check.sh: the pytest step's verdict from its junit XML, and the headline numbers.

    python bench/gpu_check_report.py junit FILE [--rehearsal] [--env-lines FILE --seconds S]
    python bench/gpu_check_report.py headline LOGS_DIR

junit: every test must pass.  A skip whose reason is an environment skip ("ENV-SKIP <marker>: why",
tests/conftest.py's env_skip: the MNIST files, mpirun, a second GPU) is reported on a summary line
of its own, "pytest:<marker> ENV-SKIP"; any other skip or failure fails the step, and so does a test
left unrun at the deadline.  In a rehearsal (the cupy test double, no GPU), a skip that says the test
needs a real GPU counts as NEEDS-GPU.  Prints one line "gpu_check: <note>" and exits PASS 0, FAIL 1 or
NEEDS-GPU 4 (a rehearsal with no failure).

headline: reads fused-textbook.json, bench-cuda.json and ncu.log from LOGS_DIR and prints one
"headline: ..." line per number (seconds per epoch per config and engine, ratios to the peers, the
kernel's registers, occupancy and bank conflicts); what is missing is said, not guessed.
"""

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

PASS, FAIL, NEEDS_GPU = 0, 1, 4
ENV_SKIP = re.compile(r"^ENV-SKIP (\w+): (.*)", re.DOTALL)
NEEDS_A_GPU = ("no real CUDA device", "no CUDA device", "cupy is the CPU test double")  # rehearsal only
DEADLINE = "not run: the deadline passed"  # tests/conftest.py's DEADLINE_SKIP


def verdict(path, rehearsal=False):
    """(status, note, {marker: [(test, why)]}) of the junit XML at ``path``."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return FAIL, f"no junit XML ({type(e).__name__}: {e}): pytest was killed or did not start", {}
    passed, failed, unrun, needs_gpu, other_skips, env = 0, [], 0, 0, [], {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = [c for c in case if c.tag in ("failure", "error")]
        skipped = [c for c in case if c.tag == "skipped"]
        if bad:
            message = bad[0].get("message") or ""
            if DEADLINE in message:
                unrun += 1
            else:
                failed.append(f"{name}: {message.splitlines()[0][:200] if message else bad[0].tag}")
        elif skipped:
            message = skipped[0].get("message") or ""
            found = ENV_SKIP.match(message)
            if found:
                env.setdefault(found.group(1), []).append((name, found.group(2)))
            elif message == DEADLINE or message.endswith(DEADLINE):
                unrun += 1
            elif rehearsal and any(words in message for words in NEEDS_A_GPU):
                needs_gpu += 1
            else:
                other_skips.append(f"{name}: {message[:200]}")
        else:
            passed += 1
    parts = [f"{passed} passed"]
    if failed:
        parts.append(f"{len(failed)} failed (first: {failed[0]})")
    if other_skips:
        parts.append(f"{len(other_skips)} skipped without an environment reason (first: {other_skips[0]})")
    if unrun:
        parts.append(f"{unrun} not run: the step's deadline passed")
    if needs_gpu:
        parts.append(f"{needs_gpu} need a real GPU")
    if env:
        parts.append(f"{sum(map(len, env.values()))} environment skips ({', '.join(sorted(env))})")
    note = ", ".join(parts)
    if failed or other_skips or unrun or passed + needs_gpu + len(env) == 0:
        return FAIL, note, env
    return (NEEDS_GPU if rehearsal else PASS), note, env


def env_lines(env, seconds=0):
    """The summary lines of the environment skips: one per marker, naming what is missing."""
    lines = []
    for marker, tests in sorted(env.items()):
        why = tests[0][1].replace("\n", " ")
        lines.append(f"pytest:{marker} ENV-SKIP {seconds} {len(tests)} test(s): {why}")
    return lines


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


NCU_NUMBERS = {  # headline name: what ncu's details page calls it (LaunchStats, Occupancy, WarpStateStats, metrics)
    "registers per thread": "Registers Per Thread",
    "dynamic shared memory per block": "Dynamic Shared Memory Per Block",
    "achieved occupancy": "Achieved Occupancy",
    "warp cycles per issued instruction": "Warp Cycles Per Issued Instruction",
    "shared-memory load bank conflicts": r"l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld\.sum",
    "shared-memory store bank conflicts": r"l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st\.sum",
    "duration": "Duration",
}


def ncu_numbers(text):
    """{headline name: "value unit"} from ncu's details page: "Label   [unit]   1,234.5" on one line."""
    found = {}
    for name, label in NCU_NUMBERS.items():
        m = re.search(rf"^\s*{label}\s+(?:([^\d\s]\S*)\s+)?([\d,.]+)\s*$", text, re.MULTILINE)
        if m:
            found[name] = f"{m.group(2)} {m.group(1) or ''}".strip()
    stall = re.search(r"^.*\bstalled\b.*$", text, re.MULTILINE)  # WarpStateStats' rule names the largest stall
    if stall:
        found["largest stall"] = " ".join(stall.group(0).split())[:240]
    return found


def headline(logs):
    """The headline lines from the step outputs in ``logs`` (see the module docstring)."""
    logs, lines = Path(logs), []
    fused = _read_json(logs / "fused-textbook.json")
    if fused:
        f, g = fused["fused"]["seconds_per_epoch"], fused["generic"]["seconds_per_epoch"]
        lines.append(f"headline: textbook 784-30-10 batch {fused['batch']}, {fused['examples']} examples on "
                     f"{fused['device']}: {fused['engine']} {f:.4f} s/epoch, generic {g:.4f} s/epoch "
                     f"(fused {g / f:.1f}x faster); step gap {fused['step_gap']:.2g} (tolerance {fused['tolerance']:g})")
    else:
        lines.append("headline: no fused-textbook numbers (the step failed or did not run)")
    bench = _read_json(logs / "bench-cuda.json")
    if bench:
        for r in bench.get("results", []):
            if r["impl"] in ("floor",) and not r.get("is_floor"):
                continue
            ratios = ", ".join(f"{r[key]:.2f}x vs {name}" for key, name in (
                ("vs_torch", "torch"), ("vs_torch_graph", "torch-graph"), ("vs_jax", "jax"))
                if r.get(key) and r["impl"] == "fastnn")
            engine = f" ({r['engine']})" if r.get("engine") else ""
            lines.append(f"headline: bench {r['config']} {r['impl']}{engine} {r['device']} {r.get('precision', '?')}: "
                         f"{r['median_s']:.4f} s/epoch" + (f"; {ratios}" if ratios else ""))
        for s in bench.get("skipped", []):
            lines.append(f"headline: bench {s['config']} {s['impl']} {s['device']} not run: {s['reason']}")
    else:
        lines.append("headline: no bench JSON (the bench step failed or did not run)")
    try:
        found = ncu_numbers((logs / "ncu.log").read_text(errors="replace"))
    except OSError:
        found = {}
    if found:
        lines.append("headline: ncu, the fused launch: " + "; ".join(f"{name} {value}" for name, value in found.items()))
    else:
        lines.append("headline: no ncu numbers (ncu did not run, or read no counters)")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gpu_check_report.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    junit = sub.add_parser("junit")
    junit.add_argument("file")
    junit.add_argument("--rehearsal", action="store_true")
    junit.add_argument("--env-lines", help="write the ENV-SKIP summary lines to this file")
    junit.add_argument("--seconds", type=int, default=0)
    head = sub.add_parser("headline")
    head.add_argument("logs")
    args = parser.parse_args(argv)
    if args.part == "headline":
        print("\n".join(headline(args.logs)))
        return PASS
    status, note, env = verdict(args.file, args.rehearsal)
    if args.env_lines:
        Path(args.env_lines).write_text("".join(line + "\n" for line in env_lines(env, args.seconds)))
    print(f"gpu_check: {note}")
    return status


if __name__ == "__main__":
    sys.exit(main())
