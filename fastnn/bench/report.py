"""What ``fastnn bench`` hands to people: the table (lines of text), the JSON file, the PNG chart.

The screen gets the results table, the warnings that make a measurement untrustworthy (``warnings``:
a busy machine, the floor beaten) and what was skipped; the targets, the notes on methodology and the
trust flags go to the JSON (``report["targets"]``, ``["notes"]``, ``["trust"]``) and ``bench/README.md``.
Nothing here prints: the CLI prints the lines.  matplotlib is optional (``pip install
matplotlib``, or ``pip install '.[plot]'`` in the source folder); without it ``write_chart`` returns the reason and writes nothing.
"""

import io
import json
import os
from pathlib import Path

from ..errors import ModelFileError
from ..files import atomic_write
from .workloads import CONFIGS

MB = 10 ** 6  # decimal: the 60,000-example float32 training set is 188 MB
ORDER = {"fastnn": 0, "jax": 1, "torch": 2, "torch-graph": 3, "textbook-loop": 4, "floor": 5, "numpy": 6}
COLUMNS = ("config", "implementation", "s/epoch", "examples/s", "x floor", "(best)", "GFLOP/s (% peak)",
           "vs loop", "vs torch", "vs jax", "vs numpy", "host peak", "device peak")


def _rows(report):
    config_order = list(CONFIGS)
    return sorted(report["results"], key=lambda r: (config_order.index(r["config"]), r["device"] != "cpu",
                                                     ORDER[r["impl"]], r["device"], r["layout"] or ""))


def _ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def _bytes(b, plus=False):
    return "-" if b is None else f"{'+' if plus else ''}{b / MB:,.0f} MB"


def table(report):
    """The report as aligned text lines: one row per config and implementation, then the targets."""
    rows = [COLUMNS]
    for r in _rows(report):
        label = r["label"] + (" *" if r["scaled"] else "")
        rows.append((r["config"], label, f"{r['median_s']:.3f}", f"{r['examples_per_s']:,.0f}",
                     _ratio(r["x_floor"]), _ratio(r["x_floor_of_minima"]), f"{r['gemm_flops_per_s'] / 1e9:.1f}{_pct(r)}",
                     _ratio(r["vs_textbook_loop"]), _ratio(r["vs_torch"]), _ratio(r.get("vs_jax")),
                     _ratio(r.get("vs_numpy")), _bytes(r.get("host_peak_bytes"), plus=True),
                     _bytes(r["device_peak_bytes"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    s = report["settings"]
    lines.insert(1, "-" * len(lines[0]))
    lines += ["", (f"{s['examples']} examples ({s['data']}), {s['dtype']} ({s.get('precision', 'fp32')}), median of {s['epochs']} timed "
                   f"epoch(s) per implementation; threads {report['machine']['threads']}")]
    chosen = [f"{r['config']} {r['blas_threads']}" for r in _rows(report) if r.get("blas_threads") is not None]
    if chosen:
        lines.append(f"fastnn's BLAS threads: {', '.join(chosen)} (its training policy unless --threads is given)")
    if any(r["scaled"] for r in report["results"]):
        lines.append("* timed on a slice of the epoch and scaled to the whole epoch")
    lines.append("the columns, the method and the targets: bench/README.md; the targets' values: the JSON report")
    for s in report["skipped"]:
        where = " ".join(x for x in (s.get("config"), s.get("impl"), s.get("device")) if x and x != "all")
        lines.append(f"skipped {where}: {s['reason']}")
    return lines


def _pct(r):
    """' (41%)' of the device's measured peak; nothing above 100% (the quick run's small peak matmul is no peak)."""
    f = r["fraction_of_peak"]
    return "" if f is None or f > 1 else f" ({100 * f:.0f}%)"


def trust(report):
    """What makes the timings untrustworthy: {"busy": bool, "load": float, "cores": int, "floor_beaten": [...]}.

    Busy: the 1-minute load average, at the start or the end, above half the cores.  The floor beaten: an
    implementation faster than its device's floor, the epoch's matrix products alone, which a correct
    measurement cannot show (the floor was slowed by other work, or fewer FLOPs were computed)."""
    m = report["machine"]
    cores = m.get("cores") or m.get("cpu_count") or os.cpu_count() or 1
    load = max(m.get("loadavg_start", [0])[0], m.get("loadavg_end", [0])[0])
    beaten = [{"config": r["config"], "label": r["label"], "x_floor": r["x_floor"]} for r in report["results"]
              if r["impl"] != "floor" and r["x_floor"] is not None and r["x_floor"] < 1.0]
    return {"busy": load > cores / 2, "load": load, "cores": cores, "floor_beaten": beaten}


def warnings(report):
    """One line per reason not to trust these timings (see ``trust``); empty when there is none."""
    t = trust(report)
    out = []
    if t["busy"]:
        out.append(f"the machine was busy (load {t['load']:.1f} on {t['cores']} cores, over half of them): other "
                   "work slowed these timings unevenly; rerun on a quiet machine")
    for b in t["floor_beaten"]:
        out.append(f"{b['config']}: {b['label']} ran at {b['x_floor']:.2f}x the floor, faster than the epoch's "
                   "matrix products alone: the floor was slowed by other work, so this ratio is not to be trusted")
    return out


def markdown(report):
    """The report's results as a Markdown table (for a README), one line per row."""
    head = ("| config | implementation | s/epoch | examples/s | x floor | (best) | GFLOP/s (% of peak) "
            "| vs textbook loop | vs PyTorch | vs JAX | host peak |")
    out = [head, "|" + " --- |" * 11]
    for r in _rows(report):
        pct = _pct(r)
        out.append(f"| {r['config']} | {r['label']}{' *' if r['scaled'] else ''} | {r['median_s']:.3f} "
                   f"| {r['examples_per_s']:,.0f} | {_ratio(r['x_floor'])} | {_ratio(r['x_floor_of_minima'])} "
                   f"| {r['gemm_flops_per_s'] / 1e9:.1f}{pct} | {_ratio(r['vs_textbook_loop'])} "
                   f"| {_ratio(r['vs_torch'])} | {_ratio(r.get('vs_jax'))} | {_bytes(r.get('host_peak_bytes'), plus=True)} |")
    return out


def write_json(report, path):
    """Write the report to ``path`` as indented JSON."""
    text = (json.dumps(report, indent=1, default=str) + "\n").encode()
    try:
        atomic_write(path, lambda f: f.write(text))  # a full disk leaves no half-written report
    except OSError as e:
        raise ModelFileError(f"cannot write the report {path}: {e.strerror or e}") from e


def _series(r):
    """The chart's series of a result: the implementation and device; fastnn's engine goes on its bars."""
    return f"{r['impl']} {r['device']}" + (f" ({r['layout']})" if r["impl"] == "floor" and r.get("layout") else "")


def _short(rate):
    """12,345 examples/s as '12.3k'."""
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if rate >= size:
            return f"{rate / size:.3g}{unit}"
    return f"{rate:.3g}"


def write_chart(report, path):
    """Draw examples/s per config and implementation (log scale) to ``path``; return None, or why not."""
    junk = os.environ.pop("MPLBACKEND", None)  # the chart is drawn without a backend: a junk one must not matter
    try:
        from matplotlib.figure import Figure
    except Exception as e:  # noqa: BLE001 - ImportError or a broken install
        return f"no chart: matplotlib is not installed ({type(e).__name__}); pip install matplotlib"
    finally:
        if junk is not None:
            os.environ["MPLBACKEND"] = junk
    rows = _rows(report)
    configs = list(dict.fromkeys(r["config"] for r in rows))
    series = list(dict.fromkeys(_series(r) for r in rows))  # one colour per implementation and device
    fig = Figure(figsize=(max(7.0, 1.8 * len(configs) + 4), 4.5), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for i, name in enumerate(series):
        xs, ys, texts = [], [], []
        for j, config in enumerate(configs):
            for r in rows:
                if r["config"] == config and _series(r) == name:
                    xs.append(j - 0.4 + width * (i + 0.5))
                    ys.append(r["examples_per_s"])
                    engine = f"\n{r['engine']}" if r.get("engine") else ""
                    texts.append(f"{_short(r['examples_per_s'])}{' *' if r['scaled'] else ''}{engine}")
        bars = ax.bar(xs, ys, width, label=name)
        ax.bar_label(bars, texts, fontsize=6, padding=1)
    ax.set_yscale("log")
    ticks = [f"{c}\n{'-'.join(map(str, CONFIGS[c].sizes))}\nbatch {CONFIGS[c].batch_size}" for c in configs]
    ax.set_xticks(range(len(configs)), ticks, fontsize=8)
    ax.set_ylabel("examples per second (log scale)")
    m = report["machine"]
    gpus = [d["gpu"] for d in m["devices"].values() if "gpu" in d]
    kind = "quick" if report["settings"].get("quick") else "full"
    ax.set_title(f"fastnn bench ({kind} run), {m['date'][:10]}: {m['cpu']}, {m['threads']['requested']} threads"
                 + "".join(f", {g}" for g in gpus), fontsize=9)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    image = io.BytesIO()
    fig.savefig(image, dpi=110, format=Path(path).suffix[1:].lower() or "png")
    try:
        atomic_write(path, lambda f: f.write(image.getvalue()))
    except OSError as e:
        raise ModelFileError(f"cannot write the chart {path}: {e.strerror or e}") from e
    return None
