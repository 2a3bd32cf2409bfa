#!/usr/bin/env bash
# Benchmarks of `hermit build`.
#
#   benches/build.sh [HERMIT_BINARY]
#
# (a) a cached build (build key hit) of a spec with 10 sources (5 local
#     trees, 5 downloaded files): median wall time of 30 runs (target: <= 20 ms).
# (b) a C build of >= 10 s (a generated project of FILES C files, make -j2)
#     with `hermit build` over a bootstrapped Debian toolchain, against the
#     same script in `bwrap --unshare-all` over the same root filesystem;
#     BUILDS interleaved runs each, medians and their ratio (target: <= 1.05x).
#
# Everything is made under /dev/shm and removed at the end. Needs the
# network for the one-time Debian bootstrap (mmdebstrap).
set -euo pipefail

HERMIT=$(realpath "${1:-target/release/hermit}")
BUILDS=${BUILDS:-3}
FILES=${FILES:-300}
[ -x "$HERMIT" ] || { echo "error: build hermit first: cargo build --release" >&2; exit 1; }
command -v bwrap >/dev/null || { echo "error: bwrap is not installed (apt-get install bubblewrap)" >&2; exit 1; }

W=$(mktemp -d /dev/shm/hermit-bench-build.XXXXXX)
cleanup() { chmod -R u+w "$W" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
export HERMIT_HOME=$W/home
ms() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# ---------------------------------------------------------------- (a) cached
P=$W/cached
mkdir -p "$P"
{
  echo '[package]'; echo 'name = "cached"'; echo 'version = "1"'
  echo '[toolchain]'; echo 'debian = { suite = "bookworm", include = ["gcc", "libc6-dev", "make"] }'
  for i in 1 2 3 4 5; do
    mkdir -p "$P/local$i"; head -c 4096 /dev/urandom > "$P/local$i/data"
    printf '[[source]]\nname = "local%d"\npath = "local%d"\n' "$i" "$i"
    head -c 65536 /dev/urandom > "$P/remote$i.bin"
    printf '[[source]]\nname = "remote%d"\nurls = ["file://%s"]\nsha256 = "%s"\n' \
      "$i" "$P/remote$i.bin" "$(sha256sum "$P/remote$i.bin" | cut -d' ' -f1)"
  done
  echo '[build]'; echo 'script = "ls /sources > $out/list"'
} > "$P/spec.toml"
echo "bootstrapping the toolchain and building once (not timed)..."
"$HERMIT" build "$P/spec.toml" --quiet > /dev/null
for _ in $(seq 30); do
  s=$(ms); "$HERMIT" build "$P/spec.toml" > /dev/null; e=$(ms)
  echo $(( (e - s) / 1000 ))
done > "$W/cached.us"
CACHED=$(median < "$W/cached.us")
printf '(a) cached build, 10 sources: median %.1f ms over 30 runs (target <= 20 ms)\n' "$(awk -v u="$CACHED" 'BEGIN{print u/1000}')"

# ---------------------------------------------------------------- (b) C build
C=$W/cproj
mkdir -p "$C/src"
for i in $(seq "$FILES"); do
  {
    echo "#include <stdio.h>"
    for j in $(seq 40); do
      echo "static double f${i}_$j(double x) { double y = x; for (int k = 0; k < 8; k++) y = y * 1.0001 + k; return y; }"
    done
    echo "double unit$i(double x) { return f${i}_1(x)$(for j in $(seq 2 40); do printf ' + f%s_%s(x)' "$i" "$j"; done); }"
  } > "$C/src/u$i.c"
done
{
  echo 'S ?= /sources/proj'
  echo 'SRC := $(wildcard $(S)/src/*.c)'
  echo 'OBJ := $(patsubst $(S)/src/%.c,obj/%.o,$(SRC))'
  echo 'all: $(OBJ)'
  echo 'obj/%.o: $(S)/src/%.c'
  printf '\t@mkdir -p obj && cc -O2 -c $< -o $@\n'
} > "$C/Makefile"
cat > "$C/spec.toml" <<SPEC
[package]
name = "cbench"
version = "1"
[toolchain]
debian = { suite = "bookworm", include = ["gcc", "libc6-dev", "make"] }
[[source]]
name = "proj"
path = "."
include = ["Makefile", "src"]
[build]
script = "make -j2 -f /sources/proj/Makefile && ls obj | wc -l > \$out/count"
SPEC
# The same lock as (a): the same image, bootstrapped once.
cp "$P/hermit.lock" "$C/hermit.lock"
ROOTFS=$(ls -d "$HERMIT_HOME"/v1/rootfs/*/ | head -n1)
# bwrap cannot create /build and /sources on the read-only image, so its side
# binds under /srv (empty in Debian) and tells make where the sources are.
SCRIPT='cd /srv/build && make -j2 -f /srv/sources/proj/Makefile S=/srv/sources/proj && ls obj | wc -l > /srv/out/count'
for i in $(seq "$BUILDS"); do
  # A different [env] each time so the build key misses the cache.
  sed -i "/^\[env\]/,\$d" "$C/spec.toml"; printf '[env]\nRUN = "%s"\n' "$i" >> "$C/spec.toml"
  s=$(ms); "$HERMIT" build "$C/spec.toml" --quiet > /dev/null; e=$(ms)
  echo $(( (e - s) / 1000000 )) >> "$W/hermit.ms"
  rm -rf "$W/bb" "$W/bo"; mkdir -p "$W/bb" "$W/bo"
  s=$(ms)
  bwrap --unshare-all --die-with-parent --ro-bind "$ROOTFS" / --proc /proc --dev /dev --tmpfs /tmp \
    --tmpfs /srv --bind "$W/bb" /srv/build --bind "$W/bo" /srv/out --ro-bind "$C" /srv/sources/proj \
    --clearenv --setenv PATH /usr/bin:/bin /bin/sh -ec "$SCRIPT"
  e=$(ms)
  echo $(( (e - s) / 1000000 )) >> "$W/bwrap.ms"
done
H=$(median < "$W/hermit.ms"); B=$(median < "$W/bwrap.ms")
echo "(b) C build ($FILES files, make -j2): hermit build ${H} ms, bwrap ${B} ms, ratio $(awk -v h="$H" -v b="$B" 'BEGIN{printf "%.3f", h/b}') (target <= 1.05)"
