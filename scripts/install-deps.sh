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
  disorderfs fuse3 locales \
  nix-bin man-db zsh fish postgresql
# `hermit check`'s directory-order variation mounts disorderfs as the caller:
# /dev/fuse open to every user, as Debian's udev rule makes it (a container
# without udev may leave it 0600).
if [ -c /dev/fuse ]; then chmod 0666 /dev/fuse; fi
# A Rust toolchain: keep one that is already installed (rustup or otherwise),
# else take Debian's packaged 1.85 toolchain.
if ! command -v cargo >/dev/null 2>&1; then
  apt-get install -y -q --no-install-recommends rustc-web cargo-web
fi

# Upstream release tarballs for the tests that build real projects (offline,
# served from loopback): the `*.orig.tar.*` of Debian source packages, kept in
# HERMIT_TEST_TARBALLS (default /var/cache/hermit-tests/orig). The deb-src
# twins of the host's own Debian apt sources are used through a private apt
# state, so the host's apt configuration is not changed.
fetch_orig_tarballs() {
  dest=${HERMIT_TEST_TARBALLS:-/var/cache/hermit-tests/orig}
  state=$(dirname "$dest")/apt
  mkdir -p "$dest" "$state/lists/partial"
  # `apt-cache policy` lists every index with its origin: keep Debian's
  # release suites (an update suite's pool lacks the unchanged tarballs).
  apt-cache policy | awk '
    /^ *[0-9]+ [a-z]+:\/\// { uri = $2; split($3, sc, "/"); next }
    / release / && /o=Debian,/ && uri != "" && sc[1] !~ /-/ {
      line = "deb-src " uri " " sc[1] " " sc[2]
      if (!(line in seen)) { seen[line] = 1; print line }
      uri = ""
    }' >"$state/sources.list"
  [ -s "$state/sources.list" ] || { echo "no Debian apt sources found" >&2; return 1; }
  set -- -o Dir::Etc::SourceList="$state/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$state/lists" -o APT::Sandbox::User=root "$@"
  apt-get "$@" update -q
  for pkg in $ORIG_TARBALLS; do
    if ls "$dest/${pkg}_"*.orig.tar.?z* >/dev/null 2>&1; then continue; fi
    tmp=$(mktemp -d "$dest/.fetch.XXXXXX")
    if (cd "$tmp" && apt-get "$@" source -q --download-only "$pkg"); then
      mv "$tmp/${pkg}_"*.orig.tar.?z* "$dest/"
    else
      rm -rf "$tmp"
      return 1
    fi
    rm -rf "$tmp"
  done
  chmod -R a+rX "$dest"
}
# GNU hello (autotools), and zlib and libpng for a library graph.
ORIG_TARBALLS="hello zlib libpng1.6"
fetch_orig_tarballs

# BuildGrid (a Remote Execution API server) for the remote cache tests and
# benchmarks, in a virtualenv at HERMIT_TEST_BUILDGRID (default
# /var/cache/hermit-tests/buildgrid; `bin/bgd`). Its CAS, ByteStream and
# ActionCache need no database; its Execution and Bots services (remote
# execution tests) need PostgreSQL: the [database] extra.
install_buildgrid() {
  venv=${HERMIT_TEST_BUILDGRID:-/var/cache/hermit-tests/buildgrid}
  if [ -x "$venv/bin/bgd" ] && "$venv/bin/python" -c 'import psycopg2' 2>/dev/null; then return 0; fi
  apt-get install -y -q --no-install-recommends python3-venv
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'buildgrid[database]==0.4.4'
  chmod -R a+rX "$venv"
}
install_buildgrid
