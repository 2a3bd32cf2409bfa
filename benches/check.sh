#!/usr/bin/env bash
# Benchmarks of `hermit check`.
#
#   benches/check.sh [HERMIT_BINARY]
#
# (a) `hermit check` of a real C project (GNU hello from its release
#     tarball, Debian toolchain, make -j2) under its N default variations,
#     against N+1 plain `hermit build`s of it (each a cache miss), in the
#     same run: their total wall times and the ratio (target: <= 1.1x).
# (b) finding the one differing file between two 1 GiB, 50 000-file
#     outputs: hermit's comparison of the two records' file lists (timed
#     inside `hermit check`, HERMIT_TIMINGS=1, stage check.compare) against
#     `diff -r` on the same two kept trees; median of RUNS (target: <= 0.5x).
# (c) what the moved clock costs: `hermit check --vary clock` of GNU hello
#     (the control untraced, the variant traced by the sandbox's init: every
#     fork, thread, exec and wall-clock read stops there) against `hermit
#     check --vary repeat` (the same two builds, neither traced),
#     interleaved, median of RUNS each; the difference is the traced
#     build's overhead, given as a share of one plain build. Then the
#     cost per operation, measured inside one such check's two builds (a C
#     program timing 100 000 CLOCK_REALTIME reads, 100 000 CLOCK_MONOTONIC
#     reads and 1 000 fork+exec+wait of /bin/true), untraced vs traced.
#
# Everything is made under /dev/shm and removed at the end. Needs the
# network for the one-time Debian bootstrap (mmdebstrap), and GNU hello's
# tarball from scripts/install-deps.sh (HERMIT_TEST_TARBALLS).
set -euo pipefail

HERMIT=$(realpath "${1:-target/release/hermit}")
RUNS=${RUNS:-5}
PARTS=${PARTS:-abc}  # which of (a), (b) and (c) to run
[ -x "$HERMIT" ] || { echo "error: build hermit first: cargo build --release" >&2; exit 1; }
TARBALLS=${HERMIT_TEST_TARBALLS:-/var/cache/hermit-tests/orig}
HELLO=$(ls "$TARBALLS"/hello_*.orig.tar.* 2>/dev/null | grep -v '\.asc$' | head -n1 || true)
[ -n "$HELLO" ] || { echo "error: no GNU hello tarball in $TARBALLS: run scripts/install-deps.sh" >&2; exit 1; }

W=$(mktemp -d /dev/shm/hermit-bench-check.XXXXXX)
cleanup() { chmod -R u+w "$W" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
export HERMIT_HOME=$W/home
ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# ---------------------------------------------------------------- (a)
P=$W/hello
mkdir -p "$P"
spec() {
  cat > "$P/spec.toml" <<SPEC
[package]
name = "hello"
version = "2.10"
[toolchain]
debian = { suite = "bookworm", include = ["gcc", "libc6-dev", "make"] }
[[source]]
name = "hello"
urls = ["file://$HELLO"]
sha256 = "$(sha256sum "$HELLO" | cut -d' ' -f1)"
unpack = true
[build]
workdir = "hello/hello-2.10"
script = """
./configure --prefix=/usr
make
make install DESTDIR="\$out"
"""
[env]
RUN = "$1"
SPEC
}
echo "bootstrapping the toolchain and building once (not timed)..."
spec 0
"$HERMIT" build "$P/spec.toml" -j 2 --quiet > /dev/null
if [[ $PARTS == *a* ]]; then
spec check
s=$(ms)
"$HERMIT" check "$P/spec.toml" -j 2 --quiet --json > "$W/check.json" || {
  echo "error: hello is not reproducible here:" >&2; cat "$W/check.json" >&2; exit 1; }
e=$(ms)
CHECK=$((e - s))
N=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["variations"]))' "$W/check.json")
VARIED=$(python3 -c 'import json,sys; print(",".join(v["name"] for v in json.load(open(sys.argv[1]))["variations"] if v["varied"]))' "$W/check.json")
PLAIN=0
for i in $(seq $((N + 1))); do
  spec "$i"   # another [env] each time: a cache miss
  s=$(ms); "$HERMIT" build "$P/spec.toml" -j 2 --quiet > /dev/null; e=$(ms)
  PLAIN=$((PLAIN + e - s))
done
echo "(a) GNU hello: hermit check under $N variations (varied: $VARIED) ${CHECK} ms; $((N + 1)) plain builds ${PLAIN} ms; ratio $(awk -v c="$CHECK" -v p="$PLAIN" 'BEGIN{printf "%.3f", c/p}') (target <= 1.1)"
fi
if [[ $PARTS == *c* ]]; then
spec clock
for _ in $(seq "$RUNS"); do
  for v in clock repeat; do
    s=$(ms)
    "$HERMIT" check "$P/spec.toml" --vary "$v" -j 2 --quiet --json > "$W/$v.json" || {
      echo "error: hello under $v:" >&2; cat "$W/$v.json" >&2; exit 1; }
    e=$(ms)
    python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))["variations"][0]; sys.exit(0 if v["varied"] else 1)' "$W/$v.json" || {
      echo "error: $v was not varied:" >&2; cat "$W/$v.json" >&2; exit 1; }
    echo $((e - s)) >> "$W/$v.ms"
  done
done
CL=$(median < "$W/clock.ms"); RP=$(median < "$W/repeat.ms")
M=$W/micro
mkdir -p "$M"
cp "$P/hermit.lock" "$M/hermit.lock"
cat > "$M/spec.toml" <<'SPEC'
[package]
name = "clock-cost"
version = "1"
[toolchain]
debian = { suite = "bookworm", include = ["gcc", "libc6-dev", "make"] }
[build]
script = """
cat > cost.c <<'C'
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
int main(int argc, char **argv) {
  (void)argc;
  struct timespec t;
  double a = now();
  for (int i = 0; i < 100000; i++) clock_gettime(CLOCK_REALTIME, &t);
  double b = now();
  for (int i = 0; i < 100000; i++) clock_gettime(CLOCK_MONOTONIC, &t);
  double c = now();
  for (int i = 0; i < 1000; i++) { pid_t p = fork(); if (!p) { execl("/bin/true", "true", (char *)0); _exit(127); } waitpid(p, 0, 0); }
  double d = now();
  FILE *o = fopen(argv[1], "w");
  fprintf(o, "%.3f %.3f %.1f\\n", (b - a) * 10, (c - b) * 10, (d - c) * 1000);
  return 0;
}
C
gcc -O2 -o cost cost.c
./cost $out/cost
"""
SPEC
"$HERMIT" check "$M/spec.toml" --vary clock -j 2 --quiet --json > "$W/micro.json" || true
read -r UR UM UF < "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["control_output"])' "$W/micro.json")/cost"
read -r TR TM TF < "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["variations"][0]["output"])' "$W/micro.json")/cost"
echo "    per operation, untraced → traced: CLOCK_REALTIME read ${UR} → ${TR} µs, CLOCK_MONOTONIC read ${UM} → ${TM} µs, fork+exec+wait ${UF} → ${TF} µs"
echo "(c) GNU hello: hermit check --vary clock ${CL} ms, --vary repeat ${RP} ms (median of $RUNS, interleaved); ratio $(awk -v c="$CL" -v r="$RP" 'BEGIN{printf "%.3f", c/r}'); the traced build's overhead $(awk -v c="$CL" -v r="$RP" 'BEGIN{printf "%+.1f%%", 100*(c-r)/(r/2)}') of one build"
fi
[[ $PARTS == *b* ]] || exit 0

# ---------------------------------------------------------------- (b)
# A busybox-free Debian build writing 50 000 files of 21 475 bytes (1 GiB,
# deterministic) and one file holding HERMIT_JOBS: the `jobs` variation
# changes that one file only.
B=$W/big
mkdir -p "$B"
cp "$P/hermit.lock" "$B/hermit.lock"
cat > "$B/spec.toml" <<'SPEC'
[package]
name = "big"
version = "1"
[toolchain]
debian = { suite = "bookworm", include = ["gcc", "libc6-dev", "make"] }
[build]
script = """
mkdir -p $out/d
seq 1 200000000 | head -c 1073750000 | split -b 21475 -a 5 -d - $out/d/f
echo $HERMIT_JOBS > $out/jobs
"""
SPEC
HERMIT_TIMINGS=1 "$HERMIT" check "$B/spec.toml" --vary jobs -j 2 --quiet --json \
  > "$W/big.json" 2> "$W/big.timings" || true
FILES=$(python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))["variations"][0]; print(len(v["differing_files"]), v["differing_files"][0]["path"])' "$W/big.json")
CONTROL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["control_output"])' "$W/big.json")
VARIANT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["variations"][0]["output"])' "$W/big.json")
COMPARE=$(awk '$3 == "check.compare" {printf "%.3f", $4 / 1000}' "$W/big.timings" | tail -n1)
echo "    outputs: $(find "$CONTROL" -type f | wc -l) files, $(du -sm "$CONTROL" | cut -f1) MiB each; hermit found: $FILES"
for _ in $(seq "$RUNS"); do
  s=$(date +%s%N); diff -r "$CONTROL" "$VARIANT" > "$W/diff.out" || true; e=$(date +%s%N)
  echo $(( (e - s) / 1000 )) >> "$W/diff.us"
done
grep -q jobs "$W/diff.out" || { echo "error: diff -r did not find the file" >&2; exit 1; }
DIFF=$(median < "$W/diff.us" | awk '{printf "%.3f", $1 / 1000}')
echo "(b) the one differing file of two 1 GiB, 50 000-file outputs: hermit ${COMPARE} ms (from the records), diff -r ${DIFF} ms (median of $RUNS); ratio $(awk -v h="$COMPARE" -v d="$DIFF" 'BEGIN{printf "%.5f", h/d}') (target <= 0.5)"
