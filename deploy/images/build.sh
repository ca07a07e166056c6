#!/usr/bin/env bash
# Builds an image per mesh binary from release binaries, FROM scratch:
#
#   bash deploy/images/build.sh [BIN_DIR] [TAG]     (defaults: target/release, 0.1.0)
#
# Each image holds the stripped binary (/app), the shared libraries it links,
# the loader, a passwd for the non-root user 65532 and the system's CA
# bundle; nothing else. Prints
# each image's size. Needs podman (and CONTAINERS_CONF on machines where the
# default runtime does not work: see .ci/containers.conf).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin_dir=${1:-target/release}
tag=${2:-0.1.0}
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
work=$(mktemp -d "${TMPDIR:-/tmp}/mesh-images.XXXXXX")
trap 'rm -rf "$work"' EXIT

# binary port admin_port
images=(
  "items-service 50051 9051"
  "cache-service 50052 9052"
  "tasks-service 50053 9053"
  "counter-service 50054 9054"
  "gateway 8080 9080"
)

stage() { # BINARY DIR: the build context
  local bin=$bin_dir/$1 ctx=$2
  [ -x "$bin" ] || { echo "no $bin (build it: cargo build --release --bins)" >&2; exit 2; }
  mkdir -p "$ctx/rootfs/etc" "$ctx/rootfs/tmp"
  chmod 1777 "$ctx/rootfs/tmp"
  strip --strip-all -o "$ctx/rootfs/app" "$bin"
  # "libx.so => /path (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"; vdso has no file.
  ldd "$bin" | awk '/=> \//{print $3; next} /^[[:space:]]*\//{print $1}' | while read -r lib; do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib" # -L: the loader is a symlink on Debian
  done
  # The system's CA bundle: TLS to managed PostgreSQL and Redis
  # (sslmode=verify-full, rediss://) trusts it (SSL_CERT_FILE in the image).
  mkdir -p "$ctx/rootfs/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/rootfs/etc/ssl/certs/"
  printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' >"$ctx/rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$ctx/rootfs/etc/group"
  cp deploy/images/Containerfile "$ctx/Containerfile"
}

for line in "${images[@]}"; do
  read -r binary port admin <<<"$line"
  ctx=$work/$binary
  stage "$binary" "$ctx"
  started=$SECONDS
  podman build --quiet --format docker \
    --build-arg BINARY="$binary" --build-arg PORT="$port" --build-arg ADMIN_PORT="$admin" \
    --build-arg VERSION="$tag" --build-arg REVISION="$revision" \
    -t "localhost/mesh/$binary:$tag" -f "$ctx/Containerfile" "$ctx" >/dev/null
  size=$(podman image inspect --format '{{.Size}}' "localhost/mesh/$binary:$tag")
  awk -v b="$binary" -v s="$size" -v t=$((SECONDS - started)) 'BEGIN { printf "%-16s %6.1f MB  (built in %d s)\n", b, s / 1e6, t }'
done
