#!/usr/bin/env bash
# Benchmarks of cache hits of `hermit build`.
#
#   benches/cached.sh [HERMIT_BINARY]
#
# (a) a cached build (build key hit) of a spec whose sources are all
#     downloaded (3 files, one of them an unpacked tarball): median wall
#     time of RUNS runs (target: <= 5 ms).
# (b) a cached build of a spec whose one local source is a git checkout of
#     FILES files (the spec at its top, `path = "."`), against `git status`
#     in the same checkout, interleaved, RUNS runs each: medians and their
#     ratio (target: <= 1.0x). git answers from the stat data in its index;
#     hermit from its stat cache (builder/src/localtree/statcache.rs).
#
# The toolchain is a one-layer OCI layout of the host's static busybox (no
# network needed). Everything is made under /dev/shm (BENCH_DIR) and removed
# at the end.
set -euo pipefail

HERMIT=$(realpath "${1:-target/release/hermit}")
RUNS=${RUNS:-41}
FILES=${FILES:-5000}
NAME=cached
[ -x "$HERMIT" ] || { echo "error: build hermit first: cargo build --release -p hermit" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "error: needs /bin/busybox (busybox-static)" >&2; exit 1; }
command -v git >/dev/null || { echo "error: needs git" >&2; exit 1; }
. "$(dirname "$0")/lib.sh"
export HERMIT_HOME=$W/home
# median of the microsecond figures on stdin, printed in ms with two decimals
median_ms() { sort -n | awk '{a[NR]=$1} END {m = (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2; printf "%.2f", m/1000}'; }
# run VAR CMD...: runs CMD once, appends its wall time (us) to $W/VAR.us and
# its CPU time (user + sys, in seconds, from the shell's `times`) to
# $W/VAR.cpu. On a shared machine the wall times move with the load; the
# CPU times barely do.
run() {
  local var=$1 out; shift
  out=$( (
    s=${EPOCHREALTIME/./}; "$@" > /dev/null || exit 1; e=${EPOCHREALTIME/./}
    echo $(( e - s )); times
  ) ) || { echo "error: $* failed" >&2; exit 1; }
  echo "$out" | head -n1 >> "$W/$var.us"
  echo "$out" | tail -n1 | awk '{ for (i = 1; i <= 2; i++) { split($i, p, "m"); sub("s", "", p[2]); c += p[1] * 60 + p[2] } print c }' >> "$W/$var.cpu"
}
# mean CPU ms per run of $W/VAR.cpu
cpu_ms() { awk '{s += $1} END {printf "%.2f", s * 1000 / NR}' "$W/$1.cpu"; }

# ---------------------------------------------------------- the toolchain
oci_layout() { # DIR -> prints the manifest digest
  local d=$1 r=$W/rootfs put
  mkdir -p "$d/blobs/sha256" "$r/bin"
  cp /bin/busybox "$r/bin/busybox"
  for a in sh cat ls echo; do ln -s busybox "$r/bin/$a"; done
  tar -C "$r" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$W/layer.tar" bin
  gzip -n -1 < "$W/layer.tar" > "$W/layer.tar.gz"
  put() { local h; h=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$d/blobs/sha256/$h"; echo "$h"; }
  local diff layer config manifest
  diff=$(sha256sum "$W/layer.tar" | cut -d' ' -f1)
  layer=$(put "$W/layer.tar.gz")
  printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diff" > "$W/config.json"
  config=$(put "$W/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
    "$config" "$(stat -c %s "$W/config.json")" "$layer" "$(stat -c %s "$W/layer.tar.gz")" > "$W/manifest.json"
  manifest=$(put "$W/manifest.json")
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"platform":{"architecture":"amd64","os":"linux"}}]}' \
    "$manifest" "$(stat -c %s "$W/manifest.json")" > "$d/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$d/oci-layout"
  echo "sha256:$manifest"
}
MANIFEST=$(oci_layout "$W/image")
toolchain() { printf '[toolchain]\noci = "%s"\ndigest = "%s"\n' "$W/image" "$MANIFEST"; }

# ---------------------------------------------------------- (a) remote only
P=$W/remote
mkdir -p "$P/t/pkg"
head -c 65536 /dev/urandom > "$P/one.bin"
head -c 4096 /dev/urandom > "$P/two.bin"
for i in $(seq 20); do echo "file $i" > "$P/t/pkg/f$i"; done
tar -C "$P/t" -czf "$P/pkg.tar.gz" pkg
{
  printf '[package]\nname = "remote"\nversion = "1"\n'
  toolchain
  for f in one.bin two.bin; do
    printf '[[source]]\nname = "%s"\nurls = ["file://%s"]\nsha256 = "%s"\n' "${f%.bin}" "$P/$f" "$(sha256sum "$P/$f" | cut -d' ' -f1)"
  done
  printf '[[source]]\nname = "pkg"\nurls = ["file://%s"]\nsha256 = "%s"\nunpack = true\nstrip_components = 1\n' "$P/pkg.tar.gz" "$(sha256sum "$P/pkg.tar.gz" | cut -d' ' -f1)"
  printf '[build]\nscript = "ls /sources > $out/list"\n'
} > "$P/spec.toml"
"$HERMIT" build "$P/spec.toml" --quiet > /dev/null
"$HERMIT" build "$P/spec.toml" > /dev/null
for _ in $(seq "$RUNS"); do run remote "$HERMIT" build "$P/spec.toml"; done
echo "(a) cached build, remote sources only: median $(median_ms < "$W/remote.us") ms wall over $RUNS runs (target <= 5 ms), $(cpu_ms remote) ms CPU"

# ---------------------------------------------------------- (b) git checkout
G=$W/checkout
mkdir -p "$G"
# FILES files in 3 levels of directories, 25 files to a directory, small
# text files like a source tree's.
awk -v n="$FILES" -v g="$G" 'BEGIN {
  for (i = 0; i < n; i++) {
    d = sprintf("%s/m%02d/s%02d/l%d", g, int(i / 1000), int(i / 100) % 10, int(i / 25) % 4)
    if (!(d in made)) { system("mkdir -p " d); made[d] = 1 }
    f = sprintf("%s/f%05d.c", d, i)
    printf "/* file %d */\nint f%d(int x) { return x * %d + %d; }\n", i, i, i % 97, i % 13 > f
    close(f)
  }
}'
{
  printf '[package]\nname = "checkout"\nversion = "1"\n'
  toolchain
  printf '[[source]]\nname = "tree"\npath = "."\n'
  printf '[build]\nscript = "ls -R /sources/tree | wc -l > $out/count"\n'
} > "$G/spec.toml"
"$HERMIT" build "$G/spec.toml" --quiet > /dev/null   # also writes hermit.lock
( cd "$G" && git init -q && git add -A && git -c user.name=b -c user.email=b@localhost commit -qm tree )
[ "$(cd "$G" && git ls-files | wc -l)" -ge "$FILES" ]
# Let every file settle (older than the 2 s racy window), then one build to
# refresh the stat cache and one `git status` to refresh git's index.
sleep 2.5
"$HERMIT" build "$G/spec.toml" > /dev/null
( cd "$G" && git status --porcelain > /dev/null )

for _ in $(seq "$RUNS"); do
  run git git -C "$G" status --porcelain
  run hermit "$HERMIT" build "$G/spec.toml"
done
H=$(median_ms < "$W/hermit.us"); GS=$(median_ms < "$W/git.us")
HC=$(cpu_ms hermit); GC=$(cpu_ms git)
echo "(b) cached build, local git checkout of $FILES files: hermit $H ms, git status $GS ms, ratio $(awk -v h="$H" -v g="$GS" 'BEGIN{printf "%.2f", h/g}') (target <= 1.0)"
echo "    CPU per run (user + sys): hermit $HC ms, git status $GC ms, ratio $(awk -v h="$HC" -v g="$GC" 'BEGIN{printf "%.2f", h/g}')"
# What each costs without the tree: hermit's cached build of (a) against
# `git status` in a checkout of one file. The difference between the two
# ratios is the walk's own.
E=$W/one
mkdir -p "$E" && echo one > "$E/one"
( cd "$E" && git init -q && git add -A && git -c user.name=b -c user.email=b@localhost commit -qm one )
for _ in $(seq "$RUNS"); do
  run git1 git -C "$E" status --porcelain
  run hermit1 "$HERMIT" build "$P/spec.toml"
done
H1=$(cpu_ms hermit1); G1=$(cpu_ms git1)
echo "    fixed cost, CPU per run: hermit (a) $H1 ms, git status of 1 file $G1 ms; the tree alone: hermit $(awk -v a="$HC" -v b="$H1" 'BEGIN{printf "%.2f", a-b}') ms, git $(awk -v a="$GC" -v b="$G1" 'BEGIN{printf "%.2f", a-b}') ms"
