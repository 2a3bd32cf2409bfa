#!/usr/bin/env bash
# Start-up of `hermit shell RECORD -- /bin/true` against `hermit sandbox`
# over the same root.
#
#   benches/shell.sh [HERMIT_BINARY] [RUNS]
#
# HERMIT_BINARY defaults to target/release/hermit (build it with
# `cargo build --release -p hermit`); RUNS (default 30) is the number of
# runs per side.
#
# A busybox OCI image and a spec over it are built once (`hermit build`);
# then, RUNS interleaved runs each:
#   hermit shell RECORD -- /bin/true
#       read and check the record, derive the environment from its profile,
#       find the image and its checked root, make a fresh /build and /out,
#       run /bin/true in the build's sandbox, remove /build and /out;
#   hermit sandbox --root ROOT -- /bin/true
#       the same root directory (the image's unpacked root in the store),
#       the default profile's sandbox and limits.
# Prints the medians and their ratio (target: <= 2x). Everything is made
# under a tmpfs (/dev/shm) and removed at the end.
set -euo pipefail

HERMIT=${1:-target/release/hermit}
RUNS=${2:-30}

die() { echo "error: $*" >&2; exit 1; }
[ -x "$HERMIT" ] || die "$HERMIT is not an executable; build it with: cargo build --release -p hermit"
HERMIT=$(realpath "$HERMIT")
[ -x /bin/busybox ] || die "/bin/busybox not found (Debian package busybox-static)"
command -v python3 >/dev/null || die "python3 is needed to write the OCI image"

WORK=$(mktemp -d /dev/shm/hermit-bench-shell.XXXXXX)
cleanup() { chmod -R u+w "$WORK" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
export HERMIT_HOME=$WORK/home
mkdir -p "$HERMIT_HOME"

now() { date +%s%N; }
median_ms() {
    sort -n | awk '{a[NR]=$1} END {
        m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2;
        printf "%.2f", m / 1e6 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
check() {
    local out
    if ! out=$("$@" 2>&1); then
        echo "$out" >&2
        die "failed: $*"
    fi
}

# The image: busybox and its applets in one layer, as an OCI layout.
PROJ=$WORK/proj
python3 - "$PROJ" <<'EOF'
import gzip, hashlib, io, json, os, subprocess, sys, tarfile
d = sys.argv[1]
blobs = os.path.join(d, "image/blobs/sha256")
os.makedirs(blobs)
buf = io.BytesIO()
t = tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT)
def add(name, kind, mode, data=b"", link=""):
    i = tarfile.TarInfo(name); i.type = kind; i.mode = mode; i.size = len(data); i.linkname = link
    t.addfile(i, io.BytesIO(data) if data else None)
add("bin/", tarfile.DIRTYPE, 0o755)
add("bin/busybox", tarfile.REGTYPE, 0o755, open("/bin/busybox", "rb").read())
for a in subprocess.check_output(["/bin/busybox", "--list"]).decode().split():
    if a != "busybox":
        add("bin/" + a, tarfile.SYMTYPE, 0o777, link="busybox")
t.close()
def put(b):
    h = "sha256:" + hashlib.sha256(b).hexdigest()
    open(os.path.join(blobs, h[7:]), "wb").write(b)
    return h, len(b)
layer = buf.getvalue()
gz = gzip.compress(layer, mtime=0)
ld, ls = put(gz)
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"]},
                  "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}}).encode()
cd, cs = put(cfg)
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
                  "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": ls}]}).encode()
md, ms = put(man)
open(os.path.join(d, "image/index.json"), "w").write(json.dumps({"schemaVersion": 2, "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms}]}))
open(os.path.join(d, "image/oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
open(os.path.join(d, "spec.toml"), "w").write(f'''[package]
name = "bench-shell"
version = "1"

[toolchain]
oci = "image"
digest = "{md}"

[build]
script = "echo ok > $out/ok"
''')
EOF
check "$HERMIT" build "$PROJ/spec.toml" -o "$PROJ/result"
RECORD=$(realpath "$PROJ/result/../record.json")
ROOT=$(find "$HERMIT_HOME/v1/rootfs" -mindepth 1 -maxdepth 1 -type d | head -n 1)
[ -x "$ROOT/bin/busybox" ] || die "the image's root was not found in the store"

SHELL_TRUE=("$HERMIT" shell "$RECORD" -- /bin/true)
SANDBOX_TRUE=("$HERMIT" sandbox --root "$ROOT" -- /bin/true)
check "${SHELL_TRUE[@]}"
check "${SANDBOX_TRUE[@]}"

: >"$WORK/shell"
: >"$WORK/sandbox"
for _ in 1 2 3; do "${SHELL_TRUE[@]}"; "${SANDBOX_TRUE[@]}"; done # warm-up
for ((i = 0; i < RUNS; i++)); do
    t0=$(now); "${SHELL_TRUE[@]}" </dev/null; t1=$(now)
    "${SANDBOX_TRUE[@]}" </dev/null; t2=$(now)
    echo $((t1 - t0)) >>"$WORK/shell"
    echo $((t2 - t1)) >>"$WORK/sandbox"
done
SHELL_MS=$(median_ms <"$WORK/shell")
SANDBOX_MS=$(median_ms <"$WORK/sandbox")

echo "start-up + teardown of /bin/true over the same root, median of $RUNS interleaved runs"
echo "    hermit shell RECORD: ${SHELL_MS} ms"
echo "    hermit sandbox:      ${SANDBOX_MS} ms"
echo "    ratio:               $(ratio "$SHELL_MS" "$SANDBOX_MS")x (target <= 2x)"
