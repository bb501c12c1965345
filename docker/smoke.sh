#!/usr/bin/env bash
# Run the pip lines of docker/cpu.Dockerfile and docker/cuda.Dockerfile outside Docker (no Docker
# engine runs on the project's machines), then check that the fastnn they install runs.
#   bash docker/smoke.sh            both images' lines
#   bash docker/smoke.sh cpu        only the CPU image's (the CUDA ones download cupy, ~140 MB)
# Each image gets a copy of its build context (what .dockerignore lets in) and a fresh venv.
# tests/test_docker.py checks that every pip line of the Dockerfiles appears here verbatim.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

context() {  # cd into a fresh copy of the build context for image $1, with a venv beside it
    mkdir "$work/$1" && cd "$work/$1"
    cp -r "$repo/pyproject.toml" "$repo/fastnn" .
    find . -name __pycache__ -prune -exec rm -rf {} +
    for f in "$repo"/README.md "$repo"/LICENSE*; do
        if [ -f "$f" ]; then cp "$f" .; fi
    done
    python -m venv "$work/$1.venv"
}

images=("$@")
if [ $# -eq 0 ]; then images=(cpu cuda); fi
for image in "${images[@]}"; do
    echo "== docker/$image.Dockerfile: pip lines"
    case $image in
        cpu)
            context cpu
            python -m pip wheel --no-cache-dir --wheel-dir dist .
            . "$work/cpu.venv/bin/activate"
            python -m pip install --no-cache-dir --no-index dist/*.whl
            FASTNN_DEVICE=cpu fastnn info
            ;;
        cuda)
            context cuda
            python -m pip wheel --no-cache-dir --wheel-dir dist . "cupy-cuda12x>=14"
            . "$work/cuda.venv/bin/activate"
            python -m pip install --no-cache-dir --no-index dist/*.whl
            python -c "import cupy; print('cupy', cupy.__version__, 'imports')"
            fastnn info  # auto: on a machine without a GPU this falls back to the CPU, saying why
            ;;
        *)
            echo "docker/smoke.sh: unknown image '$image' (choices: cpu, cuda)" >&2
            exit 2
            ;;
    esac
    deactivate
    ls "$work/$image/dist"
done
echo "docker/smoke.sh: the Dockerfiles' pip lines installed a working fastnn"
