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
NAME=unpack
. "$(dirname "$0")/lib.sh"

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
