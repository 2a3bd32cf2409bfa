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
# Env:   SIZE_MB (default 1024), REPS (default 9), BENCH_DIR (default /dev/shm)
set -eu
HERMIT=$(realpath "${1:-target/release/hermit}")
SIZE_MB=${SIZE_MB:-1024}
REPS=${REPS:-9}
NAME=store
. "$(dirname "$0")/lib.sh"

echo "making a ${SIZE_MB} MiB file in $W"
head -c "${SIZE_MB}M" /dev/urandom > "$W/big"

peer_fresh() { openssl dgst -sha256 "$W/big" && cp "$W/big" "$W/copy" && sync "$W/copy"; }
hermit_fresh() { HERMIT_HOME="$W/home" "$HERMIT" store add "$W/big"; }
hermit_present() { HERMIT_HOME="$W/kept" "$HERMIT" store add "$W/big"; }

hermit_present >/dev/null   # the blob the "present" runs find
i=0
while [ "$i" -lt "$REPS" ]; do
  # Which side goes first alternates from one run to the next.
  rm -f "$W/copy"
  chmod -R u+w "$W/home" 2>/dev/null || true; rm -rf "$W/home"
  if [ $((i % 2)) -eq 0 ]; then
    time_cmd present_peer openssl dgst -sha256 "$W/big"
    time_cmd present_hermit hermit_present
    time_cmd fresh_peer peer_fresh
    time_cmd fresh_hermit hermit_fresh
  else
    time_cmd present_hermit hermit_present
    time_cmd present_peer openssl dgst -sha256 "$W/big"
    time_cmd fresh_hermit hermit_fresh
    time_cmd fresh_peer peer_fresh
  fi
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
