#!/usr/bin/env bash
# Benchmarks `hermit store unpack` against GNU tar (`tar -xf`, which runs
# xz/gzip/zstd in a separate process) on the same content as .tar.xz,
# .tar.gz and .tar.zst, on tmpfs, interleaved; prints medians and ratios.
#
# The content is the data.tar of a large Debian package (default libllvm15),
# fetched with `apt-get download`, or the .deb given in BENCH_DEB.
# ratio = tar time / hermit time: above 1 means hermit is faster (target >= 0.9).
#
# Usage: benches/unpack.sh [path/to/hermit]   (default target/release/hermit)
# Env:   BENCH_DEB (a .deb to use), BENCH_PKG (default libllvm15), REPS (default 5),
#        BENCH_DIR (default /dev/shm)
set -eu
HERMIT=$(realpath "${1:-target/release/hermit}")
REPS=${REPS:-5}
PKG=${BENCH_PKG:-libllvm15}
W=$(mktemp -d "${BENCH_DIR:-/dev/shm}/hermit-bench-unpack.XXXXXX")
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

if [ -n "${BENCH_DEB:-}" ]; then
  cp "$BENCH_DEB" "$W/pkg.deb"
  PKG=$(basename "$BENCH_DEB" | cut -d_ -f1)
else
  (cd "$W" && apt-get download -q "$PKG" >/dev/null) || {
    echo "apt-get download $PKG failed (run apt-get update?); or set BENCH_DEB" >&2; exit 1; }
  mv "$W"/*.deb "$W/pkg.deb"
fi
dpkg-deb --fsys-tarfile "$W/pkg.deb" > "$W/data.tar"
rm "$W/pkg.deb"
xz -T1 -6 -k -c "$W/data.tar" > "$W/data.tar.xz"
gzip -6 -c "$W/data.tar" > "$W/data.tar.gz"
zstd -q -3 -c "$W/data.tar" > "$W/data.tar.zst"
echo "content: $PKG data.tar, $(( $(stat -c %s "$W/data.tar") / 1048576 )) MiB, $(tar -tf "$W/data.tar" | wc -l) entries"

export HERMIT_HOME="$W/home"
tar_x() { mkdir "$W/out" && tar -xf "$1" -C "$W/out"; }
hermit_x() { "$HERMIT" store unpack "$1"; }
forget_unpacked() { chmod -R u+w "$W/home/v1/unpacked" && rm -rf "$W/home/v1/unpacked"/*; }

echo "median of $REPS runs; ratio = tar / hermit (above 1: hermit faster)"
printf '%-8s %9s %9s %6s %9s %9s %6s\n' "format" "tar ms" "hermit ms" "ratio" "tar cpu" "herm cpu" "ratio"
for f in xz gz zst; do
  a="$W/data.tar.$f"
  d=$("$HERMIT" store add "$a")
  i=0
  while [ "$i" -lt "$REPS" ]; do
    rm -rf "$W/out"
    time_cmd "tar_$f" tar_x "$a"
    forget_unpacked
    time_cmd "hermit_$f" hermit_x "$d"
    i=$((i + 1))
  done
  # Same tree as GNU tar produced (content and symlinks).
  p=$("$HERMIT" store unpack "$d")
  diff -r --no-dereference "$W/out" "$p" >/dev/null || { echo "tree differs from tar's for .$f" >&2; exit 1; }
  tw=$(median "tar_$f.wall"); hw=$(median "hermit_$f.wall")
  tc=$(median "tar_$f.cpu"); hc=$(median "hermit_$f.cpu")
  printf '%-8s %9s %9s %6s %9s %9s %6s\n' "tar.$f" "$tw" "$hw" "$(ratio "$tw" "$hw")" "$tc" "$hc" "$(ratio "$tc" "$hc")"
done
