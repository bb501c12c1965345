# fastnn on an NVIDIA GPU (cupy-cuda12x).  Build from the repository root:
#   docker build -f docker/cuda.Dockerfile -t fastnn:cuda .
# Run it with the NVIDIA Container Toolkit (docker run --gpus all ...) on a host whose
# driver supports CUDA 12.8: >= 570.124.06 (docker/README.md has the details).
# docker/smoke.sh runs its pip lines verbatim outside Docker (docker/README.md: "What was verified").

# Stage 1: wheels for fastnn, bare cupy-cuda12x and what they need (numpy, ...).  Not fastnn[cuda12]:
# that extra brings CUDA's libraries from PyPI (~1.8 GB), which the nvidia/cuda base already has.
# All are pure Python or binary wheels: no compiler is involved anywhere.
FROM python:3.12.12-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN python -m pip wheel --no-cache-dir --wheel-dir dist . "cupy-cuda12x>=14"

# Stage 2: the CUDA 12.8 runtime (cuBLAS, NVRTC, cuRAND, ...: the libraries cupy-cuda12x
# loads), Ubuntu 24.04's Python 3.12 (the same cp312 the wheels were chosen for), and the
# CUDA runtime headers: since CUDA 12.2, CuPy's run-time kernel compiler (NVRTC) needs
# cuda_runtime.h, vector_types.h, ... and -runtime images do not ship them.
# cuda-cudart-dev is pinned to the base image's own cudart version.  python3-venv is not
# pinned: Ubuntu's archive drops a superseded version as soon as an update replaces it, so
# an exact pin would break the build at the next security update (the one ignored rule).
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3-venv \
        "cuda-cudart-dev-12-8=${NV_CUDA_CUDART_VERSION}" \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CUDA_PATH=/usr/local/cuda
WORKDIR /tmp
RUN --mount=type=bind,from=build,source=/src/dist,target=/tmp/dist \
    python3 -m venv /opt/venv \
    && python -m pip install --no-cache-dir --no-index dist/*.whl

# A non-root user owns the volumes: datasets are read from $FASTNN_DATA/<name> and downloads
# cached in $XDG_CACHE_HOME/fastnn (both on /data); CuPy keeps the kernels it compiles in
# $CUPY_CACHE_DIR, so a kept volume spares recompiling them in every new container.
RUN groupadd --gid 10001 fastnn \
    && useradd --no-log-init --create-home --uid 10001 --gid 10001 fastnn \
    && install -d -o fastnn -g fastnn /data /data/cache /cupy-cache
ENV FASTNN_DATA=/data \
    XDG_CACHE_HOME=/data/cache \
    CUPY_CACHE_DIR=/cupy-cache
VOLUME ["/data", "/cupy-cache"]
WORKDIR /data
USER 10001:10001

# docker stop sends SIGINT: fastnn stops cleanly ("fastnn: interrupted", exit 130).
# fastnn info prints the versions and the GPU (or why there is none), then training runs on
# cuda:0 and fails with the cause if the GPU cannot be used.
STOPSIGNAL SIGINT
CMD ["sh", "-c", "fastnn info && exec fastnn train --device cuda"]
