#!/usr/bin/env bash
# Benchmarks `hermit export` and `hermit import` of a bundle that holds a
# Debian toolchain (examples/hello built with it) against GNU tar writing and
# reading the same set of files, on tmpfs, interleaved, and prints medians
# and ratios.
#
#   export: hermit export RECORD -o B.tar  (records, sources, toolchain image
#           from the store into one oci-archive)
#           vs `tar cf T.tar -C LAYOUT oci-layout index.json blobs`, LAYOUT
#           being that bundle unpacked: the same files     (target ratio >= 0.9)
#   import: hermit import B.tar into an empty store (every blob hashed and
#           checked, every record checked, then stored)
#           vs `tar xf B.tar -C EMPTY`                      (target ratio >= 0.9)
#
# ratio = tar time / hermit time: above 1 means hermit is faster.
#
# The first run bootstraps the Debian toolchain (a few minutes); set
# BUNDLE_HOME to a store that already holds the build of examples/hello
# (it is kept) to skip that.
#
# Usage: benches/bundle.sh [path/to/hermit]   (default target/release/hermit)
# Env:   REPS (default 9), BENCH_DIR (default /dev/shm), BUNDLE_HOME,
#        BASELINE: another hermit binary (e.g. one built from main) whose
#        import is timed in the same runs, for a before/after row
set -eu
HERMIT=$(realpath "${1:-target/release/hermit}")
REPS=${REPS:-9}
NAME=bundle
. "$(dirname "$0")/lib.sh"
REPO=$(cd "$(dirname "$0")/.." && pwd)

# The spec (and the hermit.lock its first build writes) is kept beside the
# store, so that a kept BUNDLE_HOME is a cache hit.
SRC_HOME=${BUNDLE_HOME:-$W/src-home}
HELLO="$SRC_HOME/bench-hello"
if [ ! -f "$HELLO/spec.toml" ]; then
  mkdir -p "$HELLO"
  cp "$REPO/examples/hello/spec.toml" "$REPO/examples/hello/Makefile" "$REPO/examples/hello/hello.c" "$HELLO/"
fi
echo "building examples/hello with its Debian toolchain (store $SRC_HOME)"
RECORD=$(HERMIT_HOME="$SRC_HOME" "$HERMIT" build -q --json "$HELLO/spec.toml" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["record"])')

HERMIT_HOME="$SRC_HOME" "$HERMIT" export "$RECORD" -o "$W/ref.tar" >/dev/null
mkdir -p "$W/layout"
tar xf "$W/ref.tar" -C "$W/layout"
SIZE=$(du -sh "$W/ref.tar" | cut -f1)
FILES=$(tar tf "$W/ref.tar" | grep -c '^blobs/sha256/.')
echo "bundle: $SIZE, $FILES blobs"
HERMIT_HOME="$SRC_HOME" "$HERMIT" verify "$W/ref.tar" | sed 's/^/  /'

export_hermit() { HERMIT_HOME="$SRC_HOME" "$HERMIT" export "$RECORD" -o "$W/b.tar"; }
export_tar() { tar cf "$W/t.tar" -C "$W/layout" oci-layout index.json blobs; }
import_hermit() { HERMIT_HOME="$W/imp" "$HERMIT" import "$W/ref.tar"; }
import_tar() { tar xf "$W/ref.tar" -C "$W/x"; }
import_base() { HERMIT_HOME="$W/base" "$BASELINE" import "$W/ref.tar"; }
fresh() { chmod -R u+w "$W/imp" "$W/base" "$W/x" 2>/dev/null || true; rm -rf "$W/imp" "$W/base" "$W/x" "$W/b.tar" "$W/t.tar"; mkdir -p "$W/x"; }

i=0
while [ "$i" -lt "$REPS" ]; do
  fresh
  # Which side goes first alternates from one run to the next.
  if [ $((i % 2)) -eq 0 ]; then
    time_cmd export_tar export_tar
    time_cmd export_hermit export_hermit
    time_cmd import_tar import_tar
    time_cmd import_hermit import_hermit
  else
    time_cmd export_hermit export_hermit
    time_cmd export_tar export_tar
    time_cmd import_hermit import_hermit
    time_cmd import_tar import_tar
  fi
  if [ -n "${BASELINE:-}" ]; then
    time_cmd import_base import_base
  fi
  i=$((i + 1))
done
cmp "$W/b.tar" "$W/ref.tar" || { echo "the exports differ" >&2; exit 1; }

echo "median of $REPS runs, bundle $SIZE; ratio = tar / hermit (above 1: hermit faster)"
printf '%-40s %9s %9s %6s %9s %9s %6s\n' "case" "tar ms" "hermit ms" "ratio" "tar cpu" "herm cpu" "ratio"
row() {
  local label=$1 p=$2 h=$3 pw hw pc hc
  pw=$(median "$p.wall"); hw=$(median "$h.wall"); pc=$(median "$p.cpu"); hc=$(median "$h.cpu")
  printf '%-40s %9s %9s %6s %9s %9s %6s\n' "$label" "$pw" "$hw" "$(ratio "$pw" "$hw")" "$pc" "$hc" "$(ratio "$pc" "$hc")"
}
row "export vs tar cf (same files)" export_tar export_hermit
row "import (checked) vs tar xf" import_tar import_hermit
if [ -n "${BASELINE:-}" ]; then
  row "import by BASELINE vs tar xf" import_tar import_base
fi
