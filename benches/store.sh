#!/bin/sh
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

now() { date +%s%N; }
# time_cmd VAR CMD... : runs CMD, appends its wall time in ms to $W/VAR
time_cmd() {
  var=$1; shift
  t0=$(now); "$@" >/dev/null; t1=$(now)
  echo $(( (t1 - t0) / 1000000 )) >> "$W/$var"
}
median() { sort -n "$W/$1" | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
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

pp=$(median present_peer); ph=$(median present_hermit)
fp=$(median fresh_peer); fh=$(median fresh_hermit)
printf '%-44s %8s %8s %6s\n' "case (${SIZE_MB} MiB, median of $REPS, ms)" peer hermit ratio
printf '%-44s %8s %8s %6s\n' "add, already present  vs openssl dgst" "$pp" "$ph" "$(ratio "$pp" "$ph")"
printf '%-44s %8s %8s %6s\n' "add, fresh  vs openssl dgst && cp && sync" "$fp" "$fh" "$(ratio "$fp" "$fh")"
