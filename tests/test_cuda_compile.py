"""The CUDA sources compile for the GPUs fastnn targets (sm_80: A100, sm_90: H100/H200), with NVRTC and no GPU.

Needs the nvidia-cuda-nvrtc-cu12 wheel (.ci/run installs it): skipped without it, failed in CI.
"""

import os
import re

import pytest

from fastnn.engines import cuda_elementwise, cuda_fused
from tests.kernel_shim import nvrtc
from tests.kernel_shim.elementwise import cuda_source

pytestmark = pytest.mark.kernel
ARCHS = (80, 90)


@pytest.fixture(scope="module", autouse=True)
def have_nvrtc():
    reason = nvrtc.library_reason()
    if reason and os.environ.get("CI"):
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_kernel_compiles_and_fits_the_block(arch):
    """The fused epoch kernel compiles without a warning, and THREADS threads of it fit one SM's registers."""
    cubin, log = nvrtc.compile_cubin(cuda_fused.SOURCE.read_text(), arch, ("--std=c++17", "-Xptxas=-v"))
    assert cubin[:4] == b"\x7fELF"
    assert "warning" not in log.lower(), log
    assert f"'{cuda_fused.KERNEL}' for 'sm_{arch}'" in log
    assert f"#define FASTNN_THREADS {cuda_fused.THREADS} " in cuda_fused.SOURCE.read_text()
    registers = int(re.search(r"Used (\d+) registers", log).group(1))
    assert registers * cuda_fused.THREADS <= 65536, f"{registers} registers × {cuda_fused.THREADS} threads"
    assert "spill" not in log or re.search(r"0 bytes spill stores, 0 bytes spill loads", log), log


def test_the_cluster_variant_compiles_for_sm90_with_nvrtc12():
    """cupy-cuda12x users on an H100 get the cluster variant: it compiles with NVRTC 12 too, without a warning."""
    options = (*cuda_fused.compile_options(10, cuda_fused.CLUSTER), "-Xptxas=-v")
    cubin, log = nvrtc.compile_cubin(cuda_fused.SOURCE.read_text(), 90, options)
    assert cubin[:4] == b"\x7fELF" and "warning" not in log.lower(), log
    assert "0 bytes stack frame" in log, log


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("ctype", ["float", "double"])
def test_elementwise_bodies_compile(arch, ctype):
    """Every ElementwiseKernel body of the generic engine on cupy, wrapped as cupy wraps it, for float and double."""
    cubin, log = nvrtc.compile_cubin(cuda_source(cuda_elementwise.specs(), ctype), arch)
    assert cubin[:4] == b"\x7fELF"
    assert "warning" not in log.lower(), log


@pytest.mark.parametrize("arch", ARCHS)
def test_the_textbook_tile_compiles_without_a_spill_with_nvrtc12(arch):
    """cupy-cuda12x users on an A100 (sm_80) or H100 get W^0 in registers for the textbook: NVRTC 12 compiles that
    variant, as the host's options ask for it, with no stack frame and no spill, in its 256 threads' registers."""
    sizes = [784, 30, 10]
    chunks = cuda_fused.register_chunks(sizes, 10)
    options = ("-ftz=true", "--device-as-default-execution-space",
               *cuda_fused.compile_options(10, 1, chunks, cuda_fused.tile_shape(sizes)), "-Xptxas=-v")
    cubin, log = nvrtc.compile_cubin(cuda_fused.SOURCE.read_text(), arch, options)
    assert cubin[:4] == b"\x7fELF" and "warning" not in log.lower(), log
    assert re.search(r"0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads", log), log
    registers = int(re.search(r"Used (\d+) registers", log).group(1))
    assert registers * cuda_fused.threads(chunks) <= 65536
