#!/bin/sh
# Installs every system package hermit, its tests and its benchmarks use, on
# Debian 12 (bookworm). Run as root. Safe to run again.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
  ca-certificates build-essential pkg-config git curl openssl \
  tar gzip xz-utils zstd bzip2 zip unzip \
  uidmap iproute2 procps util-linux passwd \
  bubblewrap busybox-static hyperfine python3 \
  skopeo docker-registry mmdebstrap debian-archive-keyring diffoscope-minimal \
  nix-bin
# A Rust toolchain: keep one that is already installed (rustup or otherwise),
# else take Debian's packaged 1.85 toolchain.
if ! command -v cargo >/dev/null 2>&1; then
  apt-get install -y -q --no-install-recommends rustc-web cargo-web
fi
