#!/usr/bin/env bash
# Benchmarks `hermit store add` of a large file against the obvious shell
# equivalents, on tmpfs, interleaved, and prints medians and ratios.
#
#   present: add of a file whose blob is already in the store (hashing only)
#            vs `openssl dgst -sha256 FILE`                       (target ratio >= 0.9)
#   fresh:   add into an empty store (hash, copy, fsync, rename)
#            vs `openssl dgst -sha256 F && cp F DEST && sync DEST` (target ratio >= 1.0)
#
# ratio = peer time / hermit time: above 1 means hermit is faster.
#
# Usage: benches/store.sh [path/to/hermit]   (default target/release/hermit)
# Env:   SIZE_MB (default 1024), REPS (default 5), BENCH_DIR (default /dev/shm)
set -eu
HERMIT=$(realpath "${1:-target/release/hermit}")
SIZE_MB=${SIZE_MB:-1024}
REPS=${REPS:-5}
W=$(mktemp -d "${BENCH_DIR:-/dev/shm}/hermit-bench-store.XXXXXX")
cleanup() { chmod -R u+w "$W" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# time_cmd VAR CMD... : runs CMD (a command or function), appends its wall
# and CPU (user+sys, children included) seconds to $W/VAR.wall / $W/VAR.cpu
time_cmd() {
  local var=$1 t; shift
  t=$( { TIMEFORMAT='%3R %3U %3S'; time "$@" >/dev/null 2>"$W/stderr"; } 2>&1 ) || {
    cat "$W/stderr" >&2; exit 1; }
  echo "$t" | awk '{print $1}' >> "$W/$var.wall"
  echo "$t" | awk '{print $2 + $3}' >> "$W/$var.cpu"
}
# median FILE: the median of the numbers in $W/FILE, in ms
median() { sort -n "$W/$1" | awk '{a[NR]=$1*1000} END {printf "%d", (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v p="$1" -v h="$2" 'BEGIN {printf "%.2f", p/h}'; }

echo "making a ${SIZE_MB} MiB file in $W"
head -c "${SIZE_MB}M" /dev/urandom > "$W/big"

peer_fresh() { openssl dgst -sha256 "$W/big" && cp "$W/big" "$W/copy" && sync "$W/copy"; }
hermit_fresh() { HERMIT_HOME="$W/home" "$HERMIT" store add "$W/big"; }
hermit_present() { HERMIT_HOME="$W/kept" "$HERMIT" store add "$W/big"; }

hermit_present >/dev/null   # the blob the "present" runs find
i=0
while [ "$i" -lt "$REPS" ]; do
  time_cmd present_peer openssl dgst -sha256 "$W/big"
  time_cmd present_hermit hermit_present
  rm -f "$W/copy"
  time_cmd fresh_peer peer_fresh
  chmod -R u+w "$W/home" 2>/dev/null || true; rm -rf "$W/home"
  time_cmd fresh_hermit hermit_fresh
  i=$((i + 1))
done

echo "median of $REPS runs, ${SIZE_MB} MiB; ratio = peer / hermit (above 1: hermit faster)"
printf '%-42s %9s %9s %6s %9s %9s %6s\n' "case" "peer ms" "hermit ms" "ratio" "peer cpu" "herm cpu" "ratio"
row() {
  local label=$1 p=$2 h=$3 pw hw pc hc
  pw=$(median "$p.wall"); hw=$(median "$h.wall"); pc=$(median "$p.cpu"); hc=$(median "$h.cpu")
  printf '%-42s %9s %9s %6s %9s %9s %6s\n' "$label" "$pw" "$hw" "$(ratio "$pw" "$hw")" "$pc" "$hc" "$(ratio "$pc" "$hc")"
}
row "add, present vs openssl dgst" present_peer present_hermit
row "add, fresh vs openssl dgst && cp && sync" fresh_peer fresh_hermit
