"""The scaling model of data-parallel training, fed with the numbers bench/allreduce.py measured.

    python bench/scaling_model.py bench/results/allreduce-2ranks-self+tcp.json

    step time(N) = compute(B) / N + allreduce(S, N)
    allreduce(S, N) = latency + 2 (N-1)/N * S / busbw          (ring all-reduce of S bytes)

Prints, as markdown: the measured table (compute/N + allreduce beside the measured step), the
latency and bandwidth fitted to the measured all-reduce times, and what the model predicts for
8 GPUs on NVLink and for 8 hosts on 100 Gb/s Ethernet.  The link figures and the GPU's
throughput below are assumptions, stated in the output; no GPU was measured here.
"""

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

N = 8
LINKS = {  # name: (latency of one all-reduce in seconds, bus bandwidth in bytes/s), assumed
    "NVLink, NCCL, busbw 150 GB/s": (15e-6, 150e9),
    "NVLink, NCCL, busbw 300 GB/s": (15e-6, 300e9),
    "100 Gb/s Ethernet, busbw 10 GB/s": (2 * (N - 1) * 20e-6, 10e9),
}
GPU_FLOPS = 40e12  # float32 GEMM throughput assumed for one data-centre GPU (H100 SXM peak is ~67e12)
GPU_FLOOR = 100e-6  # assumed launch-bound floor of one fastnn step on a GPU (~25 kernels from Python)


def step_flops(layers, batch):
    """Multiply-adds x 2 of one step: forward and BP4 on every layer, BP2 on all but the first."""
    weights = [n_out * n_in for n_in, n_out in itertools.pairwise(layers)]
    return 2 * batch * (2 * sum(weights) + sum(weights[1:]))


def allreduce(nbytes, n, link):
    latency, busbw = link
    return latency + 2 * (n - 1) / n * nbytes / busbw


def fit_link(results):
    """(latency, busbw) fitted to the measured all-reduce times: least squares of relative errors."""
    n = results[0]["ranks"]
    traffic = np.array([2 * (n - 1) / n * r["bytes"] for r in results])
    seconds = np.array([r["allreduce_s"] for r in results])
    slope, latency = np.polyfit(traffic, seconds, 1, w=1 / seconds)
    return latency, 1 / slope


def ms(seconds):
    return f"{seconds * 1e3:.3f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result", help="a JSON file written by bench/allreduce.py with 2 or more ranks")
    args = parser.parse_args(argv)
    report = json.loads(Path(args.result).read_text())
    results, n = report["results"], report["ranks"]
    print(f"Measured: {args.result} ({n} ranks, MCA {report['mca']}, {report['machine']['cpu']}, "
          f"{report['machine']['date']})\n")
    print(f"| config | parameters | MB | all-reduce ms | compute(B) ms | compute/{n} + all-reduce ms "
          f"| compute(B/{n}) + all-reduce ms | measured step ms | all-reduce / compute |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['config']} | {r['parameters']:,} | {r['bytes'] / 1e6:.2f} | {ms(r['allreduce_s'])} "
              f"| {ms(r['compute_s'])} | {ms(r['model_s'])} | {ms(r['model_share_s'])} | {ms(r['step_s'])} "
              f"| {r['allreduce_over_compute']:.2f} |")
    latency, busbw = fit_link(results)
    shown = f"{latency * 1e6:.0f} µs" + (" (below what these sizes resolve)" if latency < 1e-6 else "")
    print(f"\nFitted to the measured all-reduce times: latency {shown}, bus bandwidth {busbw / 1e9:.2f} GB/s.\n")
    print(f"Predicted step time on {N} workers (ms), and speed-up over one worker:\n")
    print("| config | link | CPU hosts like this one: step | speed-up | GPUs: one-GPU step (est.) | step | speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        gpu_one = max(GPU_FLOOR, step_flops(r["layers"], r["batch"]) / GPU_FLOPS)
        gpu_share = max(GPU_FLOOR, gpu_one / N)  # the launch-bound floor does not shrink with B/N
        for name, link in LINKS.items():
            comm = allreduce(r["bytes"], N, link)
            cpu = r["compute_s"] / N + comm
            gpu = gpu_share + comm
            cpu_cells = f"{ms(cpu)} | {r['compute_s'] / cpu:.2f}" if "Ethernet" in name else "– | –"
            print(f"| {r['config']} | {name} | {cpu_cells} | {ms(gpu_one)} | {ms(gpu)} | {gpu_one / gpu:.2f} |")
    print(f"\nAssumed: GPU float32 throughput {GPU_FLOPS / 1e12:.0f} TFLOP/s and a {GPU_FLOOR * 1e6:.0f} µs "
          "launch-bound floor per step; all-reduce latency and bus bandwidth per link as named "
          f"(Ethernet: {LINKS['100 Gb/s Ethernet, busbw 10 GB/s'][0] * 1e6:.0f} µs = 2(N-1) hops x 20 µs).")


if __name__ == "__main__":
    main()
