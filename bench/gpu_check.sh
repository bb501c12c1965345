#!/usr/bin/env bash
# The device check: everything fastnn claims about CUDA, run on a real GPU in one go (< 8 minutes).
#
#   bash bench/gpu_check.sh RESULTS_DIR
#
# Each step's output goes to RESULTS_DIR/<step>.log and its exit status and seconds to
# RESULTS_DIR/steps.txt; a failing step does not stop the later ones; the exit status is non-zero
# when any step failed.  Every step has a time budget (timeout); together they fit 8 minutes.
# Needs: a CUDA GPU, cupy, pytest and hypothesis installed (the device image has them; PyTorch is
# used as a peer by the benchmark when present).  README.md, "Checking a GPU", says how to run it.
# Settings (for the tests that run this script without a GPU): PYTHON (default python3);
# GPU_CHECK_INSTALL=0 skips the editable install; GPU_CHECK_BENCH replaces the bench options.
set -u
cd "$(dirname "$0")/.."
if [ $# -ne 1 ]; then
    echo "usage: bash bench/gpu_check.sh RESULTS_DIR" >&2
    exit 2
fi
out=$1
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
PYTHON=${PYTHON:-python3}
: >"$out/steps.txt"
failed=0

# step NAME SECONDS COMMAND...: run COMMAND with a time budget, its output to NAME.log.
step() {
    local name=$1 budget=$2 start rc
    shift 2
    start=$(date +%s)
    echo "== $name (budget ${budget} s): $*"
    timeout --kill-after=10 "$budget" "$@" >"$out/$name.log" 2>&1
    rc=$?
    [ "$rc" -eq 124 ] && echo "gpu_check: $name ran past its budget of $budget s and was stopped" >>"$out/$name.log"
    echo "$name exit=$rc seconds=$(( $(date +%s) - start ))" | tee -a "$out/steps.txt"
    tail -n 3 "$out/$name.log"
    [ "$rc" -eq 0 ] || failed=1
}

export PYTHONUNBUFFERED=1 FASTNN_REQUIRE_GPU=1
# The MNIST learning tests need the MNIST test set; a copy at shared/data/mnist travels with the tree.
if [ -z "${FASTNN_TEST_MNIST:-}" ] && [ -d shared/data/mnist ]; then
    export FASTNN_TEST_MNIST=$PWD/shared/data/mnist
fi
if [ "${GPU_CHECK_INSTALL:-1}" != 0 ]; then
    step install 60 "$PYTHON" -m pip install --no-deps --no-build-isolation -e .  # offline: no build deps fetched
fi
step facts 20 sh -c "set -e; date -u +%Y-%m-%dT%H:%M:%SZ; nvidia-smi; $PYTHON -c 'import cupy; cupy.show_config()'"
step info 30 "$PYTHON" -m fastnn info --device cuda
step pytest-gpu 150 "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider --junitxml "$out/pytest-gpu.xml" tests
step no-sync 45 "$PYTHON" bench/gpu_check.py no-sync
step cpu-equals-gpu 45 "$PYTHON" bench/gpu_check.py cpu-equals-gpu
# Every config, fastnn and PyTorch against the floor (the CPU's textbook loop is no GPU question).
read -r -a bench_options <<<"${GPU_CHECK_BENCH:---configs textbook,mid,wide,huge --impl fastnn,torch --epochs 2}"
step bench 130 "$PYTHON" -m fastnn bench --device cuda "${bench_options[@]}" \
    --json "$out/bench-cuda.json" --chart "$out/bench-cuda.png"

if [ "$failed" -ne 0 ]; then
    echo "gpu_check: some steps failed (see $out/steps.txt)"
    exit 1
fi
echo "gpu_check: every step passed ($out)"
