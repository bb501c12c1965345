"""What ``fastnn bench`` hands to people: the table (lines of text), the JSON file, the PNG chart.

Nothing here prints: the CLI prints the lines.  matplotlib is optional (``pip install
matplotlib``, or ``pip install '.[plot]'`` in the source folder); without it ``write_chart`` returns the reason and writes nothing.
"""

import json
from pathlib import Path

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
        pct = "" if r["fraction_of_peak"] is None else f" ({100 * r['fraction_of_peak']:.0f}%)"
        rows.append((r["config"], label, f"{r['median_s']:.3f}", f"{r['examples_per_s']:,.0f}",
                     _ratio(r["x_floor"]), _ratio(r["x_floor_of_minima"]), f"{r['gemm_flops_per_s'] / 1e9:.1f}{pct}",
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
    lines.append("x floor: median epoch over the floor's median; (best): fastest epoch over the floor's fastest")
    lines.append("vs torch, vs jax: PyTorch eager's and JAX jit+scan's median epoch on the same device over this one's")
    lines.append("vs numpy: plain batched numpy's median epoch (CPU, fastnn's BLAS thread policy) over this one's")
    chosen = [f"{r['config']} {r['blas_threads']}" for r in _rows(report) if r.get("blas_threads") is not None]
    if chosen:
        lines.append(f"fastnn's BLAS threads: {', '.join(chosen)} (its training policy unless --threads is given)")
    if any(r["scaled"] for r in report["results"]):
        lines.append("* timed on a slice of the epoch and scaled to the whole epoch")
    lines.append("host peak: rise of resident memory while building and training (the training set, "
                 f"{s['data_bytes'] / MB:,.0f} MB, is shared and not included)")
    for t in report["targets"]:
        value, limit = t["value"], t["limit"]
        if "memory" in t["target"] or "pool" in t["target"]:
            shown = f"{_bytes(value)} (limit {_bytes(limit)})"
        elif "faster" in t["target"]:
            shown = f"{value:.2f}x its speed (must {'exceed' if limit == 1 else 'reach'} {limit:g})"
        else:
            shown = f"{value:.2f}x (limit {limit:.2f}x)"
        lines.append(f"target {'met   ' if t['met'] else 'MISSED'} {t['target']}: {shown}")
    for s in report["skipped"]:
        where = " ".join(x for x in (s.get("config"), s.get("impl"), s.get("device")) if x and x != "all")
        lines.append(f"skipped {where}: {s['reason']}")
    return lines


def markdown(report):
    """The report's results as a Markdown table (for a README), one line per row."""
    head = ("| config | implementation | s/epoch | examples/s | x floor | (best) | GFLOP/s (% of peak) "
            "| vs textbook loop | vs PyTorch | vs JAX | host peak |")
    out = [head, "|" + " --- |" * 11]
    for r in _rows(report):
        pct = "" if r["fraction_of_peak"] is None else f" ({100 * r['fraction_of_peak']:.0f}%)"
        out.append(f"| {r['config']} | {r['label']}{' *' if r['scaled'] else ''} | {r['median_s']:.3f} "
                   f"| {r['examples_per_s']:,.0f} | {_ratio(r['x_floor'])} | {_ratio(r['x_floor_of_minima'])} "
                   f"| {r['gemm_flops_per_s'] / 1e9:.1f}{pct} | {_ratio(r['vs_textbook_loop'])} "
                   f"| {_ratio(r['vs_torch'])} | {_ratio(r.get('vs_jax'))} | {_bytes(r.get('host_peak_bytes'), plus=True)} |")
    return out


def write_json(report, path):
    """Write the report to ``path`` as indented JSON."""
    Path(path).write_text(json.dumps(report, indent=1, default=str) + "\n")


def write_chart(report, path):
    """Draw examples/s per config and implementation (log scale) to ``path``; return None, or why not."""
    try:
        from matplotlib.figure import Figure
    except Exception as e:  # noqa: BLE001 - ImportError or a broken install
        return f"no chart: matplotlib is not installed ({type(e).__name__}); pip install matplotlib"
    rows = _rows(report)
    configs = list(dict.fromkeys(r["config"] for r in rows))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    fig = Figure(figsize=(max(7.0, 1.8 * len(configs) + 4), 4.5), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        xs, ys = [], []
        for j, config in enumerate(configs):
            for r in rows:
                if r["config"] == config and r["label"] == label:
                    xs.append(j - 0.4 + width * (i + 0.5))
                    ys.append(r["examples_per_s"])
        ax.bar(xs, ys, width, label=label + (" (scaled)" if any(r["scaled"] for r in rows if r["label"] == label)
                                             else ""))
    ax.set_yscale("log")
    ticks = [f"{c}\n{'-'.join(map(str, CONFIGS[c].sizes))}\nbatch {CONFIGS[c].batch_size}" for c in configs]
    ax.set_xticks(range(len(configs)), ticks, fontsize=8)
    ax.set_ylabel("examples per second (log scale)")
    m = report["machine"]
    gpus = [d["gpu"] for d in m["devices"].values() if "gpu" in d]
    ax.set_title(f"fastnn bench, {m['date'][:10]}: {m['cpu']}, {m['threads']['requested']} threads"
                 + "".join(f", {g}" for g in gpus), fontsize=9)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        return f"no chart: cannot write {path}: {e}"
    return None
