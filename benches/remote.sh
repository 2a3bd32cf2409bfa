#!/usr/bin/env bash
# Benchmarks of the remote cache against a real BuildGrid on loopback.
#
#   benches/remote.sh [HERMIT_BINARY]
#
# (a) fetching a 100 MB blob from BuildGrid's CAS: `hermit fetch` of a
#     source that only the remote CAS holds (a fresh store each run: the
#     download, its check and the store's commit) against BuildGrid's own
#     client, `bgd cas download-file`, interleaved, RUNS each; medians and
#     hermit's speed relative to bgd's (target: >= 0.9x).
# (b) a remote cache hit of a single build (a 100 MB output) on a fresh
#     store, against a local cache hit plus the time `bgd cas download-file`
#     takes to download the output's tar (target: <= 3x).
#
# Needs BuildGrid in the virtualenv scripts/install-deps.sh makes
# (HERMIT_TEST_BUILDGRID, default /var/cache/hermit-tests/buildgrid) and
# /bin/busybox (the toolchain is a one-layer OCI layout of it). Everything
# is made under /dev/shm (BENCH_DIR) and removed at the end. On a loaded
# machine, run it with `nice -n -19`.
set -euo pipefail

HERMIT=$(realpath "${1:-target/release/hermit}")
RUNS=${RUNS:-5}
MB=${MB:-100}
NAME=remote
VENV=${HERMIT_TEST_BUILDGRID:-/var/cache/hermit-tests/buildgrid}
BGD=$VENV/bin/bgd
[ -x "$HERMIT" ] || { echo "error: build hermit first: cargo build --release -p hermit" >&2; exit 1; }
[ -x "$BGD" ] || { echo "error: no BuildGrid at $VENV: run scripts/install-deps.sh" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "error: needs /bin/busybox (busybox-static)" >&2; exit 1; }
. "$(dirname "$0")/lib.sh"

# ------------------------------------------------------------- the server
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$W/buildgrid.yml" <<EOF
server:
  - !channel
    address: "127.0.0.1:$PORT"
    insecure-mode: true
storages:
  - !disk-storage &cas
    path: $W/cas
caches:
  - !lru-action-cache &ac
    storage: *cas
    max-cached-refs: 10000
    allow-updates: true
    cache-failed-actions: false
instances:
  - name: ""
    services:
      - !action-cache
        cache: *ac
      - !cas
        storage: *cas
      - !bytestream
        storage: *cas
EOF
"$BGD" server start "$W/buildgrid.yml" > "$W/buildgrid.log" 2>&1 &
BG_PID=$!
trap 'kill $BG_PID 2>/dev/null || true; cleanup' EXIT
for _ in $(seq 200); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
URL=grpc://127.0.0.1:$PORT
bgd_cas() { "$BGD" cas --remote "http://127.0.0.1:$PORT" "$@"; }

oci_layout() { # DIR -> prints the manifest digest (as in benches/cached.sh)
  local d=$1 r=$W/rootfs put
  mkdir -p "$d/blobs/sha256" "$r/bin"
  cp /bin/busybox "$r/bin/busybox"
  for a in sh cat ls echo head cp; do ln -s busybox "$r/bin/$a"; done
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

# ------------------------------------------------- (a) a 100 MB blob fetched
head -c $((MB * 1000 * 1000)) /dev/urandom > "$W/blob"
HASH=$(sha256sum "$W/blob" | cut -d' ' -f1)
SIZE=$(stat -c %s "$W/blob")
bgd_cas upload-file "$W/blob" > /dev/null
rm "$W/blob"
mkdir -p "$W/a"
cat > "$W/a/spec.toml" <<EOF
[package]
name = "blob"
version = "1"
[toolchain]
oci = "$W/image"
digest = "$MANIFEST"
[[source]]
name = "blob"
urls = ["http://127.0.0.1:9/blob"]
sha256 = "$HASH"
size = $SIZE
[build]
script = "true"
EOF
hermit_fetch() {
  rm -rf "$W/ha"; HERMIT_HOME=$W/ha "$HERMIT" fetch -q "$W/a/spec.toml" --remote "$URL"
  [ -f "$W/ha/v1/blobs/sha256/$HASH" ]
}
bgd_fetch() { rm -f "$W/got"; bgd_cas download-file "$HASH/$SIZE" "$W/got"; [ -f "$W/got" ]; }
hermit_fetch >/dev/null; bgd_fetch >/dev/null # warm up (page cache, Python imports)
for _ in $(seq "$RUNS"); do
  time_cmd hermit_fetch hermit_fetch
  time_cmd bgd_fetch bgd_fetch
done
HF=$(median hermit_fetch.wall); BF=$(median bgd_fetch.wall)
rm -rf "$W/ha" "$W/got"

# ---------------------------------- (b) remote cache hit vs local hit + download
mkdir -p "$W/b"
cat > "$W/b/spec.toml" <<EOF
[package]
name = "big"
version = "1"
[toolchain]
oci = "$W/image"
digest = "$MANIFEST"
[build]
script = "head -c $((MB * 1000 * 1000)) /dev/urandom > \$out/big"
EOF
export HERMIT_HOME=$W/home-a
"$HERMIT" build -q "$W/b/spec.toml" --remote "$URL" --remote-upload --json > "$W/a.json"
TAR=$(python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); print(v["output_digest"][7:])' "$W/a.json")
TAR_SIZE=$(python3 -c 'import json,sys; r=json.load(open(json.load(open(sys.argv[1]))["record"])); print(r["output"]["tar_size"])' "$W/a.json")
local_hit() { HERMIT_HOME=$W/home-a "$HERMIT" build -q "$W/b/spec.toml"; }
remote_hit() {
  rm -rf "$W/hb"
  HERMIT_HOME=$W/hb "$HERMIT" build -q "$W/b/spec.toml" --remote "$URL" --json > "$W/b.json"
  grep -q '"hit": true' "$W/b.json"
}
download() { rm -f "$W/got"; bgd_cas download-file "$TAR/$TAR_SIZE" "$W/got"; }
# The same tar downloaded by hermit alone (a source that only the CAS holds).
mkdir -p "$W/c"
sed -e "s/^sha256 = .*/sha256 = \"$TAR\"/" -e "s/^size = .*/size = $TAR_SIZE/" "$W/a/spec.toml" > "$W/c/spec.toml"
download_hermit() {
  rm -rf "$W/hc"; HERMIT_HOME=$W/hc "$HERMIT" fetch -q "$W/c/spec.toml" --remote "$URL"
  [ -f "$W/hc/v1/blobs/sha256/$TAR" ]
}
{ local_hit; remote_hit; download; download_hermit; } >/dev/null 2>&1
for _ in $(seq "$RUNS"); do
  time_cmd local_hit local_hit
  time_cmd download download
  time_cmd download_hermit download_hermit
  time_cmd remote_hit remote_hit
done
LH=$(median local_hit.wall); DL=$(median download.wall); RH=$(median remote_hit.wall)
DH=$(median download_hermit.wall)

echo "remote cache on BuildGrid, loopback, ${MB} MB, median of $RUNS"
printf '(a) fetch a %d MB blob: hermit %d ms, bgd cas download-file %d ms: hermit at %sx bgd'"'"'s speed (target >= 0.9x)\n' \
  "$MB" "$HF" "$BF" "$(ratio "$BF" "$HF")"
printf '(b) remote cache hit on a fresh store %d ms; local cache hit %d ms + download %d ms (bgd cas download-file) = %d ms: %sx (target <= 3x)\n' \
  "$RH" "$LH" "$DL" "$((LH + DL))" "$(ratio "$RH" "$((LH + DL))")"
printf '    against hermit'"'"'s own download of the tar (%d ms): local hit + download = %d ms: %sx\n' \
  "$DH" "$((LH + DH))" "$(ratio "$RH" "$((LH + DH))")"
