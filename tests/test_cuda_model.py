"""bench/cuda_model.py, the cycle model read from the kernel's SASS: its report is well-formed, each figure follows
from its phases, and the redesigned kernel is predicted faster than the old one (kept in bench/results).

A check of the model's arithmetic on machine code compiled here, not a timing of any device.
"""

import math
import os

import pytest

from bench import cuda_model
from tests.kernel_shim import sass

pytestmark = pytest.mark.kernel
OLD = cuda_model.ROOT / "bench" / "results" / "cuda_fused_before_19.cu"


@pytest.fixture(scope="module")
def result():
    reason = sass.tools_reason()
    if reason and os.environ.get("CI"):
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)
    return cuda_model.model(OLD.read_text())


def test_the_report_is_labelled_and_complete(result):
    text = "\n".join(result["lines"])
    assert result["lines"][0].startswith("PREDICTION (cycle model, not a measurement)")
    assert "NVRTC 13." in text and "nvdisasm V13." in text
    assert "new kernel, textbook 784-30-10 batch 10" in text and "old kernel, textbook" in text
    assert "mid 784-128-10 batch 64: does not fit one SM" in text
    assert "textbook 784-30-10 batch 10 (sm_90 cluster of 8" in text
    assert cuda_model.ISSUE_ESTIMATE in text


def test_each_total_is_the_sum_of_its_phases(result):
    """Every '=> N cycles = U µs per step, E ms' line agrees with the phase lines above it and the clock."""
    lines, block = result["lines"], []
    totals = 0
    for line in lines:
        if line.startswith("  => "):
            cycles = float(line.split()[1])
            us = float(line.split("= ")[1].split()[0])
            ms = float(line.split("step, ")[1].split()[0])
            assert cycles == pytest.approx(sum(block), abs=len(block))
            assert us == pytest.approx(cycles / (cuda_model.CLOCK_GHZ * 1e3), abs=0.01)
            assert ms == pytest.approx(us * 1e-3 * math.ceil(cuda_model.EPOCH / 10), rel=1e-2)
            block, totals = [], totals + 1
        elif line.startswith("  ") and not line.lstrip().startswith("phase") and line.split()[-1] != "":
            numbers = [w for w in line[46:].split() if w.replace(".", "").isdigit()]
            if numbers:
                block.append(float(numbers[0]))
    assert totals == 4  # the new kernel on one SM and on a cluster, and the old one under two assumptions


def test_the_new_kernel_is_predicted_faster_than_the_old(result):
    new = result["new"]["textbook"]
    low, high = result["old"]["textbook"]
    assert 0 < result["cluster"]["textbook"] < new < low <= high
    assert result["new"]["mid"] is None and result["cluster"]["mid"] is None


def test_the_model_finds_the_hot_loops_or_says_which_it_cannot():
    """A kernel without the forward loop's mix is refused with the phase named, not modelled from nothing."""
    with pytest.raises(ValueError, match="forward"):
        cuda_model.new_kernel([], [784, 30, 10], 10, 384, False)
