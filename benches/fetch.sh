#!/bin/sh
# Benchmark: `hermit fetch` of many small files vs `curl --parallel` on the
# same list, both from one loopback static server (python3's http.server module),
# both with 8 concurrent downloads, into fresh directories on tmpfs.
# Runs are interleaved, and which client goes first alternates from one run
# to the next (so neither always finds the server warm or the machine
# busy); prints the median wall time of each and the ratio.
#
#   usage: benches/fetch.sh [FILES] [REPS]      (defaults: 200 files, 31 reps)
#   env:   HERMIT=path/to/hermit (default target/release/hermit)
#          BENCH_DIR=/dev/shm (a tmpfs)
set -eu

FILES=${1:-200}
REPS=${2:-31}
HERMIT=${HERMIT:-$(cd "$(dirname "$0")/.." && pwd)/target/release/hermit}
BENCH_DIR=${BENCH_DIR:-/dev/shm}

[ -x "$HERMIT" ] || { echo "no hermit binary at $HERMIT (run: cargo build --release)" >&2; exit 2; }
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 2; }

WORK=$(mktemp -d "$BENCH_DIR/hermit-bench.XXXXXX")
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

mkdir -p "$WORK/files"
# Files of 1..64 KiB of random bytes.
i=0
while [ "$i" -lt "$FILES" ]; do
  size=$(( ( $(od -An -N2 -tu2 /dev/urandom) % 64 + 1 ) * 1024 ))
  head -c "$size" /dev/urandom > "$WORK/files/f$i"
  i=$((i + 1))
done

# A free port, then the server.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# python3's http.server, but with HTTP/1.1 keep-alive, quiet, and a listen
# backlog of 128 and TCP_NODELAY (the default backlog of 5 drops connections
# under 8 parallel clients, costing a 1 s SYN retransmit; without NODELAY each
# keep-alive response waits 40 ms for a delayed ACK). Both would swamp what is
# measured.
cat > "$WORK/server.py" <<'PY'
import functools, http.server, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True
handler = functools.partial(Handler, directory=sys.argv[2])
Server(("127.0.0.1", int(sys.argv[1])), handler).serve_forever()
PY
# BENCH_SERVER=busybox serves with busybox httpd instead (C, a process per
# connection, no keep-alive): less of a bottleneck, so the clients' own cost
# shows more. BENCH_SERVER=stock serves with plain `python3 -m http.server`
# (HTTP/1.0, a listen queue of 5), the server a user is most likely to put
# in front of a mirror folder.
if [ "${BENCH_SERVER:-python}" = busybox ]; then
  busybox httpd -f -p "127.0.0.1:$PORT" -h "$WORK/files" >/dev/null 2>&1 &
elif [ "${BENCH_SERVER:-python}" = stock ]; then
  python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$WORK/files" >/dev/null 2>&1 &
else
  python3 "$WORK/server.py" "$PORT" "$WORK/files" >/dev/null 2>&1 &
fi
SERVER_PID=$!
n=0
until curl -sf -o /dev/null "http://127.0.0.1:$PORT/f0"; do
  n=$((n + 1)); [ "$n" -lt 100 ] || { echo "server did not start" >&2; exit 1; }
  sleep 0.1
done

# The spec for hermit and the config list for curl.
SPEC="$WORK/spec.toml"
CURLCFG="$WORK/curl.cfg"
{
  printf '[package]\nname = "bench"\nversion = "1"\n\n[toolchain]\n'
  printf 'image = "registry.example.org/library/debian@sha256:%064d"\n\n' 0
  printf '[build]\nscript = "true"\n'
} > "$SPEC"
: > "$CURLCFG"
i=0
while [ "$i" -lt "$FILES" ]; do
  f="$WORK/files/f$i"
  printf '\n[[source]]\nname = "f%d"\nurls = ["http://127.0.0.1:%s/f%d"]\nsha256 = "%s"\nsize = %d\n' \
    "$i" "$PORT" "$i" "$(sha256sum "$f" | cut -c1-64)" "$(wc -c < "$f")" >> "$SPEC"
  printf 'url = "http://127.0.0.1:%s/f%d"\noutput = "%s/curl-out/f%d"\n' "$PORT" "$i" "$WORK" "$i" >> "$CURLCFG"
  i=$((i + 1))
done

now_ns() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

run_hermit() {
  t0=$(now_ns)
  HERMIT_HOME="$WORK/store" XDG_CONFIG_HOME="$WORK/no-config" HERMIT_MIRRORS= \
    "$HERMIT" fetch --quiet -j 8 "$SPEC"
  t1=$(now_ns)
  got=$(ls "$WORK/store/v1/blobs/sha256" | wc -l)
  [ "$got" -eq "$FILES" ] || { echo "hermit stored $got of $FILES blobs" >&2; exit 1; }
  echo $(( (t1 - t0) / 1000 )) >> "$WORK/hermit.times"
}
run_curl() {
  t0=$(now_ns)
  curl --silent --show-error --fail --parallel --parallel-max 8 -K "$CURLCFG" 2>"$WORK/curl.err" \
    || { cat "$WORK/curl.err" >&2; exit 1; }
  t1=$(now_ns)
  got=$(ls "$WORK/curl-out" | wc -l)
  [ "$got" -eq "$FILES" ] || { echo "curl wrote $got of $FILES files" >&2; exit 1; }
  echo $(( (t1 - t0) / 1000 )) >> "$WORK/curl.times"
}

: > "$WORK/hermit.times"
: > "$WORK/curl.times"
r=0
while [ "$r" -lt "$REPS" ]; do
  rm -rf "$WORK/store" "$WORK/curl-out"
  mkdir -p "$WORK/curl-out"
  if [ $((r % 2)) -eq 0 ]; then run_hermit; run_curl; else run_curl; run_hermit; fi
  r=$((r + 1))
done

H=$(median < "$WORK/hermit.times")
C=$(median < "$WORK/curl.times")
echo "fetch of $FILES files (1-64 KiB) over loopback, 8 parallel, $REPS interleaved runs:"
ms() { awk '{ printf "%.0f ", $1 / 1000 }'; }
echo "  hermit fetch: median $(echo "$H" | awk '{ printf "%.1f", $1 / 1000 }') ms  (runs: $(ms < "$WORK/hermit.times"))"
echo "  curl --parallel: median $(echo "$C" | awk '{ printf "%.1f", $1 / 1000 }') ms  (runs: $(ms < "$WORK/curl.times"))"
awk -v h="$H" -v c="$C" 'BEGIN { printf "  ratio hermit/curl: %.2f (below 1.00: hermit faster)\n", h / c }'
