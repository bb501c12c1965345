#!/usr/bin/env bash
# Issue 23's sweep suite: K textbook models (784-30-10, batch 10) at once, in models × epochs per second,
# fastnn.fit_many against the same models one after another, JAX vmap over models and torch.func.vmap.
# Usage: bash bench/sweep_suite.sh [cpu|cuda] [results folder]   (run it on a quiet machine: the ratios
# are measured side by side in one run, but a loaded machine's scheduler decides how much parallelism it gets)
set -euo pipefail
cd "$(dirname "$0")/.."
device=${1:-cpu}
out=${2:-bench/results}
name=$device; [ "$device" = cpu ] && name=cpu-2core  # the committed results name the machine
fastnn() { PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python -m fastnn "$@"; }

# The CPU target: 8 textbook models >= 1.7x faster together than one after another (the x one-by-one column).
if [ "$device" = cpu ]; then
  fastnn bench --sweep 8 --impl fastnn,fastnn-one-by-one --examples 50000 --epochs 3 --device cpu \
    --json "$out/cpu-2core-sweep8.json"
fi
# The suite: K = 1, 2, 8, 32, 132 (the GPU targets: 132 models in <= 1.5x the time of one; >= 3x JAX vmap).
fastnn bench --sweep 1,2,8,32,132 --examples 10000 --epochs 1 --device "$device" --json "$out/$name-sweep.json"
