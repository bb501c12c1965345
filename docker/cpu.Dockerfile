# fastnn on the CPU (numpy).  Build from the repository root:
#   docker build -f docker/cpu.Dockerfile -t fastnn:cpu .
# docker/smoke.sh runs its pip lines verbatim outside Docker (docker/README.md: "What was verified").

# Stage 1: wheels for fastnn and everything it needs.  fastnn is pure Python and its
# dependencies come as binary wheels, so no compiler is involved anywhere.
FROM python:3.12.12-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN python -m pip wheel --no-cache-dir --wheel-dir dist .

# Stage 2: Python and a virtual environment installed from those wheels only (--no-index:
# nothing is fetched by name, so PyPI's unrelated "fastnn" can never be picked).  The wheels
# are bind-mounted, not copied (BuildKit), so no sources, wheels or build tools stay behind.
FROM python:3.12.12-slim-bookworm
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /tmp
RUN --mount=type=bind,from=build,source=/src/dist,target=/tmp/dist \
    python -m venv /opt/venv \
    && python -m pip install --no-cache-dir --no-index dist/*.whl

# A non-root user owns the data volume: datasets are read from $FASTNN_DATA/<name>
# (mnist, fashion-mnist) and downloads are cached in $XDG_CACHE_HOME/fastnn, both on /data.
RUN groupadd --gid 10001 fastnn \
    && useradd --no-log-init --create-home --uid 10001 --gid 10001 fastnn \
    && install -d -o fastnn -g fastnn /data /data/cache
ENV FASTNN_DEVICE=cpu \
    FASTNN_DATA=/data \
    XDG_CACHE_HOME=/data/cache
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001

# docker stop sends SIGINT: fastnn stops cleanly ("fastnn: interrupted", exit 130).
STOPSIGNAL SIGINT
CMD ["fastnn", "train"]
