"""A cycle model of the fused CUDA kernel on one H100 SM, read from its machine code: a PREDICTION, not a measurement.

    python -m bench.cuda_model [--old FILE] [--out bench/results/cuda-model.txt]

It compiles fastnn/engines/cuda_fused.cu (and the old kernel, ``git show <rev>:fastnn/engines/cuda_fused.cu``) for
sm_90 with NVRTC 13 and cupy's options, disassembles it with nvdisasm 13 (tests/kernel_shim/sass.py), finds the
hot loops of each phase in the SASS by their instruction mix, and multiplies their instruction counts by the trip
counts that the kernel's mapping gives for a network (the mapping is mirrored here from the .cu).  Each phase
takes the largest of three bounds:

    issue    the busiest scheduler's instructions: warps on it × trips × loop instructions (4 schedulers, each
             issuing one warp instruction per clock)
    shared   the SM's shared-memory cycles: it returns 128 bytes a clock, so a warp's 16-byte load takes 4 cycles,
             or 2 where lanes 2i and 2i+1 (or i and i^2) read one address each (NVIDIA's answer for CC 7.x,
             forums.developer.nvidia.com/t/77228, assumed to hold on sm_90: not measured here), and more where
             distinct addresses share a bank quad (one wavefront each)
    latency  one warp's dependent chain: trips × (the latency of the iteration's loads + its FMA chain)

plus a barrier's cost for each __syncthreads, small phases (BP1, BP2, the split sums, biases) costed by their
dependent chains alone, and the prefetch: the instructions that issue the next batch's copies (beside BP1), read
from the SASS, after the read of the rows' indices (from shared memory: they are copied in a step ahead).  Stated
figures (LATENCY below): L2 ~260 cycles, HBM ~500, shared memory ~33, an FMA's result 4 cycles, a barrier 40, the
clock 1.755 GHz (the H100 PCIe's boost; an SXM5 boosts higher, so the figures lean slow).

Why it could be wrong: it ignores instruction-cache misses (the kernel's SASS is large: the tile's chunks run as
straight-line blocks of ~1,000 instructions), dual-issue limits and register-bank conflicts, the tail of each
barrier-separated phase (its first shared reads' latency), assumes warps of a phase run in parallel and the
prefetch's HBM traffic overlaps the step entirely, takes shared memory's 2-cycle rule above on trust (at 4 cycles
a 16-byte read, the tile's phases would be bound by shared memory instead), and counts a loop's body as executed
in full (for the hot loops, compiled for the batch size, that is exact; branches inside them, as the momentum
update's, are counted once).  The old kernel's figure is a range:
its inputs are read from global memory inside the loops, and whether a read hits L1 (a row's next 64 bytes) or
goes to HBM decides it.
"""

import argparse
import datetime
import itertools
import math
import subprocess
import sys
from pathlib import Path

from fastnn.engines import cuda_fused
from tests.kernel_shim import sass

ROOT = Path(__file__).resolve().parent.parent
CLOCK_GHZ = 1.755  # H100 SXM boost clock
SCHEDULERS = 4  # per SM, each issuing one warp instruction per clock
LATENCY = {"shared": 33, "l1": 35, "l2": 260, "hbm": 500, "fma": 4, "shuffle": 24, "mufu": 20, "barrier": 40,
           "cluster_barrier": 350, "dsmem": 200}  # the last two: a cluster's barrier and a remote shared read
EPOCH = 60000  # examples per epoch (MNIST's training set)
WORKLOADS = {"textbook": ([784, 30, 10], 10), "mid": ([784, 128, 10], 64)}  # sigmoid layers, quadratic cost
ISSUE_ESTIMATE = "62-95 µs per step, 0.37-0.57 s per epoch (issue 19's reading of the old kernel)"
TARGETS = "single SM <= 3.3 µs per step (20 ms per epoch); sm_90 cluster <= 1.7 µs (10 ms)"


def find_loop(loops, name, test):
    """The smallest innermost loop of ``loops`` whose counts pass ``test``; ValueError naming the phase if none."""
    found = [lp for lp in loops if lp["innermost"] and test(lp["counts"])]
    if not found:
        raise ValueError(f"no loop in the SASS looks like the {name} loop")
    return min(found, key=lambda lp: lp["instructions"])


def lds128(addresses):
    """Shared-memory cycles of one warp's 16-byte load, lane t reading 16-byte word addresses[t] (see the module
    docstring: 128 bytes a clock, 2 cycles where lanes pair on one address, and one wavefront per distinct address
    in a bank quad)."""
    paired = any(all(addresses[t] == addresses[t ^ d] for t in range(32)) for d in (1, 2))
    quads = {}
    for a in set(addresses):
        quads[a % 8] = quads.get(a % 8, 0) + 1
    return max(2 if paired else 4, max(quads.values()))


BROADCAST = lds128([0] * 32)  # every lane one address (x in the forward and BP4 loops)
ROWS = lds128([9 * t for t in range(32)])  # each lane its own row, 16-byte words 9 apart (W^l's padded rows)


def phase(name, issue=0, shared=0, latency=0, barriers=0, note=""):
    bounds = {"issue": issue, "shared": shared, "latency": latency}
    bound = max(bounds, key=bounds.get)
    return {"name": name, "cycles": bounds[bound] + barriers * LATENCY["barrier"], "bound": bound, "note": note}


def split_sums(name, batch, n_out, split, threads):
    """The pass adding the warps' split sums (finish_forward): two units a thread at once, each as its even and odd
    parts, so a trip costs one chain of half the split (the second unit's issue beside it), then σ."""
    trips = math.ceil(batch * n_out / (2 * threads))
    second = split if batch * n_out > threads else 0  # the second unit's reads, where some thread has one
    chain = LATENCY["shared"] + (math.ceil(split / 2) + 2) * LATENCY["fma"] + LATENCY["mufu"] + second
    return phase(f"  split sums {name}", latency=trips * chain, barriers=1,
                 note=f"{trips} trip{'s' if trips > 1 else ''} of two units a thread")


def tile_blocks(blocks, name, test):
    """The basic blocks passing ``test`` (chunks of W^0's register tile, unrolled); ValueError if none."""
    found = [b for b in blocks if test(b["counts"])]
    if not found:
        raise ValueError(f"no basic block in the SASS looks like a chunk of the {name}")
    return found


def gap(blocks, found):
    """Instructions between consecutive chunk blocks (a chunk's guard), the most seen."""
    starts = {b["start"] for b in found}
    out, inside, count = 0, False, 0
    for b in blocks:
        if b["start"] in starts:
            if inside:
                out = max(out, count)
            inside, count = True, 0
        elif inside:
            count += b["instructions"]
            if count > 40:  # past the last chunk
                inside = False
    return out


class Cost:
    """n -> the instructions one warp issues for n chunks of a tile phase; ``inside``: whether the phase's fixed
    reads (δ, in BP4) are in the chunks' block (counted there)."""

    def __init__(self, count, inside):
        self.count, self.inside = count, inside

    def __call__(self, n):
        return self.count(n)


def chunk_cost(blocks, name, ffma, lds, test=lambda c: True):
    """(Cost, instructions a chunk): the instructions one warp issues for n chunks of a tile phase, from the SASS.

    A chunk is ``ffma`` FMAs and ``lds`` 16-byte reads of the inputs.  Where ptxas ran the unguarded chunks
    together (one basic block of k chunks, then the guarded last one after its guard), a warp issues that block and
    the guard, and the last chunk's block where it holds one (n = k + 1); otherwise each chunk is a block of its own
    and its guard, n of them."""
    def chunks_in(c):
        k = c.get("FFMA", 0) // ffma
        reads = c.get("LDS.128", 0) - k * lds  # more: BP4's reads of δ, 16 bytes each, in the same block
        return k if k and c.get("FFMA") == k * ffma and 0 <= reads <= 8 and test(c) else 0

    found = tile_blocks(blocks, name, chunks_in)
    biggest = max(found, key=lambda b: chunks_in(b["counts"]))
    k = chunks_in(biggest["counts"])
    if k == 1:
        per = max(b["instructions"] for b in found) + gap(blocks, found)
        return Cost(lambda n: n * per, False), per
    at = blocks.index(biggest)
    after = next((i for i in range(at + 1, len(blocks)) if chunks_in(blocks[i]["counts"]) == 1), None)
    if after is None or after - at > 6:
        raise ValueError(f"no guarded last chunk follows the {name}'s unguarded ones")
    guard = sum(b["instructions"] for b in blocks[at + 1:after])
    last = blocks[after]["instructions"] + 1  # and its reconvergence
    counts = biggest["counts"]
    inside = counts.get("LDS", 0) >= lds or counts.get("LDS.128", 0) > k * lds  # BP4's reads of δ inside the block
    return (Cost(lambda n: biggest["instructions"] + guard + (last if n > k else 0), inside),
            (biggest["instructions"] + guard + last) / (k + 1))


def fetch_costs(blocks, rows):
    """(instructions a warp issues before its copies, per copy) of the step loop's fetch_rows<rows> (cuda_fused.cu),
    read from the SASS: the block reading the rows' indices from the ring (rows LDS.64), and after it the block
    copying a whole group (rows LDGSTS, unguarded: the fewest instructions of those; a step's batch is whole but for
    the epoch's last); ValueError if none."""
    setup = [b for b in blocks if b["counts"].get("LDS.64") == rows]
    if not setup:
        raise ValueError(f"no basic block in the SASS reads fetch_rows<{rows}>'s indices")
    copies = [b["instructions"] / rows for b in blocks
              if b["start"] > setup[0]["start"] and b["counts"].get("LDGSTS", 0) == rows]
    if not copies:
        raise ValueError(f"no basic block in the SASS copies fetch_rows<{rows}>'s rows")
    return max(b["instructions"] for b in setup) + 4, min(copies)  # (+ the checks before it)


def fetch_issue(setup, per_copy, rows, chunks, n_out, first, threads):
    """Instructions each warp issues in one fetch_rows call of ``rows`` rows: the threads from ``first`` on copy
    ``chunks`` chunks a row (and the targets' n_out floats), thread t its chunks t - first, + (threads - first), ...;
    a warp with no copy returns at once."""
    step, out = threads - first, []
    for w in range(threads // 32):
        lanes = [t - first for t in range(32 * w, 32 * w + 32) if t >= first]
        trips = max((math.ceil((chunks - t) / step) for t in lanes if t < chunks), default=0)
        targets = max((math.ceil((n_out - t) / step) for t in lanes if t < n_out), default=0)
        out.append(setup + (trips + targets) * (rows * per_copy + 3) if trips or targets else 4)
    return out


def tile_phases(blocks, sizes, n_in, n_out, batch, threads, chunks, momentum, shape):
    """Layer 0's forward pass and BP4 + update with W^0 in registers (FASTNN_W0REG = chunks, (FASTNN_W0ROWS,
    FASTNN_W0GROUP) = shape): thread t holds its rows over the chunks of slot t // group (slot s: chunks s,
    s + slots, ...); a warp steps through the most chunks its lanes' slots hold (each a chunk block: MB 16-byte reads
    of x, 4·rows FMAs a read); every warp runs the chunks every slot holds (the unguarded ones).  A warp's 16-byte
    read has one address per slot among its lanes (lds128 prices it)."""
    mb = cuda_fused.example_block(batch)
    rows, group = shape
    slots = threads // group
    warps, total = threads // 32, math.ceil(n_in / 4)
    held = [max(0, math.ceil((total - s) / slots)) for s in range(slots)] + [0]  # the last: past the last slot
    lanes = [[min(t // group, slots) for t in range(32 * w, 32 * w + 32)] for w in range(warps)]
    iterations = [max(chunks - 1, max(held[s] for s in w)) for w in lanes]
    per_scheduler = [[iterations[w] for w in range(s, warps, SCHEDULERS)] for s in range(SCHEDULERS)]
    warps_on_it = math.ceil(warps / SCHEDULERS)

    def wavefronts(w):  # warp w's lanes reading their slot's chunk: slot s's chunk q at 16-byte word (s + slots·q)·mb
        return lds128([s * mb for s in lanes[w]])

    forward, f_per = chunk_cost(blocks, "forward from registers", 4 * rows * mb, mb, lambda c: not c.get("STS"))
    update_ffma = 4 * rows * (mb + (0 if momentum else 1))  # the plain update is one FMA a weight, in the chunk's block
    update, u_per = chunk_cost(blocks, "BP4 + update from registers", update_ffma, mb, lambda c: not c.get("STG"))
    velocity = rows * (LATENCY["shared"] // 4 + 12) if momentum else 0  # a chunk's velocity (in shared memory): read,
    # 4·rows updates, write, in the blocks after each chunk
    f_fixed = rows * mb + 6  # per warp: the stores of its rows' sums of each example (immediate offsets), their address
    u_fixed = 0 if update.inside else 4 * mb  # per warp: δ of both rows for each example, where ptxas kept them out of
    # the chunks' block (inside it, they are counted with it)
    phases = []
    issue = max(sum(forward(n) for n in on) for on in per_scheduler) + warps_on_it * f_fixed
    shared = sum(iterations[w] * mb * wavefronts(w) for w in range(warps)) + n_out * batch * slots * 4 // 128
    latency = max(iterations) * (LATENCY["shared"] + 4 * LATENCY["fma"]) + LATENCY["shared"]
    busiest = max(sum(on) for on in per_scheduler)
    phases.append(phase(f"forward {n_in}->{n_out} (W^0 in registers)", issue, shared, latency, barriers=1,
                        note=f"{f_per:.1f} instr/chunk, {busiest} chunks on the busiest scheduler, {rows} rows x "
                             f"{group} a slot, split {slots}"))
    issue = max(sum(update(n) + n * velocity for n in on) for on in per_scheduler) + warps_on_it * u_fixed
    shared = sum(iterations[w] * mb * wavefronts(w) for w in range(warps)) + 2 * mb * warps
    latency = max(iterations) * (LATENCY["shared"] + mb * LATENCY["fma"]) + LATENCY["shared"]
    bias = LATENCY["shared"] + batch * LATENCY["fma"] + (LATENCY["l2"] if momentum else 0)
    return phases, phase(f"BP4+update {n_in}->{n_out} (W^0 in registers)", issue, shared, max(latency, bias),
                         note=f"{u_per + velocity:.1f} instr/chunk, {busiest} chunks on the busiest scheduler"), slots


def order_latency(mb):
    """The read of a step's row indices: from the ring in shared memory (copied in a step ahead)."""
    return LATENCY["shared"]


def new_kernel(loops, sizes, batch, threads, momentum, cluster=1, blocks=None, w0_chunks=0, shape=(2, 16)):
    """Phases of one step of the redesigned kernel (fastnn/engines/cuda_fused.cu) for a full batch, on one SM or
    on each block of a cluster (layer 0's inputs split ``cluster`` ways, its sums exchanged once a step); with
    ``w0_chunks`` > 0, W^0 in registers (``blocks``: the SASS's basic blocks, sass.blocks)."""
    inputs = [cuda_fused.block_inputs(sizes, layer, cluster) for layer in range(len(sizes) - 1)]
    mb = cuda_fused.example_block(batch)
    warps = threads // 32
    per_scheduler = math.ceil(warps / SCHEDULERS)

    def forward_test(c):
        return c.get("FFMA") == 4 * mb and c.get("LDS.128") == mb + 1 and not (c.get("STS.128") or c.get("LDG"))

    # W^0's velocity: in shared memory (16-byte words beside W's) where the block has room, else in global memory
    v0_shared = momentum and cuda_fused.shared_bytes(sizes, batch, threads, cluster, True, w0_chunks) <= 227 * 1024
    words = 2 if v0_shared and not w0_chunks else 1  # (with the tile, the loop left is the small layers': V_SMALL)

    def update_test(c):
        return (c.get("LDS.128") == mb + words and c.get("STS.128") == words and c.get("FFMA", 0) >= 4 * mb
                and bool(c.get("LDG")) == (momentum and not v0_shared and not w0_chunks))

    forward = find_loop(loops, "forward (one 16-byte chunk of W times the batch's chunks)", forward_test)
    update = find_loop(loops, "BP4 + update (one chunk of a row of W)", update_test)
    phases, tile_update, basic = [], None, blocks  # (``blocks`` is reused below for the batch's register blocks)
    for layer, (n_in, n_out) in enumerate(zip(inputs, sizes[1:])):
        if layer == 0 and w0_chunks:
            tile, tile_update, slots = tile_phases(blocks, sizes, n_in, n_out, batch, threads, w0_chunks, momentum,
                                                   shape)
            phases += tile
            items = math.ceil(batch * n_out / threads)
            phases.append(split_sums(n_out, batch, n_out, slots, threads))
            if cluster > 1:
                exchange = LATENCY["cluster_barrier"] + items * (LATENCY["dsmem"] + cluster * LATENCY["fma"]
                                                                 + LATENCY["mufu"])
                phases.append(phase(f"  cluster exchange {n_out} ({cluster} blocks)", latency=exchange, barriers=1,
                                    note="one cluster barrier, remote reads of the blocks' sums"))
            continue
        jblocks, chunks = math.ceil(n_out / 32), math.ceil(n_in / 4)
        lanes = min(32, n_out)
        w_wave = math.ceil(lanes * 16 / 128)  # one 16-byte read of W per lane: conflict-free rows
        split = cuda_fused.input_split(n_in, n_out, warps)
        units, blocks = jblocks * split, math.ceil(batch / mb)
        trips = math.ceil(units / warps) * blocks * math.ceil(chunks / split)
        issue = min(per_scheduler, math.ceil(units / SCHEDULERS)) * trips * forward["instructions"]
        shared = jblocks * blocks * chunks * (w_wave + mb)
        latency = trips * (LATENCY["shared"] + 4 * LATENCY["fma"])
        phases.append(phase(f"forward {n_in}->{n_out}", issue, shared, latency, barriers=1,
                            note=f"{forward['instructions']} instr/chunk, {trips} chunks/warp, split {split}"))
        items = math.ceil(batch * n_out / threads)
        if split > 1:
            phases.append(split_sums(n_out, batch, n_out, split, threads))
        if layer == 0 and cluster > 1:
            exchange = LATENCY["cluster_barrier"] + items * (LATENCY["dsmem"] + cluster * LATENCY["fma"]
                                                             + LATENCY["mufu"])
            phases.append(phase(f"  cluster exchange {n_out} ({cluster} blocks)", latency=exchange, barriers=1,
                                note="one cluster barrier, remote reads of the blocks' sums"))
    # BP1 with an elementwise output and the quadratic cost (the textbook's): one pass over the outputs, whose
    # σ are independent and whose cost sum is one chain; softmax or log-likelihood would take six passes.
    # Beside it, the warps past the first issue the next batch's copies (fetch_rows), after their rows' indices.
    bp1 = LATENCY["shared"] + LATENCY["mufu"] + sizes[-1] * 2 * LATENCY["fma"]
    setup, per_copy = fetch_costs(basic, mb)
    fetch = fetch_issue(setup, per_copy, mb, inputs[0] // 4, sizes[-1], 32, threads)
    fetch_issue_busiest = max(sum(fetch[s::SCHEDULERS]) for s in range(SCHEDULERS))
    fetch_chain = order_latency(mb) + max(fetch)
    phases.append(phase("BP1 (output, cost); the next batch's copies", issue=fetch_issue_busiest,
                        latency=max(bp1, fetch_chain), barriers=1,
                        note=f"one thread per example; warps 1-{warps - 1} copy, {max(fetch):.0f} instr the most"))
    for n_in, n_out in list(itertools.pairwise(sizes))[:0:-1]:
        group = 1
        while group < 32 and 2 * group * n_in * batch <= threads:
            group *= 2
        trips = math.ceil(n_in * batch / (2 * (threads // group)))  # two items a thread, side by side
        chain = LATENCY["shared"] + math.ceil(n_out / group) * LATENCY["fma"] + int(math.log2(group)) * LATENCY["shuffle"]
        second = 2 * math.ceil(n_out / group) if n_in * batch > threads // group else 0  # the second item's loads
        # and FMAs, issued beside the first's chain, where some thread has a second item
        phases.append(phase(f"BP2 {n_out}->{n_in}", latency=trips * (chain + second + LATENCY["shared"] + LATENCY["fma"]),
                            barriers=1, note=f"groups of {group} lanes, shuffles; {trips} trip(s) of two items"))
    for layer, (n_in, n_out) in list(enumerate(zip(inputs, sizes[1:])))[::-1]:
        if layer == 0 and tile_update is not None:
            phases.append(tile_update)
            continue
        jblocks, chunks = math.ceil(n_out / 32), math.ceil(n_in / 4)
        w_wave = math.ceil(min(32, n_out) * 16 / 128)
        trips = jblocks * math.ceil(chunks / warps)
        issue = min(per_scheduler, math.ceil(chunks / SCHEDULERS)) * trips * update["instructions"]
        shared = jblocks * chunks * (mb + 2 * w_wave * words)
        latency = trips * (LATENCY["shared"] + mb * LATENCY["fma"] + 3 * LATENCY["fma"])
        if momentum and not v0_shared:  # the velocity is read one chunk ahead: only the first read's latency shows
            latency += LATENCY["l2"]
        bias = LATENCY["shared"] + batch * LATENCY["fma"] + (LATENCY["l2"] if momentum else 0)
        where = ("; velocity " + ("on chip" if v0_shared or n_in != inputs[0] else "global")) if momentum else ""
        phases.append(phase(f"BP4+update {n_in}->{n_out}", issue, shared, max(latency, bias),
                            note=f"{update['instructions']} instr/chunk, {trips} chunks/warp{where}"))
    phases.append(phase("step barrier (inputs in, buffers swapped)", barriers=1))
    return phases


def old_kernel(loops, sizes, batch, threads, momentum, miss):
    """Phases of one step of the old kernel (one block, generic loads, 8-way conflicted partial sums).

    ``miss``: the latency of a read of X inside the loops (L1 when a row's line is already there, else HBM).
    """
    warps = threads // 32
    per_scheduler = math.ceil(warps / SCHEDULERS)
    old_mb = 8
    forward = find_loop(loops, "old forward", lambda c: c.get("LD") == old_mb + 1 and c.get("FFMA") == old_mb)
    update = find_loop(loops, "old update", lambda c: c.get("LDG", 0) >= 8 and c.get("ST", 0) >= 8 and c.get("FFMA"))
    phases = []
    blocks = math.ceil(batch / old_mb)
    for layer, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        group = 1
        while group < 32 and 2 * group * n_out <= threads:
            group *= 2
        passes = math.ceil(n_out / (threads // group))
        trips = passes * blocks * math.ceil(n_in / group)
        read = miss if layer == 0 else LATENCY["shared"] + 10  # X in global memory, or shared through generic LD
        issue = per_scheduler * trips * forward["instructions"]
        latency = trips * (read + old_mb * LATENCY["fma"])
        rounds = int(math.log2(group))
        reduce = passes * blocks * rounds * (2 * LATENCY["shared"] + 8 * 8 // 2)  # 8-way conflicted reads
        phases.append(phase(f"forward {n_in}->{n_out}", issue, 0, latency + reduce,
                            barriers=passes * blocks * (rounds + 2), note=f"{trips} dependent rounds of loads"))
    phases.append(phase("BP1 (output, cost)", latency=6 * (LATENCY["shared"] + 10 + sizes[-1] * LATENCY["fma"])
                        + 2 * LATENCY["mufu"], barriers=1))
    for n_in, n_out in list(itertools.pairwise(sizes))[::-1]:
        lanes = max(1, threads // n_out)
        trips = math.ceil(n_in / lanes)
        read = miss if n_in == sizes[0] else LATENCY["shared"] + 10
        issue = per_scheduler * trips * update["instructions"] // 2  # the loop is unrolled twice
        latency = trips * (read + batch * LATENCY["fma"] + (LATENCY["l2"] if momentum else 0))
        phases.append(phase(f"BP2+BP4+update {n_in}->{n_out}", issue, 0, latency, barriers=2,
                            note=f"{trips} dependent rounds of loads"))
    return phases


def describe_tile(chunks, shape=None):
    if not chunks:
        return "W^0 in shared memory"
    return f"W^0 in registers, {chunks} chunks a thread" + (f", {shape[0]} rows x {shape[1]} a slot" if shape else "")


def predict(phases):
    cycles = sum(p["cycles"] for p in phases)
    us = cycles / (CLOCK_GHZ * 1e3)
    return cycles, us


def report_kernel(title, phases, batch):
    cycles, us = predict(phases)
    lines = [f"{title}", f"  {'phase':44s} {'cycles':>8s}  bound    note"]
    for p in phases:
        lines.append(f"  {p['name']:44s} {p['cycles']:8.0f}  {p['bound']:8s} {p['note']}")
    epoch_s = us * 1e-6 * math.ceil(EPOCH / batch)
    lines.append(f"  => {cycles:.0f} cycles = {us:.2f} µs per step, {epoch_s * 1e3:.1f} ms per {EPOCH} epoch")
    return lines, us, epoch_s


def fits(sizes, batch):
    need = cuda_fused.least_shared_bytes(sizes, batch)
    return need <= 227 * 1024, need


def tile_for(sizes, batch, shape=None):
    """(FASTNN_W0REG, (FASTNN_W0ROWS, FASTNN_W0GROUP)) of the single-SM kernel for a workload: the host's
    (register_chunks, tile_shape), or with ``shape`` instead (its chunks a slot recomputed; for comparing mappings)."""
    tile = cuda_fused.register_chunks(sizes, batch)
    if not tile or shape is None:
        return tile, cuda_fused.tile_shape(sizes)
    slots = cuda_fused.W0_THREADS // shape[1]
    return math.ceil(cuda_fused.block_inputs(sizes, 0) // 4 / slots), tuple(shape)


def model(old_source=None, momentum=False, w0_shape=None):
    """{'lines': the report, 'new': {workload: µs per step or None}, 'old': {workload: (low, high) µs}}; ``w0_shape``:
    the tile's (rows, group) instead of the host's."""
    lines = [f"PREDICTION (cycle model, not a measurement) - {datetime.date.today().isoformat()}",
             f"compiled for sm_90 with {sass.versions()}; options: {' '.join(sass.CUPY_OPTIONS)} + the host's",
             f"H100 SM: {SCHEDULERS} schedulers, {CLOCK_GHZ} GHz; latencies (cycles): "
             + ", ".join(f"{k} {v}" for k, v in LATENCY.items()),
             f"update: {'momentum' if momentum else 'plain SGD'}", ""]
    out = {"new": {}, "cluster": {}, "old": {}}
    source = cuda_fused.SOURCE.read_text()
    for name, (sizes, batch) in WORKLOADS.items():
        shape = "-".join(map(str, sizes))
        ok, need = fits(sizes, batch)
        if not ok:
            lines.append(f"{name} {shape} batch {batch}: does not fit one SM ({need / 1024:.0f} KiB of shared memory "
                         f"> 227 KiB: its first layer's weights alone are {sizes[0] * sizes[1] * 4 / 1024:.0f} KiB); "
                         "the engine leaves it to the generic engine, so no prediction")
            out["new"][name] = None
            continue
        tile, tile_shape = tile_for(sizes, batch, w0_shape)
        threads = cuda_fused.threads(tile)
        found = sass.report(source, options=cuda_fused.compile_options(batch, 1, tile, tile_shape))[cuda_fused.KERNEL]
        phases = new_kernel(sass.loops(found["sass"]), sizes, batch, threads, momentum,
                            blocks=sass.blocks(found["sass"]), w0_chunks=tile, shape=tile_shape)
        text, us, _ = report_kernel(f"new kernel, {name} {shape} batch {batch} (single SM, {threads} threads, "
                                    f"{found['registers']} registers, {found['stack']} B stack, "
                                    f"{describe_tile(tile, tile_shape)})", phases, batch)
        lines += text + [""]
        out["new"][name] = us
    for name, (sizes, batch) in WORKLOADS.items():
        shape, cluster = "-".join(map(str, sizes)), cuda_fused.CLUSTER
        need = cuda_fused.shared_bytes(sizes, batch, cluster=cluster)
        if need > 227 * 1024:
            lines.append(f"{name} {shape} batch {batch} on a cluster of {cluster}: does not fit either "
                         f"({need / 1024:.0f} KiB a block > 227 KiB: a batch's activations and sums)")
            out["cluster"][name] = None
            continue
        tile = cuda_fused.register_chunks(sizes, batch, cluster)
        threads = cuda_fused.threads(tile)
        found = sass.report(source, options=cuda_fused.compile_options(batch, cluster, tile, cuda_fused.tile_shape(sizes)))[cuda_fused.KERNEL]
        phases = new_kernel(sass.loops(found["sass"]), sizes, batch, threads, momentum, cluster,
                            blocks=sass.blocks(found["sass"]), w0_chunks=tile)
        text, us, _ = report_kernel(f"new kernel, {name} {shape} batch {batch} (sm_90 cluster of {cluster}, "
                                    f"{threads} threads, {found['registers']} registers, {found['stack']} B stack, "
                                    f"{describe_tile(tile)})", phases, batch)
        lines += text + [""]
        out["cluster"][name] = us
    if old_source is not None:
        found = sass.report(old_source, options=("--std=c++17",))[cuda_fused.KERNEL]
        old_loops = sass.loops(found["sass"])
        for name, (sizes, batch) in WORKLOADS.items():
            if name != "textbook":
                continue
            shape = "-".join(map(str, sizes))
            both = []
            for label, miss in (("X reads hit L1 every other time", (LATENCY["l1"] + LATENCY["hbm"]) / 2),
                                ("every X read from HBM", LATENCY["hbm"])):
                phases = old_kernel(old_loops, sizes, batch, 512, momentum, miss)
                text, us, _ = report_kernel(f"old kernel, {name} {shape} batch {batch}: {label}", phases, batch)
                lines += text + [""]
                both.append(us)
            out["old"][name] = tuple(both)
    lines.append(f"issue 19's estimate for the old kernel: {ISSUE_ESTIMATE}")
    lines.append(f"targets: {TARGETS}")
    out["lines"] = lines
    return out


def old_kernel_source(rev):
    """The fused kernel's source at git revision ``rev`` (the kernel before issue 19: main's history)."""
    return subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:fastnn/engines/cuda_fused.cu"],
                          capture_output=True, text=True, check=True).stdout


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default=str(ROOT / "bench" / "results" / "cuda_fused_before_19.cu"),
                        help="the old kernel's source (default: the copy kept in bench/results)")
    parser.add_argument("--momentum", action="store_true", help="the momentum update (default: plain SGD)")
    parser.add_argument("--out", help="also write the report to this file")
    parser.add_argument("--shape", type=int, nargs=2, metavar=("ROWS", "GROUP"),
                        help="the tile's rows a thread and threads a slot (default: the host's, tile_shape)")
    args = parser.parse_args(argv)
    reason = sass.tools_reason()
    if reason:
        print(f"cuda_model: {reason}", file=sys.stderr)
        return 1
    result = model(Path(args.old).read_text(), args.momentum, args.shape)
    text = "\n".join(result["lines"]) + "\n"
    print(text, end="")
    if args.out:
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
