#!/usr/bin/env bash
# Benchmarks of `hermit sandbox` against its peer and against the bare host.
#
#   benches/sandbox.sh [HERMIT_BINARY] [RUNS]
#
# HERMIT_BINARY defaults to target/release/hermit (build it with
# `cargo build --release -p hermit`); RUNS (default 30) is the number of
# start-up runs per side.
#
# (a) start-up + teardown: `hermit sandbox --root BUSYBOX_ROOT -- /bin/true`
#     against `bwrap --unshare-all --die-with-parent --ro-bind BUSYBOX_ROOT /
#     --proc /proc --dev /dev /bin/true`, RUNS interleaved runs each, medians
#     and their ratio (target: <= 1.2x).
# (b) a real C build: a generated project of 200 C files built with
#     `make -j2`, inside the sandbox (a skeleton root with the host's /usr bound
#     read-only, the project bound read-write at /build) against the same
#     build directly on the host; 5 interleaved builds each, medians and their
#     ratio (target: <= 1.03x).
#
# ONLY=a or ONLY=b runs one part; FILES and BUILDS change part (b)'s size.
# With hyperfine installed, part (a) is also measured by it (sequential
# batches, as a second opinion on the interleaved loop).
# Everything is made under a tmpfs (/dev/shm) and removed at the end.
set -euo pipefail

HERMIT=${1:-target/release/hermit}
RUNS=${2:-30}
BUILDS=${BUILDS:-5}
FILES=${FILES:-200}
ONLY=${ONLY:-ab}

die() { echo "error: $*" >&2; exit 1; }
[ -x "$HERMIT" ] || die "$HERMIT is not an executable; build it with: cargo build --release -p hermit"
HERMIT=$(realpath "$HERMIT")
command -v bwrap >/dev/null || die "bwrap not found (Debian package bubblewrap)"
[ -x /bin/busybox ] || die "/bin/busybox not found (Debian package busybox-static)"
command -v gcc >/dev/null && command -v make >/dev/null || die "gcc and make are needed"

WORK=$(mktemp -d /dev/shm/hermit-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
export HERMIT_HOME=$WORK/home
mkdir -p "$HERMIT_HOME"

now() { date +%s%N; }

# median of the numbers on stdin (nanoseconds) -> milliseconds with 2 decimals
median_ms() {
    sort -n | awk '{a[NR]=$1} END {
        m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2;
        printf "%.2f", m / 1e6 }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

# run CMD... quietly; fail loudly with its output if it fails
check() {
    local out
    if ! out=$("$@" 2>&1); then
        echo "$out" >&2
        die "failed: $*"
    fi
}

# --- (a) start-up + teardown -------------------------------------------------
if [[ $ONLY == *a* ]]; then
ROOT=$WORK/busybox-root
mkdir -p "$ROOT"/{bin,etc,tmp,build,out,proc,dev,sources}
# like any image, the root has its own /etc files (the sandbox replaces them)
touch "$ROOT"/etc/{passwd,group,hosts}
cp /bin/busybox "$ROOT/bin/busybox"
for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -s busybox "$ROOT/bin/$a"
done

# bwrap sets no memory limit; nor does hermit here (`--memory-mib 0`). With
# the profile's memory limit (a memory cgroup per sandbox) start-up costs
# about 0.2 ms more: set HERMIT_MEMORY=profile to measure that.
if [ "${HERMIT_MEMORY:-none}" = profile ]; then
    HERMIT_TRUE=("$HERMIT" sandbox --root "$ROOT" -- /bin/true)
else
    HERMIT_TRUE=("$HERMIT" sandbox --root "$ROOT" --memory-mib 0 -- /bin/true)
fi
BWRAP_TRUE=(bwrap --unshare-all --die-with-parent --ro-bind "$ROOT" / --proc /proc --dev /dev /bin/true)
check "${HERMIT_TRUE[@]}"
check "${BWRAP_TRUE[@]}"

: >"$WORK/a-hermit"
: >"$WORK/a-bwrap"
for _ in 1 2 3; do "${HERMIT_TRUE[@]}"; "${BWRAP_TRUE[@]}"; done # warm-up
for ((i = 0; i < RUNS; i++)); do
    t0=$(now); "${HERMIT_TRUE[@]}"; t1=$(now)
    "${BWRAP_TRUE[@]}"; t2=$(now)
    echo $((t1 - t0)) >>"$WORK/a-hermit"
    echo $((t2 - t1)) >>"$WORK/a-bwrap"
done
A_HERMIT=$(median_ms <"$WORK/a-hermit")
A_BWRAP=$(median_ms <"$WORK/a-bwrap")

echo "(a) start-up + teardown of /bin/true, median of $RUNS interleaved runs"
echo "    hermit sandbox: ${A_HERMIT} ms"
echo "    bwrap:          ${A_BWRAP} ms"
echo "    ratio:          $(ratio "$A_HERMIT" "$A_BWRAP")x (target <= 1.2x)"
if command -v hyperfine >/dev/null; then
    hyperfine -N -w 3 -r "$RUNS" --export-json "$WORK/a.json" \
        "${HERMIT_TRUE[*]}" "${BWRAP_TRUE[*]}" >/dev/null 2>&1
    read -r H_MED B_MED < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))["results"]
print(r[0]["median"] * 1e3, r[1]["median"] * 1e3)' "$WORK/a.json")
    printf '    hyperfine medians: hermit %.2f ms, bwrap %.2f ms, ratio %sx\n' \
        "$H_MED" "$B_MED" "$(ratio "$H_MED" "$B_MED")"
fi
fi

# --- (b) a C build -----------------------------------------------------------
[[ $ONLY == *b* ]] || exit 0
PROJ=$WORK/proj
mkdir -p "$PROJ"
for ((f = 0; f < FILES; f++)); do
    {
        echo "#include <stdint.h>"
        echo "#include <string.h>"
        for ((g = 0; g < 4; g++)); do
            cat <<EOF
uint64_t f${f}_${g}(const uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t h = seed ^ ${f}u ^ (${g}u << 7);
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
        h = (h << 13) | (h >> 51);
        if ((h & 7) == ${g} % 8)
            h += i * ${f}u;
    }
    char buf[64];
    memset(buf, (int)(h & 0xff), sizeof buf);
    for (size_t i = 0; i < sizeof buf; i++)
        h = h * 31 + (uint8_t)buf[i];
    return h;
}
EOF
        done
    } >"$PROJ/u$f.c"
done
{
    echo "#include <stdint.h>"
    echo "#include <stdio.h>"
    echo "#include <stddef.h>"
    for ((f = 0; f < FILES; f++)); do
        echo "uint64_t f${f}_0(const uint8_t *p, size_t n, uint64_t seed);"
    done
    echo "int main(void) { const uint8_t d[] = \"hermit\"; uint64_t h = 0;"
    for ((f = 0; f < FILES; f++)); do echo "  h = f${f}_0(d, sizeof d, h);"; done
    echo '  printf("%llu\n", (unsigned long long)h); return 0; }'
} >"$PROJ/main.c"
cat >"$PROJ/Makefile" <<'EOF'
SRCS := $(wildcard *.c)
OBJS := $(SRCS:.c=.o)
CFLAGS := -O2 -g -Wall
prog: $(OBJS)
	$(CC) -o $@ $(OBJS)
%.o: %.c
	$(CC) $(CFLAGS) -c -o $@ $<
clean:
	rm -f $(OBJS) prog
.PHONY: clean
EOF

# The sandbox root for the build: a skeleton whose /usr is the host's,
# bound read-only (Debian is /usr-merged: /bin, /lib, ... are links into it).
SKEL=$WORK/skel
mkdir -p "$SKEL"/{usr,etc,tmp,build,out,proc,dev,sources}
for l in bin lib lib64 sbin; do
    [ -L "/$l" ] && ln -s "usr/$l" "$SKEL/$l"
done
touch "$SKEL"/etc/{passwd,group,hosts}
cp /etc/ld.so.cache "$SKEL/etc/" 2>/dev/null || true

HERMIT_MAKE=("$HERMIT" sandbox --root "$SKEL" --ro /usr:/usr --rw "$PROJ:/build" --cwd /build
    --env "PATH=/usr/bin:/bin" -- make -s -j2 CC=gcc)
HOST_MAKE=(make -s -C "$PROJ" -j2 CC=gcc)

check make -s -C "$PROJ" clean
check "${HERMIT_MAKE[@]}"
SANDBOX_OUT=$("$PROJ/prog")
check make -s -C "$PROJ" clean
check "${HOST_MAKE[@]}"
HOST_OUT=$("$PROJ/prog")
[ "$SANDBOX_OUT" = "$HOST_OUT" ] || die "the sandbox build gives $SANDBOX_OUT, the host build $HOST_OUT"

: >"$WORK/b-hermit"
: >"$WORK/b-host"
for ((i = 0; i < BUILDS; i++)); do
    check make -s -C "$PROJ" clean
    t0=$(now); check "${HERMIT_MAKE[@]}"; t1=$(now)
    echo $((t1 - t0)) >>"$WORK/b-hermit"
    check make -s -C "$PROJ" clean
    t0=$(now); check "${HOST_MAKE[@]}"; t1=$(now)
    echo $((t1 - t0)) >>"$WORK/b-host"
done
B_HERMIT=$(median_ms <"$WORK/b-hermit")
B_HOST=$(median_ms <"$WORK/b-host")

echo "(b) make -j2 of $FILES generated C files, median of $BUILDS interleaved builds"
echo "    in hermit sandbox: ${B_HERMIT} ms"
echo "    on the host:       ${B_HOST} ms"
echo "    ratio:             $(ratio "$B_HERMIT" "$B_HOST")x (target <= 1.03x)"
