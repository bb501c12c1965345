#!/usr/bin/env bash
# The device check: everything fastnn claims about CUDA, on a real GPU, in one call of at most 8 minutes.
#
#   bash bench/gpu_check.sh --stage-mnist [FROM]   copy the MNIST test set (FROM, default $FASTNN_TEST_MNIST or
#                                                 ../shared/data/mnist) into tests/data/mnist (git-ignored), so
#                                                 that it travels with the checkout (the device tool: carry it)
#   bash bench/gpu_check.sh OUT_DIR               run every step; OUT_DIR ends with two files:
#       summary.txt     one line per step, "STEP STATUS SECONDS note", STATUS one of PASS, FAIL, ENV-SKIP (the
#                       machine lacks something the step needs: the note says what) or NEEDS-GPU (a rehearsal),
#                       then "# headline numbers" and the "headline: ..." lines
#       gpu-check.tgz   every log, the junit XML, the bench JSON and chart, fused-textbook.json, the
#                       compute-sanitizer logs and the ncu report (.ncu-rep and its text)
#   Both are rewritten (atomically) after every step, so a call cut short still returns what ran.
#   Exit status 1 when any step FAILed, 0 otherwise; 2 for bad usage.
#
# Budgets (seconds; each step is killed at its budget and says so; the sum, 420 s, plus at most 2 s of kill grace per
# step, leaves a minute of an 8-minute call; estimated for an H100, not yet measured on one: no GPU was at hand):
#   install 5 (GPU_CHECK_INSTALL=1: 20) | facts 10 | info 10 | pytest 200 | no-sync 15 | cpu-equals-gpu 20
#   fused-textbook 30 | racecheck, memcheck and synccheck at once 45 | ncu 30 | bench 50 | headline 5
#
# Steps: install (pip install --no-deps -e ., offline); facts (nvidia-smi, cupy, versions); info (fastnn info
# --device cuda); pytest (-m "gpu or needs_mnist or needs_mpirun or multi_gpu" under FASTNN_REQUIRE_GPU=1, its
# junit XML judged by bench/gpu_check_report.py: an environment skip is ENV-SKIP, any other skip fails; tests
# stop starting 30 s before the budget, so the XML is always written); no-sync, cpu-equals-gpu, fused-textbook
# (bench/gpu_check.py); racecheck, memcheck, synccheck (compute-sanitizer on a 20-step fused launch); ncu (one
# 200-step fused launch: stall reasons, shared-memory bank conflicts, achieved occupancy, registers); bench
# (textbook and mid: fastnn, torch eager, torch CUDA graph, JAX pinned to fp32; each result's precision recorded).
#
# Settings: PYTHON (default python3); GPU_CHECK_INSTALL=1 pip-installs the checkout; GPU_CHECK_REHEARSAL=1 runs the
# whole script on a machine without a GPU (CI): the cupy test double (tests/cupy_double) and the CPU's fused
# engine stand in where they can, each step that needs a real GPU runs what it can and reports NEEDS-GPU, and
# FAIL still means its logic failed; GPU_CHECK_PLANT=<check> plants a fault in one Python check and
# GPU_CHECK_ONLY=step,step runs only those steps (both for tests/test_gpu_check.py).
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}

if [ "${1:-}" = --stage-mnist ]; then
    from=${2:-${FASTNN_TEST_MNIST:-$ROOT/../shared/data/mnist}}
    files="t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz"
    for f in $files; do
        [ -f "$from/$f" ] || { echo "gpu_check: $from has no $f (the MNIST test set)" >&2; exit 2; }
    done
    mkdir -p tests/data && tmp=$(mktemp -d tests/data/.staging.XXXXXX) || exit 2
    for f in $files; do cp "$from/$f" "$tmp/$f" || { rm -rf "$tmp"; exit 2; }; done
    rm -rf tests/data/mnist && mv "$tmp" tests/data/mnist || exit 2
    echo "gpu_check: the MNIST test set is staged in tests/data/mnist (git-ignored); the device tool's carry: [\"tests/data\"]"
    exit 0
fi
if [ $# -ne 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: bash bench/gpu_check.sh OUT_DIR | --stage-mnist [FROM]" >&2
    exit 2
fi
mkdir -p "$1" || exit 2
out=$(cd "$1" && pwd)
logs=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || exit 2
trap 'rm -rf "$logs"' EXIT
rehearsal=${GPU_CHECK_REHEARSAL:-0}
summary=$logs/summary.lines
: >"$summary"
failed=0
current=
# Stopped from outside (SIGTERM, Ctrl-C): the step under way gets its FAIL line, and the two files are written.
trap 'trap - TERM INT; [ -n "$current" ] && line "$current" FAIL 0 "the check was stopped from outside during this step"; exit 1' TERM INT

# Rewrite OUT_DIR's two files from what the steps have left so far (each written aside, then renamed).
publish() {
    {
        echo "# fastnn device check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)," \
             "$([ "$rehearsal" = 1 ] && echo "REHEARSAL without a GPU" || echo "on the GPU")"
        echo "# STEP STATUS SECONDS note"
        cat "$summary"
        if [ -f "$logs/headline.txt" ]; then echo "# headline numbers"; cat "$logs/headline.txt"; fi
    } >"$out/.summary.txt.part" && mv -f "$out/.summary.txt.part" "$out/summary.txt"
    cp "$out/summary.txt" "$logs/summary.txt"
    tar -czf "$out/.gpu-check.tgz.part" -C "$logs" --exclude summary.lines --exclude '*.rc' . && mv -f "$out/.gpu-check.tgz.part" "$out/gpu-check.tgz"
}

# chosen NAME: true when GPU_CHECK_ONLY is unset or names the step (NAME up to its first ':').
chosen() {
    [ -z "${GPU_CHECK_ONLY:-}" ] && return 0
    case ",$GPU_CHECK_ONLY," in *",${1%%:*},"*) return 0 ;; esac
    return 1
}

# line NAME STATUS SECONDS NOTE: one summary line (the note on one line).
line() {
    local note
    chosen "$1" || return 0
    note=$(printf '%s' "$4" | tr '\n' ' ' | cut -c1-400)
    echo "$1 $2 $3 $note" | tee -a "$summary"
    [ "$2" = FAIL ] && failed=1
    publish
}

# run NAME BUDGET COMMAND...: run COMMAND with a time budget, its output to NAME.log, its exit code to NAME.rc.
run() {
    local name=$1 budget=$2
    shift 2
    echo "== $name (budget ${budget} s): $*" >"$logs/$name.log"
    timeout --kill-after=2 "$budget" "$@" >>"$logs/$name.log" 2>&1
    echo $? >"$logs/$name.rc"
}

# step NAME BUDGET COMMAND...: run, then its summary line: the status from the exit code (0 PASS, 3 ENV-SKIP,
# 4 NEEDS-GPU, anything else FAIL), the note from the log's last line "gpu_check: ...".
step() {
    local start
    chosen "$1" || return 0
    start=$(date +%s) current=$1
    run "$@"
    finish "$1" "$2" "$start"
    current=
}

# finish NAME BUDGET START: the summary line of a step that has run.
finish() {
    local name=$1 budget=$2 start=$3 rc status note
    rc=$(cat "$logs/$name.rc" 2>/dev/null || echo 1)
    note=$(grep '^gpu_check: ' "$logs/$name.log" | tail -n 1 | sed 's/^gpu_check: //')
    case $rc in
        0) status=PASS ;;
        3) status=ENV-SKIP ;;
        4) status=NEEDS-GPU ;;
        124 | 137) status=FAIL note="ran past its budget of $budget s and was stopped; ${note:-see $name.log}"
                   echo "gpu_check: $note" >>"$logs/$name.log" ;;
        *) status=FAIL note=${note:-exit status $rc; see $name.log: $(tail -n 1 "$logs/$name.log")} ;;
    esac
    line "$name" "$status" "$(( $(date +%s) - start ))" "$note"
}

# need TOOL: the tool's path (PATH, then CUDA's and Nsight Compute's usual folders), or nothing.
need() {
    local found
    found=$(command -v "$1" || ls /usr/local/cuda/bin/"$1" /opt/nvidia/nsight-compute/*/"$1" 2>/dev/null | tail -n 1)
    echo "$found"
}

export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
check=("$PYTHON" bench/gpu_check.py)
report=("$PYTHON" bench/gpu_check_report.py)
if [ "$rehearsal" = 1 ]; then
    double="PYTHONPATH=$ROOT/tests/cupy_double:$PYTHONPATH"  # import cupy gives the CPU test double
    run_cuda=(env "$double" FASTNN_TEST_CUPY_DOUBLE=1)
    check+=(--rehearsal)
    gpu_or_rehearsal() { [ "$1" -eq 0 ] && return 4 || return "$1"; }  # a rehearsal's pass needs a GPU to mean it
else
    export FASTNN_REQUIRE_GPU=1
    run_cuda=(env)
    gpu_or_rehearsal() { return "$1"; }
fi
export -f gpu_or_rehearsal 2>/dev/null

# 1. install: PYTHONPATH already points at the checkout (subprocesses included), so by default only the import
# is checked; GPU_CHECK_INSTALL=1 installs it too (offline: no build dependencies fetched).
if [ "$rehearsal" != 1 ] && [ "${GPU_CHECK_INSTALL:-0}" = 1 ]; then
    step install 20 sh -c "$PYTHON -m pip install --no-deps --no-build-isolation -e . && echo 'gpu_check: pip install --no-deps -e .'"
else
    step install 5 "$PYTHON" -c "import fastnn; print('gpu_check: no install: fastnn', fastnn.__version__, 'from the checkout')"
fi

# 2. facts: what the summary's numbers ran on.
facts() {
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi; local smi=$?
    "$PYTHON" -c 'import cupy; cupy.show_config()' 2>&1 | head -n 40  # torch's and JAX's versions: in the bench JSON
    "$PYTHON" -c 'import sys, numpy; print("python", sys.version.split()[0], "numpy", numpy.__version__)'
    local tool path
    for tool in nvcc ncu compute-sanitizer; do
        path=$(need $tool)
        echo "$tool: ${path:-not found} $([ -n "$path" ] && "$path" --version 2>/dev/null | tail -n 1)"
    done
    echo "MNIST test set: ${FASTNN_TEST_MNIST:-$( [ -d tests/data/mnist ] && echo "tests/data/mnist (staged)" || echo "not staged (bash bench/gpu_check.sh --stage-mnist)")}"
    if [ $smi -eq 0 ]; then
        echo "gpu_check: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)"
        return 0
    fi
    echo "gpu_check: no nvidia-smi or no GPU"
    [ "$rehearsal" = 1 ] && return 4 || return 1
}
export -f facts need; export PYTHON rehearsal
step facts 10 bash -c facts

# 3. fastnn's own view of the device.
step info 10 bash -c "${run_cuda[*]} $PYTHON -m fastnn info --device cuda; rc=\$?; echo \"gpu_check: \$(grep -E '^(gpu|engine): ' '$logs/info.log' | tr '\n' ' ' | head -c 300)\"; gpu_or_rehearsal \$rc"

# 4. the test suite's GPU tests and the tests that need something besides a GPU, judged from the junit XML.
pytest_budget=200
markers="gpu or needs_mnist or needs_mpirun or multi_gpu"
if [ "$rehearsal" = 1 ]; then
    # The double runs the GPU tests' CUDA branches; a rehearsal runs the GPU tests of the training core (the
    # rest run in CI's own double run) to stay within CI's 2 minutes.
    pytest_args=(-m "$markers" tests/test_train.py tests/test_backend.py tests/test_data.py)
    judge_args=(--rehearsal)
else
    pytest_args=(-m "$markers" tests)
    judge_args=()
fi
deadline=$(( $(date +%s) + pytest_budget - 30 ))
step pytest $pytest_budget bash -c "FASTNN_TEST_DEADLINE=$deadline ${run_cuda[*]} timeout --kill-after=2 $(( pytest_budget - 10 )) \
    $PYTHON -m pytest -q -p no:cacheprovider -p no:randomly -rfEs --junitxml '$logs/pytest.xml' $(printf "'%s' " "${pytest_args[@]}"); \
    echo \"pytest exit status \$?\"; \
    $PYTHON bench/gpu_check_report.py junit '$logs/pytest.xml' ${judge_args[*]} --env-lines '$logs/env-skips.txt'"
if [ -s "$logs/env-skips.txt" ]; then
    while read -r name status _ rest; do line "$name" "$status" 0 "$rest"; done <"$logs/env-skips.txt"
fi

# 5-7. the Python checks (bench/gpu_check.py): no host sync in a step; CPU = GPU step by step; the fused engine at
# textbook size, step by step equal to generic, seconds per epoch of both.
step no-sync 15 "${run_cuda[@]}" "${check[@]}" no-sync
step cpu-equals-gpu 20 "${run_cuda[@]}" "${check[@]}" cpu-equals-gpu
examples=$([ "$rehearsal" = 1 ] && echo 6000 || echo 60000)
step fused-textbook 30 "${check[@]}" fused-textbook --examples "$examples" --results "$logs"

# 8-10. compute-sanitizer's racecheck, memcheck and synccheck on a 20-step fused launch, the three at once (each
# a process of its own on the GPU; the sanitizers' cost is mostly the CPU's, and the machine has 16 cores).
sanitizer=$(need compute-sanitizer)
start=$(date +%s)
for tool in racecheck memcheck synccheck; do
    chosen "$tool" || continue
    if [ "$rehearsal" = 1 ]; then
        run "$tool" 45 "${check[@]}" fused-launch --steps 20 &  # the target alone, on the stand-in
    elif [ -n "$sanitizer" ]; then
        run "$tool" 45 bash -c "'$sanitizer' --tool $tool --error-exitcode 9 --print-limit 50 \
            $PYTHON bench/gpu_check.py fused-launch --steps 20; rc=\$?; \
            echo \"gpu_check: $tool: \$(grep -h ' SUMMARY: ' '$logs/$tool.log' | tail -n 1 | sed 's/^=* *//')\"; exit \$rc" &
    fi
done
wait
for tool in racecheck memcheck synccheck; do
    if [ "$rehearsal" != 1 ] && [ -z "$sanitizer" ]; then
        line "$tool" ENV-SKIP 0 "compute-sanitizer is not on PATH, in /usr/local/cuda/bin or in /opt/nvidia"
    elif chosen "$tool"; then
        finish "$tool" 45 "$start"
    fi
done

# 11. ncu on one 200-step fused launch (the NVTX range fastnn-launch): stall reasons (WarpStateStats), achieved
# occupancy (Occupancy), registers (LaunchStats) and shared-memory bank conflicts; the report, then its text.
ncu=$(need ncu)
conflicts=l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum
if [ "$rehearsal" = 1 ]; then
    step ncu 30 "${check[@]}" fused-launch --steps 200
elif [ -z "$ncu" ]; then
    line ncu ENV-SKIP 0 "ncu (Nsight Compute) is not on PATH, in /usr/local/cuda/bin or in /opt/nvidia/nsight-compute"
else
    step ncu 30 bash -c "'$ncu' --nvtx --nvtx-include 'fastnn-launch/' -k regex:fused -c 1 --clock-control none \
        --section LaunchStats --section Occupancy --section WarpStateStats --section SchedulerStats \
        --metrics $conflicts -f -o '$logs/ncu-fused' $PYTHON bench/gpu_check.py fused-launch --steps 200 || exit 1; \
        [ -f '$logs/ncu-fused.ncu-rep' ] || { echo 'gpu_check: ncu profiled no fused kernel in the range'; exit 1; }; \
        '$ncu' --import '$logs/ncu-fused.ncu-rep' --page details --print-units base; \
        grep -q 'Registers Per Thread' '$logs/ncu.log' || { echo 'gpu_check: the ncu report has no launch statistics'; exit 1; }; \
        echo 'gpu_check: one fused launch profiled (see the headline numbers)'"
fi

# 12. the bench: textbook and mid, fastnn (auto: fused where the network fits, else generic), torch eager, torch
# CUDA graph and JAX (fp32), 2 timed epochs each; the rehearsal's quick run on the double says why each peer is out.
if [ "$rehearsal" = 1 ]; then
    bench_args=(--quick --configs textbook)
else
    bench_args=(--configs textbook,mid --epochs 2)
fi
step bench 50 bash -c "${run_cuda[*]} $PYTHON -m fastnn bench --device cuda $(printf "'%s' " "${bench_args[@]}") \
    --impl fastnn,torch,torch-graph,jax --json '$logs/bench-cuda.json' --chart '$logs/bench-cuda.png'; rc=\$?; \
    echo \"gpu_check: bench-cuda.json: \$($PYTHON -c \"import json; r = json.load(open('$logs/bench-cuda.json'));
print(len(r['results']), 'results,', len(r['skipped']), 'left out')\" 2>&1 | tail -n 1)\"; gpu_or_rehearsal \$rc"

# 13. the headline numbers, from what the steps left.
timeout 5 "${report[@]}" headline "$logs" >"$logs/headline.txt" 2>&1
publish
if [ "$failed" -ne 0 ]; then
    echo "gpu_check: some steps failed (see $out/summary.txt and the logs in $out/gpu-check.tgz)"
    exit 1
fi
echo "gpu_check: no step failed ($out/summary.txt)"
