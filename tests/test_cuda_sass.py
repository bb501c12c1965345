"""The fused kernel's machine code, as an H100 would run it: compiled for sm_90 with NVRTC 13 and cupy's options,
disassembled with nvdisasm 13 (tests/kernel_shim/sass.py).  What makes it fast by construction stays true in CI:

- a 0-byte stack frame and no spills (no per-layer pointer arrays indexed at run time, no register array
  indexed at run time): no LDL/STL at all;
- shared memory reached through LDS/STS only: no generic LD/ST (a generic access costs an address-space
  check and goes through the L1 path even when it lands in shared memory);
- the registers of a full block fit the SM's 64k, rounded per warp as the hardware allocates them.

Needs the CUDA 13 wheels (nvidia-cuda-nvrtc, nvidia-cuda-nvdisasm; .ci/run installs them): skipped only where
neither is installed and CI is unset, failed in CI.
"""

import os
import re

import pytest

from fastnn.engines import cuda_fused
from tests.kernel_shim import sass

pytestmark = pytest.mark.kernel
SOURCES = sorted(cuda_fused.SOURCE.parent.glob("*.cu"))
# (batch size, blocks per network, W^0's chunks a thread holds in registers, the tile's shape): W^0 in shared memory at the textbook's
# register block and the largest the host compiles, on one SM and on an sm_90 cluster; W^0 in registers as the host
# compiles the textbook on one SM (register_chunks) and on a cluster (the kernel allows it; the host does not pick
# it); the edges of W0_BUDGET are compiled below
TEXTBOOK = [784, 30, 10]
SHAPE = cuda_fused.W0_SHAPE
VARIANTS = [(10, 1, 0, SHAPE), (cuda_fused.EXAMPLE_BLOCK, 1, 0, SHAPE), (10, cuda_fused.CLUSTER, 0, SHAPE),
            (cuda_fused.EXAMPLE_BLOCK, cuda_fused.CLUSTER, 0, SHAPE),
            (10, 1, cuda_fused.register_chunks(TEXTBOOK, 10), cuda_fused.tile_shape(TEXTBOOK)),
            (10, cuda_fused.CLUSTER, 2, SHAPE)]


def largest_tile(batch, n_1=30):
    """The most chunks a thread register_chunks gives at this batch (over the inputs every slot fills)."""
    most = 0
    for chunks in range(1, 40):
        inputs = 4 * cuda_fused.tile_slots([1, n_1]) * chunks  # every slot holding `chunks` chunks
        if cuda_fused.register_chunks([inputs, n_1, 10], batch) == chunks:
            most = chunks
    return most


# the shapes tile_shape picks (rows a thread, threads a slot), each with an n_1 that takes it
SHAPES = {(2, 10): 20, (3, 10): 30, (4, 8): 32}


def test_the_textbook_tile_is_8_chunks_and_the_budget_has_an_edge():
    assert VARIANTS[4][2:] == (8, (3, 10)) and largest_tile(10) == 9
    inputs = 4 * cuda_fused.tile_slots(TEXTBOOK) * 9
    assert cuda_fused.register_chunks([inputs, 30, 10], 10) == 9
    assert cuda_fused.register_chunks([inputs + 4, 30, 10], 10) == 0  # a 10th chunk: past budget(3)
    assert {shape: cuda_fused.tile_shape([784, n_1, 10]) for shape, n_1 in SHAPES.items()} == {s: s for s in SHAPES}


def test_the_largest_tile_at_every_batch_compiles_without_a_spill():
    """The budget's edge (cuda_fused.budget): at each batch 1..16 the largest tile of the textbook's shape the host
    compiles, and of the two other shapes at five batches, has no stack frame and no spill (ptxas's choices near 255
    registers are not monotone, which is why each is compiled)."""
    reason = sass.tools_reason()
    if reason and (os.environ.get("CI") or _one_installed()):
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)
    from concurrent.futures import ThreadPoolExecutor

    source = cuda_fused.SOURCE.read_text()

    def compiled(case):
        shape, batch = case
        chunks = largest_tile(batch, SHAPES[shape])
        found = sass.report(source, options=cuda_fused.compile_options(batch, 1, chunks, shape))[cuda_fused.KERNEL]
        return shape, batch, chunks, found["stack"], found["spill_stores"], found["spill_loads"]

    # every batch for the textbook's shape; the others at the batches where the budget's edge moves the most
    cases = [((3, 10), batch) for batch in range(1, cuda_fused.EXAMPLE_BLOCK + 1)]
    cases += [(shape, batch) for shape in ((2, 10), (4, 8)) for batch in (1, 3, 4, 10, 16)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(compiled, cases))
    assert all(chunks > 0 for _, _, chunks, *_ in results), results
    bad = [r for r in results if any(r[3:])]
    assert not bad, f"(shape, batch, chunks, stack, spill stores, spill loads): {bad}"


@pytest.fixture(scope="module", params=VARIANTS,
                ids=lambda v: f"batch{v[0]}-cluster{v[1]}-w0reg{v[2]}-shape{v[3][0]}x{v[3][1]}")
def reports(request):
    reason = sass.tools_reason()
    if reason and (os.environ.get("CI") or _one_installed()):
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)
    options = cuda_fused.compile_options(*request.param)
    found = {path.name: sass.report(path.read_text(), options=options) for path in SOURCES}
    for facts in found.values():
        for kernel in facts.values():
            kernel["cluster"] = request.param[1]
            kernel["threads"] = cuda_fused.threads(request.param[2])  # its -DFASTNN_THREADS
    return found


def _one_installed():
    try:
        folder = sass._cu13()
    except ImportError:
        return False
    return (folder / "lib" / "libnvrtc.so.13").exists() or (folder / "bin" / "nvdisasm").exists()


def kernels(reports):
    return [(f"{source}:{name}", facts, source) for source, found in reports.items() for name, facts in found.items()]


def launch_bound(path, name):
    """The threads in ``name``'s __launch_bounds__ (a literal or a #define of the same file)."""
    text = (cuda_fused.SOURCE.parent / path).read_text()
    found = re.search(r"__launch_bounds__\((\w+)[^)]*\)[^(]*\b" + re.escape(name) + r"\b", text)
    assert found, f"{name} has no __launch_bounds__: its registers cannot be checked against a block"
    value = found.group(1)
    if value == "FASTNN_THREADS":
        return value
    if not value.isdigit():
        value = re.search(rf"#define {value} (\d+)", text).group(1)
    return int(value)


def test_every_cuda_source_has_a_kernel(reports):
    assert SOURCES and all(reports[p.name] for p in SOURCES), reports.keys()
    assert cuda_fused.KERNEL in reports[cuda_fused.SOURCE.name]


def test_no_stack_frame_and_no_spills(reports):
    bad = [(k, f["stack"], f["spill_stores"], f["spill_loads"]) for k, f, _ in kernels(reports)
           if f["stack"] or f["spill_stores"] or f["spill_loads"]]
    assert not bad, f"(kernel, stack bytes, spill stores, spill loads): {bad}"


def test_no_local_memory(reports):
    bad = [(k, f["counts"].get("LDL", 0), f["counts"].get("STL", 0)) for k, f, _ in kernels(reports)
           if f["counts"].get("LDL") or f["counts"].get("STL")]
    assert not bad, f"(kernel, LDL, STL): {bad}"


def test_shared_memory_through_lds_sts_only(reports):
    """No generic LD/ST, except in a cluster the exchange's reads of the other blocks' shared memory: on sm_90
    distributed shared memory is reached only through generic loads (ld.shared::cluster), one per block of the
    cluster in the one unrolled exchange loop, and never written remotely."""
    bad = [(k, f["counts"].get("LD", 0), f["counts"].get("ST", 0)) for k, f, _ in kernels(reports)
           if f["counts"].get("LD", 0) > (f["cluster"] if f["cluster"] > 1 else 0) or f["counts"].get("ST")]
    assert not bad, f"generic loads/stores (kernel, LD, ST): {bad}"
    for k, f, _ in kernels(reports):
        assert f["counts"].get("LDS", 0) > 0, f"{k} reads no shared memory: the check above would prove nothing"


def test_a_cluster_meets_once_a_step(reports):
    """The cluster variant has a cluster barrier in the step loop and one before leaving; one SM has none."""
    for k, f, _ in kernels(reports):
        waits = f["counts"].get("UCGABAR_WAIT", 0)
        assert waits == (2 if f["cluster"] > 1 else 0), (k, f["cluster"], waits)


def test_registers_fit_the_launch_bound(reports):
    for k, f, source in kernels(reports):
        threads = launch_bound(source, k.split(":")[1])
        if threads == "FASTNN_THREADS":  # the fused kernel's, given by the host's -DFASTNN_THREADS
            threads = f["threads"]
        need = sass.allocated_registers(f["registers"], threads)
        assert need <= 65536, f"{k}: {f['registers']} registers x {threads} threads = {need} > 65536"


def test_the_helper_reads_a_known_kernel():
    """The counts are real: a tiny kernel with one generic store, one shared load and one local array."""
    if sass.tools_reason():
        pytest.skip(sass.tools_reason())
    source = """
extern __shared__ float smem[];
extern "C" __global__ void __launch_bounds__(64) tiny(float* out, int i) {
    float local[40];
    for (int k = 0; k < 40; k++) local[k] = out[k];
    for (int k = 0; k < i; k++) local[(k * i) % 40] += local[k % 40];
    out[threadIdx.x] = local[i] + smem[threadIdx.x];
}
"""
    facts = sass.report(source)["tiny"]
    assert facts["stack"] == 160 and facts["counts"].get("LDL", 0) > 0 and facts["counts"].get("STL", 0) > 0
    assert facts["counts"].get("LDS") == 1 and facts["counts"].get("STG") == 1
    assert sass.allocated_registers(33, 64) == 2 * 1280
