#!/usr/bin/env bash
# Build docker/cpu.Dockerfile and docker/cuda.Dockerfile for real and run them, on machines where
# Docker Hub (and so the images' own bases) cannot be reached but Debian's archive and the host's
# pip index can.  CI runs it (.ci/run); docker/README.md ("What was verified") says what it shows.
#   sudo bash docker/build-test.sh      needs root: podman buildah runc debootstrap zstd
#
# - Stand-in bases, made here from the registries: Debian bookworm (the release of the images'
#   python:3.12.12-slim-bookworm) by debootstrap from Debian's archive, with Debian's Python 3.11
#   (bookworm has no 3.12); for the CUDA image the same plus a local apt repository whose
#   cuda-cudart-dev-X-Y holds the CUDA runtime headers of NVIDIA's PyPI wheel nvidia-cuda-runtime-cuX
#   (NVIDIA's image and apt repository cannot be reached).  Cached between runs: in podman's
#   storage, and as a tarball under $FASTNN_CI_CACHE (default /var/cache/fastnn-ci), keyed by
#   release, week and package list.
# - The Dockerfiles are built unedited with buildah: each FROM base is swapped for its stand-in by
#   --build-context (buildah's --from replaces only the first FROM, and both files have two).
# - pip inside the build gets the host's own index settings, read from the host's pip when this
#   runs (docker/host_pip.py), through a home folder mounted for the build only: nothing of this
#   machine is written into the repository or baked into the images (checked below).
# - The CPU image is run as its non-root user with a data volume and no network: fastnn info, a
#   3-epoch run on 2000 Fashion-MNIST rows mounted read-only, the model on the volume, evaluate,
#   then `podman stop` during a run (the image's STOPSIGNAL) must save a checkpoint that resumes.
#   The CUDA image (no GPU here) must start, fall back to the CPU with its one-line notice, and
#   its default command must fail with the cause.
# Exit status 0: all checks passed; 1: a check or a step failed (the line says which).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

PYTHON=${PYTHON:-python3}
release=bookworm
packages=python3,python3-venv,python3-pip,python-is-python3,ca-certificates
cache=${FASTNN_CI_CACHE:-/var/cache/fastnn-ci}
fashion=${FASTNN_CI_FASHION:-/usr/share/datasets/fashion-mnist}
run=(podman --runtime runc run --rm --ulimit nofile=1024:1024 --ulimit nproc=1000:1000 --network none)
id=fastnn-ci-$$
cpu_image=localhost/fastnn-ci/cpu:$$
cuda_image=localhost/fastnn-ci/cuda:$$
start=$SECONDS

fail() { echo "docker/build-test.sh: FAILED: $*" >&2; exit 1; }
step() { echo "== [$((SECONDS - start)) s] $*"; }

if [ "$(id -u)" != 0 ]; then fail "needs root (debootstrap, podman storage, runc)"; fi
for tool in podman buildah runc debootstrap zstd "$PYTHON"; do
    command -v "$tool" >/dev/null || fail "$tool is missing: apt-get install -y podman buildah runc debootstrap zstd"
done
[ -f "$fashion/train-images-idx3-ubyte.gz" ] || fail "no Fashion-MNIST in $fashion: apt-get install dataset-fashion-mnist"

work=$(mktemp -d)
volume=$id-data
cleanup() {
    podman rm -f "$id-stop" >/dev/null 2>&1 || true
    podman volume rm -f "$volume" >/dev/null 2>&1 || true
    podman rmi -f "$cpu_image" "$cuda_image" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

froms() {  # the base images a Dockerfile names in FROM (not its own stages)
    awk 'toupper($1) == "FROM" { for (i = 3; i < NF; i++) if (toupper($i) == "AS") stage[$(i + 1)] = 1;
                                  if (!($2 in stage) && !seen[$2]++) print $2 }' "$1"
}

# ---- the stand-in Debian base -------------------------------------------------------------------
for image in $(froms docker/cpu.Dockerfile); do
    case $image in python:*-"$release") ;; *) fail "docker/cpu.Dockerfile: FROM $image is not the $release base this stands in for" ;; esac
done
key=$release-$(date -u +%G-w%V)-$(echo "$packages" | sha256sum | cut -c1-8)
base=localhost/fastnn-ci/$release:$key
if podman image exists "$base"; then
    step "stand-in base $base: cached in podman's storage"
else
    tarball=$cache/$key.tar.zst
    if [ -s "$tarball" ]; then
        step "stand-in base: cached tarball $tarball"
    else
        step "stand-in base: debootstrap --variant=minbase $release (Debian's archive) with $packages"
        debootstrap --variant=minbase --include="$packages" "$release" "$work/rootfs" ${FASTNN_CI_DEBIAN_MIRROR:-} \
            > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log"; fail "debootstrap $release"; }
        # what debootstrap leaves of this machine or of its own run: the host's name and resolver,
        # downloaded packages and lists (python:*-slim keeps no lists either)
        rm -f "$work/rootfs/etc/hostname" "$work/rootfs/etc/resolv.conf" "$work/rootfs"/var/cache/apt/archives/*.deb \
            "$work/rootfs"/var/cache/apt/*.bin
        find "$work/rootfs/var/lib/apt/lists" -maxdepth 1 -type f -delete
        mkdir -p "$cache"
        tar -C "$work/rootfs" --numeric-owner -cf - . | zstd -q -T0 -o "$tarball.tmp"
        mv "$tarball.tmp" "$tarball"
        find "$cache" -maxdepth 1 -name "$release-*.tar.zst" ! -name "$key.tar.zst" -delete  # older weeks
        rm -rf "$work/rootfs"
    fi
    zstd -dc "$tarball" | podman import --quiet --change 'CMD ["python3"]' - "$base" >/dev/null
    for old in $(podman images --format '{{.Repository}}:{{.Tag}}' "localhost/fastnn-ci/$release"); do
        if [ "$old" != "$base" ]; then podman rmi "$old" >/dev/null 2>&1 || true; fi
    done
fi
echo "   $("${run[@]}" "$base" python --version) at /usr/bin/python (python-is-python3); the images' base has Python 3.12 at /usr/local/bin/python"

# ---- the stand-in CUDA base: the Debian one, plus cuda-cudart-dev from NVIDIA's PyPI wheel -------
cuda_from=$(froms docker/cuda.Dockerfile | grep '^nvidia/cuda:') || fail "docker/cuda.Dockerfile names no nvidia/cuda base"
[[ $cuda_from =~ ^nvidia/cuda:([0-9]+)\.([0-9]+)\.([0-9]+)- ]] || fail "cannot read the CUDA version of $cuda_from"
major=${BASH_REMATCH[1]} minor=${BASH_REMATCH[2]} cuda_version=${BASH_REMATCH[1]}.${BASH_REMATCH[2]}.${BASH_REMATCH[3]}
cuda_base=localhost/fastnn-ci/$release-cuda:$key-$major.$minor
if podman image exists "$cuda_base"; then
    step "stand-in CUDA base $cuda_base: cached in podman's storage"
else
    step "stand-in CUDA base: cuda-cudart-dev-$major-$minor from nvidia-cuda-runtime-cu$major==$major.$minor.* (host's pip)"
    "$PYTHON" -m pip download -q --no-deps -d "$work/wheel" "nvidia-cuda-runtime-cu$major==$major.$minor.*"
    wheel=$(ls "$work"/wheel/nvidia_cuda_runtime_cu"$major"-*.whl)
    cudart=$(basename "$wheel" | cut -d- -f2)-1  # NVIDIA's deb version for that cudart, e.g. 12.8.90-1
    pkg=$work/pkg
    include=$pkg/usr/local/cuda-$major.$minor/targets/x86_64-linux/include
    mkdir -p "$include" "$pkg/DEBIAN" "$work/repo"
    "$PYTHON" -m zipfile -e "$wheel" "$work/unzipped"
    cp "$work"/unzipped/nvidia/cuda_runtime/include/*.h* "$include/"
    ln -s targets/x86_64-linux/include "$pkg/usr/local/cuda-$major.$minor/include"
    cat > "$pkg/DEBIAN/control" <<EOF
Package: cuda-cudart-dev-$major-$minor
Version: $cudart
Architecture: amd64
Maintainer: fastnn CI <ci@fastnn.invalid>
Description: CUDA runtime headers $cudart (fastnn CI stand-in)
 The headers of NVIDIA's nvidia-cuda-runtime-cu$major $(basename "$wheel" | cut -d- -f2) wheel from PyPI,
 where NVIDIA's apt repository puts them; made by docker/build-test.sh.
EOF
    dpkg-deb --root-owner-group --build "$pkg" "$work/repo/cuda-cudart-dev.deb" >/dev/null
    (cd "$work/repo" && { dpkg-deb -f cuda-cudart-dev.deb; echo "Filename: ./cuda-cudart-dev.deb"
        echo "Size: $(stat -c %s cuda-cudart-dev.deb)"; echo "SHA256: $(sha256sum < cuda-cudart-dev.deb | cut -d' ' -f1)"
        echo; } > Packages)
    ctr=$(buildah from --pull=never "$base")
    mnt=$(buildah mount "$ctr")
    cp -r "$work/repo" "$mnt/var/local/fastnn-cuda-standin"
    echo "deb [trusted=yes] file:/var/local/fastnn-cuda-standin ./" > "$mnt/etc/apt/sources.list.d/fastnn-cuda-standin.list"
    ln -s "cuda-$major.$minor" "$mnt/usr/local/cuda"
    buildah umount "$ctr" >/dev/null
    buildah config --env "CUDA_VERSION=$cuda_version" --env "NV_CUDA_CUDART_VERSION=$cudart" \
        --env NVIDIA_VISIBLE_DEVICES=all --env NVIDIA_DRIVER_CAPABILITIES=compute,utility "$ctr"
    buildah commit --quiet --rm "$ctr" "$cuda_base" >/dev/null
    for old in $(podman images --format '{{.Repository}}:{{.Tag}}' "localhost/fastnn-ci/$release-cuda"); do
        if [ "$old" != "$cuda_base" ]; then podman rmi "$old" >/dev/null 2>&1 || true; fi
    done
fi

# ---- build both images, unedited, with the host's pip index for the build only ------------------
mapfile -t pip_mounts < <("$PYTHON" docker/host_pip.py "$work/pip-home")
[ ${#pip_mounts[@]} -ge 1 ] || fail "docker/host_pip.py gave no mounts"
echo "   pip in the build: $(grep -v '^\[' "$work/pip-home/.config/pip/pip.conf" | cut -d' ' -f1 | tr '\n' ' ')(from the host's pip)"
build() {  # build() FILE IMAGE: docker/FILE with every base it names swapped for its stand-in
    local contexts=() from
    for from in $(froms "docker/$1"); do
        case $from in
            python:*-"$release") contexts+=(--build-context "$from=container-image://$base") ;;
            nvidia/cuda:*) contexts+=(--build-context "$from=container-image://$cuda_base") ;;
            *) fail "docker/$1: no stand-in for FROM $from" ;;
        esac
    done
    buildah bud --isolation chroot --pull=never "${contexts[@]}" "${pip_mounts[@]}" -f "docker/$1" -t "$2" . \
        > "$work/build-$1.log" 2>&1 || { tail -30 "$work/build-$1.log"; fail "buildah bud -f docker/$1"; }
    grep -E '^(Successfully (built|installed)|Saved )' "$work/build-$1.log" | sed 's/^/   /'
}
certs() { awk '/BEGIN CERT/ { c = ""; next } /END CERT/ { print c; next } { c = c $0 }' "$@"; }
clean_of_host() {  # clean_of_host IMAGE BASE: nothing of the host's pip setup in what the build added
    local added leaked image_root base_root extra file
    added=$(podman image diff "$1" "$2" | awk '$1 != "D" { print $2 }')
    leaked=$(grep -E '(^|/)pip\.conf$|^/root(/|$)|^/etc/(ssl|xdg|pip)(/|$)|/local-[0-9]+(/|$)' <<< "$added" || true)
    [ -z "$leaked" ] || fail "$1 holds what the build was lent: $leaked"
    # the certificates the host trusts beyond the base's own (a TLS-inspecting proxy's CA, say) must
    # not be in any certificate file the build added (pip's own certifi bundle is one)
    image_root=$(podman image mount "$1") base_root=$(podman image mount "$2")
    extra=$(certs "$work/pip-home/.config/pip/ca.pem" 2>/dev/null | grep -vxF -f <(certs "$base_root/etc/ssl/certs/ca-certificates.crt") || true)
    if [ -n "$extra" ]; then
        while read -r file; do
            if [ -f "$image_root$file" ] && certs "$image_root$file" | grep -xF -f <(echo "$extra") >/dev/null; then
                leaked+=" $file"
            fi
        done < <(grep -E '\.(pem|crt)$' <<< "$added")
    fi
    podman image unmount "$1" "$2" >/dev/null
    [ -z "$leaked" ] || fail "$1 holds the host's CA certificates in$leaked"
    # (the image's own ENV PIP_* lines, ":env:", are the Dockerfile's)
    "${run[@]}" --user 0 "$1" python -m pip config list 2>/dev/null | grep -v '^:env:' && fail "$1 has a pip configuration"
    echo "   $1: no pip configuration, nothing under /root or /etc/ssl, none of the host's" \
        "$(grep -c . <<< "$extra") extra CA certificate(s) in its $(grep -cE '\.(pem|crt)$' <<< "$added") added .pem/.crt file(s)"
}

step "build docker/cpu.Dockerfile on $base"
build cpu.Dockerfile "$cpu_image"
clean_of_host "$cpu_image" "$base"
step "build docker/cuda.Dockerfile on $base and $cuda_base"
build cuda.Dockerfile "$cuda_image"
clean_of_host "$cuda_image" "$cuda_base"

# ---- run the CPU image ---------------------------------------------------------------------------
user=$(podman image inspect --format '{{.Config.User}}' "$cpu_image")
stop_signal=$(podman image inspect --format '{{.Config.StopSignal}}' "$cpu_image")
stop_signal=${stop_signal:-SIGTERM}  # podman stop sends the image's STOPSIGNAL, else SIGTERM
[[ $user =~ ^[1-9][0-9]*:[1-9][0-9]*$ ]] || fail "$cpu_image runs as '$user', not a numeric non-root user"
podman volume create "$volume" >/dev/null
on_volume=$(podman volume inspect --format '{{.Mountpoint}}' "$volume")
step "fastnn info in the CPU image (user $user, volume $volume at /data, no network)"
"${run[@]}" -v "$volume:/data" "$cpu_image" fastnn info > "$work/info.txt" 2>&1 || { cat "$work/info.txt"; fail "fastnn info"; }
grep -qx 'device: cpu' "$work/info.txt" && grep -Eq '^cpu: .+' "$work/info.txt" \
    || { cat "$work/info.txt"; fail "fastnn info does not report the CPU"; }
grep -E '^(python|numpy|cpu|device):' "$work/info.txt" | sed 's/^/   /'

step "dataset: the first 2000 training and 500 test rows of Fashion-MNIST ($fashion) as an .npz"
"${run[@]}" -i -v "$fashion:/in:ro" "$cpu_image" python - > "$work/fashion.npz" <<'EOF'
import gzip, io, sys
import numpy as np

def rows(name, header, count, size):
    with gzip.open(f"/in/{name}") as f:
        f.read(header)
        return np.frombuffer(f.read(count * size), np.uint8).reshape(count, size).squeeze()

out = io.BytesIO()
np.savez(out, x_train=rows("train-images-idx3-ubyte.gz", 16, 2000, 784), y_train=rows("train-labels-idx1-ubyte.gz", 8, 2000, 1),
         x_test=rows("t10k-images-idx3-ubyte.gz", 16, 500, 784), y_test=rows("t10k-labels-idx1-ubyte.gz", 8, 500, 1))
sys.stdout.buffer.write(out.getvalue())
EOF
data=(-v "$volume:/data" -v "$work/fashion.npz:/input/fashion.npz:ro")
train=(fastnn train --dataset /input/fashion.npz --seed 1)

step "train 3 epochs in the CPU image; the model must land on the volume"
"${run[@]}" "${data[@]}" "$cpu_image" "${train[@]}" --epochs 3 --out model.npz | sed 's/^/   /'
[ -s "$on_volume/model.npz" ] || fail "no model.npz on the volume ($on_volume)"
[ "$(stat -c %u:%g "$on_volume/model.npz")" = "$user" ] || fail "model.npz is not owned by $user"
"${run[@]}" "${data[@]}" "$cpu_image" fastnn evaluate --model model.npz --dataset /input/fashion.npz | sed 's/^/   /'

step "podman stop during a run (the image's STOPSIGNAL: $stop_signal) must save it on the volume"
"${run[@]}" --name "$id-stop" "${data[@]}" "$cpu_image" "${train[@]}" --epochs 100000 > "$work/stop.log" 2>&1 &
pid=$!
for _ in $(seq 300); do grep -q '^epoch 2/' "$work/stop.log" && break; sleep 0.1; done
grep -q '^epoch 2/' "$work/stop.log" || { cat "$work/stop.log"; fail "the run to stop did not start"; }
podman stop --time 30 "$id-stop" >/dev/null
status=0
wait "$pid" || status=$?
tail -1 "$work/stop.log" | sed 's/^/   /'
# fastnn's own status for an interrupted run is 130; 128 + the signal's number is the other usual one;
# 137 is SIGKILL: the signal was ignored and podman killed the run after --time 30
expected=$((128 + $(kill -l "${stop_signal#SIG}")))
[ "$status" = 130 ] || [ "$status" = "$expected" ] || fail "the stopped run exited with $status, not 130 or $expected"
saved=$(grep -o 'saved the run as it stood after epoch [0-9]* of 100000 to [^ ;]*' "$work/stop.log") \
    || fail "the stopped run did not say it was saved"
epoch=$(echo "$saved" | awk '{print $9}')
folder=$(dirname "$(echo "$saved" | awk '{print $NF}')")
[ -s "$on_volume/$folder/checkpoint.npz" ] || fail "no $folder/checkpoint.npz on the volume"
"${run[@]}" "${data[@]}" "$cpu_image" "${train[@]}" --epochs $((epoch + 1)) --resume "$folder" --quiet \
    | sed 's/^/   resumed: /'

# ---- run the CUDA image (no GPU here) ------------------------------------------------------------
step "CUDA image without a GPU: fastnn train (auto) must fall back to the CPU with one notice"
"${run[@]}" "${data[@]}" "$cuda_image" "${train[@]}" --epochs 1 --out cuda-model.npz > "$work/cuda.log" 2>&1 \
    || { cat "$work/cuda.log"; fail "fastnn train in the CUDA image"; }
sed 's/^/   /' "$work/cuda.log"
[ "$(grep -c '^fastnn: no usable CUDA GPU' "$work/cuda.log")" = 1 ] || fail "not exactly one fallback notice"
grep -q "No module named 'cupy'" "$work/cuda.log" && fail "cupy is not installed in the CUDA image"
grep -q '^epoch 1/1: .*, cpu,' "$work/cuda.log" && [ -s "$on_volume/cuda-model.npz" ] || fail "the CUDA image did not train on the CPU"
step "CUDA image, default command (fastnn info && fastnn train --device cuda): must fail with the cause"
status=0
"${run[@]}" "$cuda_image" > "$work/cuda-default.log" 2>&1 || status=$?
grep -E '^(cupy|device):|^fastnn: error' "$work/cuda-default.log" | sed 's/^/   /'
[ "$status" = 1 ] && grep -qx 'device: cpu' "$work/cuda-default.log" && [ "$(grep -c '^fastnn: error: ' "$work/cuda-default.log")" = 1 ] \
    || { cat "$work/cuda-default.log"; fail "the CUDA image's default command (exit $status)"; }

step "docker/build-test.sh: both images built; the CPU image trained, saved, stopped and resumed; the CUDA image fell back"
