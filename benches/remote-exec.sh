#!/usr/bin/env bash
# Remote execution on BuildGrid: 8 independent builds of ~2 s CPU each,
# sent with `hermit build --remote-exec` to BuildGrid, run by two hermit
# workers each limited to one CPU (`taskset -c 0` / `taskset -c 1` and
# `--cpus 1`) against one such worker.
#
#   benches/remote-exec.sh [HERMIT_BINARY] [RUNS]
#
# BuildGrid (with Execution + Bots on a PostgreSQL made here, as in the
# tests: initdb + pg_ctl as the user `nobody`, `bgd migrate apply`) runs on
# loopback from the virtualenv at ${HERMIT_TEST_BUILDGRID:-/var/cache/
# hermit-tests/buildgrid}. Each run builds 8 specs nobody built before (the
# run number is in their scripts), so every build really runs; the workers
# keep their stores between runs (the image is fetched from the CAS once).
# RUNS (default 3) interleaved rounds of one worker, two workers; medians
# and the ratio two/one (target <= 0.6).
set -euo pipefail

HERMIT=${1:-target/release/hermit}
RUNS=${2:-${RUNS:-3}}
BUILDS=${BUILDS:-8}
# Loop iterations of busybox sh per build (~2 s of one CPU here).
SPIN=${SPIN:-2500000}
BG=${HERMIT_TEST_BUILDGRID:-/var/cache/hermit-tests/buildgrid}
PG=/usr/lib/postgresql/15/bin
die() { echo "error: $*" >&2; exit 1; }
[ -x "$HERMIT" ] || die "$HERMIT is not an executable; build it with: cargo build --release -p hermit"
HERMIT=$(realpath "$HERMIT")
[ -x "$BG/bin/bgd" ] || die "BuildGrid is not installed at $BG (run scripts/install-deps.sh)"
[ -x "$PG/initdb" ] || die "PostgreSQL 15 is not installed (Debian package postgresql)"
[ "$(nproc)" -ge 2 ] || die "needs two CPUs"

NAME=remote-exec
BENCH_DIR=${BENCH_DIR:-/tmp}
. "$(dirname "$0")/lib.sh"
PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -d "$W/pg/data" ] && setpriv --reuid=nobody --regid=nogroup --clear-groups -- \
    "$PG/pg_ctl" -D "$W/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
  cleanup
}
trap stop_all EXIT
chmod 755 "$W"

now() { date +%s%N; }
median_ms() { sort -n "$W/$1" | awk '{a[NR]=$1} END {
  m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%.0f", m / 1e6 }'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ------------------------------------------------ PostgreSQL and BuildGrid
mkdir -p "$W/pg" && chown nobody "$W/pg" && chmod 700 "$W/pg"
asnobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups -- "$@"; }
asnobody "$PG/initdb" -D "$W/pg/data" --auth=trust -U bgd -E UTF8 --no-sync >/dev/null
PGPORT=$(free_port)
asnobody "$PG/pg_ctl" -D "$W/pg/data" -l "$W/pg/log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $W/pg -c fsync=off -c max_connections=200" start >/dev/null
"$PG/createdb" -h 127.0.0.1 -p "$PGPORT" -U bgd bgd
DB=postgresql+psycopg2://bgd@127.0.0.1:$PGPORT/bgd
"$BG/bin/bgd" migrate apply "$DB" >/dev/null
PORT=$(free_port)
mkdir -p "$W/cas"
cat > "$W/buildgrid.yml" <<EOF
server:
  - !channel
    address: "127.0.0.1:$PORT"
    insecure-mode: true
authorization:
  method: none
connections:
  - !sql-connection &sql
    connection-string: $DB
    pool-size: 10
    max-overflow: 20
storages:
  - !disk-storage &cas
    path: $W/cas
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 100000
    allow-updates: true
    cache-failed-actions: false
schedulers:
  - !sql-scheduler &scheduler
    sql: *sql
    action-cache: *ac
    storage: *cas
    property-set: !dynamic-property-set
      match-property-keys: [OSFamily, ISA]
    bot-session-keepalive-timeout: 30
    session-expiry-timer-interval: 1
    poll-interval: 0.2
instances:
  - name: ""
    services:
      - !action-cache
        cache: *ac
      - !execution
        scheduler: *scheduler
        operation-stream-keepalive-timeout: 5
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
thread-pool-size: 40
EOF
"$BG/bin/bgd" server start "$W/buildgrid.yml" > "$W/buildgrid.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
URL=grpc://127.0.0.1:$PORT

# ------------------------------------------------ the busybox OCI image
sha() { sha256sum "$1" | cut -d' ' -f1; }
P=$W/proj
L=$P/image
mkdir -p "$L/blobs/sha256" "$W/layer/bin"
cp /bin/busybox "$W/layer/bin/busybox"
for a in sh true echo cat ls mkdir; do ln -s busybox "$W/layer/bin/$a"; done
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$W/layer" -cf "$W/layer.tar" bin
gzip -n -1 -c "$W/layer.tar" > "$W/layer.tar.gz"
put() { local d; d=$(sha "$1"); cp "$1" "$L/blobs/sha256/$d"; echo "$d"; }
DIFF=$(sha "$W/layer.tar")
LAYER=$(put "$W/layer.tar.gz")
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$DIFF" > "$W/config.json"
CONFIG=$(put "$W/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
  "$CONFIG" "$(stat -c %s "$W/config.json")" "$LAYER" "$(stat -c %s "$W/layer.tar.gz")" > "$W/manifest.json"
MANIFEST=$(put "$W/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"platform":{"architecture":"amd64","os":"linux"}}]}' \
  "$MANIFEST" "$(stat -c %s "$W/manifest.json")" > "$L/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$L/oci-layout"

# specs RUN: $BUILDS independent specs that spin ~2 s each, new for RUN
specs() {
  local run=$1 i
  SPECS=()
  for i in $(seq "$BUILDS"); do
    mkdir -p "$P/r$run-$i"
    {
      printf '[package]\nname = "spin-%s-%s"\nversion = "1"\n\n' "$run" "$i"
      printf '[toolchain]\noci = "../image"\ndigest = "sha256:%s"\n\n' "$MANIFEST"
      printf '[build]\nscript = """\ni=0\nwhile [ $i -lt %s ]; do i=$((i+1)); done\necho %s-%s $i > $out/done\n"""\n' \
        "$SPIN" "$run" "$i"
    } > "$P/r$run-$i/spec.toml"
    SPECS+=("$P/r$run-$i/spec.toml")
  done
}

# workers N: starts N workers (worker k on CPU k-1, --cpus 1)
WPIDS=()
workers() {
  local k
  WPIDS=()
  for k in $(seq "$1"); do
    HERMIT_HOME=$W/worker$k taskset -c $((k - 1)) "$HERMIT" worker --remote "$URL" --cpus 1 \
      --name "bench-w$k" 2>>"$W/worker$k.log" &
    WPIDS+=($!)
  done
  sleep 1
}
stop_workers() {
  for p in "${WPIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${WPIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
client() { HERMIT_HOME=$W/client "$HERMIT" build "${SPECS[@]}" --remote-exec "$URL" --quiet; }
timed() {
  local var=$1 s e; shift
  s=$(now)
  "$@" >/dev/null 2>"$W/stderr" || { cat "$W/stderr" >&2; die "failed: $*"; }
  e=$(now)
  echo $((e - s)) >> "$W/$var"
}

# ------------------------------------------------ warm-up (untimed)
echo "preparing: BuildGrid on $URL, the workers' stores (image from the CAS), the specs' locks..."
workers 2
specs warm
client >/dev/null 2>"$W/stderr" || { cat "$W/stderr" >&2; die "the warm-up build failed"; }
stop_workers

# The timed runs' specs, with their hermit.lock written beforehand (as a
# project keeps its lock), so the timed client only sends and waits.
for r in $(seq "$RUNS"); do
  specs "a$r"; for s in "${SPECS[@]}"; do HERMIT_HOME=$W/client "$HERMIT" lock "$s" >/dev/null 2>&1; done
  specs "b$r"; for s in "${SPECS[@]}"; do HERMIT_HOME=$W/client "$HERMIT" lock "$s" >/dev/null 2>&1; done
done

for r in $(seq "$RUNS"); do
  workers 1; specs "a$r"; timed one client; stop_workers
  workers 2; specs "b$r"; timed two client; stop_workers
done
# Both workers of the two-worker runs ran some of the builds.
n2=$(grep -c ": finished action " "$W/worker2.log" || true)
[ "$n2" -gt 0 ] || die "the second worker ran nothing: $(tail -5 "$W/worker2.log")"

ONE=$(median_ms one); TWO=$(median_ms two)
echo "$BUILDS independent builds of ~2 s CPU, remote execution on BuildGrid, medians of $RUNS interleaved runs:"
echo "  one worker (1 CPU): ${ONE} ms; two workers (1 CPU each): ${TWO} ms; ratio $(ratio "$TWO" "$ONE") (target <= 0.6)"
