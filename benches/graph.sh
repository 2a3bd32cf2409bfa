#!/usr/bin/env bash
# A 50-node graph of trivial builds, hermit against Nix, side by side.
#
#   benches/graph.sh [HERMIT_BINARY] [RUNS]
#
# The graph: 49 leaves that each write one file into their output, and one
# top node that depends on all 49 and lists them. hermit builds it as 50
# specs (`[inputs]`) over a busybox OCI image, `hermit build TOP -j 2`;
# Nix builds the same 50 derivations (`builtins.derivation`, builder
# /bin/sh = the host's static busybox, bound into Nix's sandbox through
# `sandbox-paths`) with one `nix-build`, `max-jobs = 2`, `sandbox = true`,
# no substituters, as root without a daemon, on a store in the work dir
# (`--store DIR`, a chroot store).
#
# (a) fresh: an empty store on each run, both sides.
#     Warm beforehand, on hermit's side: the image's blobs and its unpacked
#     root filesystem (one throwaway build of a one-node spec over the image;
#     that store is copied afresh before each run, untimed), and each spec's
#     hermit.lock (written by a first build, as a project keeps its lock).
#     On Nix's side: nothing is in the store; its /bin/sh is the host's
#     busybox, bound in from outside the store. Both sides evaluate or read
#     their 50 nodes on every run. (target: hermit <= 0.5x Nix)
# (b) cached: the same command again on the store the fresh run just filled
#     (every node a cache hit). (target: hermit <= 0.5x Nix)
#
# RUNS (default 11) interleaved rounds of hermit-fresh, nix-fresh,
# hermit-cached, nix-cached; medians and their ratios hermit/nix.
# Everything is under a tmpfs (/dev/shm) and removed at the end.
# Needs nix-build (Debian package nix-bin) and /bin/busybox (busybox-static).
set -euo pipefail

HERMIT=${1:-target/release/hermit}
RUNS=${2:-${RUNS:-11}}
LEAVES=${LEAVES:-49}
die() { echo "error: $*" >&2; exit 1; }
[ -x "$HERMIT" ] || die "$HERMIT is not an executable; build it with: cargo build --release -p hermit"
HERMIT=$(realpath "$HERMIT")
command -v nix-build >/dev/null || die "nix-build not found (Debian package nix-bin)"
[ -x /bin/busybox ] || die "/bin/busybox not found (Debian package busybox-static)"

NAME=graph
. "$(dirname "$0")/lib.sh"

now() { date +%s%N; }
# median of the nanosecond figures in $W/FILE, in ms with one decimal
median_ms() { sort -n "$W/$1" | awk '{a[NR]=$1} END {
  m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%.1f", m / 1e6 }'; }
# timed VAR CMD...: runs CMD (quiet; its output shown if it fails), appends
# its wall time in ns to $W/VAR and its CPU time (user + system, its
# children's included: Nix builds in nix-build's own children) to
# $W/VAR.cpu
timed() {
  local var=$1 s e t; shift
  s=$(now)
  t=$( { TIMEFORMAT='%3U %3S'; time "$@" >/dev/null 2>"$W/stderr"; } 2>&1 ) ||
    { cat "$W/stderr" >&2; die "failed: $*"; }
  e=$(now)
  echo $((e - s)) >> "$W/$var"
  echo "$t" | awk '{printf "%d\n", ($1 + $2) * 1e9}' >> "$W/$var.cpu"
}

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

# ------------------------------------------------ hermit's 50 specs
# node DIR SCRIPT [INPUT...]: a spec in $P/DIR over the image
node() {
  local dir=$1 script=$2 i; shift 2
  mkdir -p "$P/$dir"
  {
    printf '[package]\nname = "%s"\nversion = "1"\n\n' "$dir"
    printf '[toolchain]\noci = "../image"\ndigest = "sha256:%s"\n\n' "$MANIFEST"
    printf '[build]\nscript = """\n%s\n"""\n' "$script"
    if [ $# -gt 0 ]; then
      printf '\n[inputs]\n'
      for i in "$@"; do printf '%s = { spec = "../%s/spec.toml" }\n' "$i" "$i"; done
    fi
  } > "$P/$dir/spec.toml"
}
LEAFS=()
for i in $(seq -w "$LEAVES"); do
  node "leaf$i" "echo $i > \$out/file"
  LEAFS+=("leaf$i")
done
node top "ls /inputs > \$out/list" "${LEAFS[@]}"
node warm "true"
TOP=$P/top/spec.toml

# ------------------------------------------------ Nix's 50 derivations
mkdir -p "$W/nixconf" "$W/nixhome"
cat > "$W/nixconf/nix.conf" <<'CONF'
sandbox = true
substituters =
max-jobs = 2
build-users-group =
sandbox-paths = /bin/sh=/bin/busybox
CONF
cat > "$P/graph.nix" <<NIX
let
  leaf = i: builtins.derivation {
    name = "leaf\${toString i}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "mkdir \$out && echo \${toString i} > \$out/file" ];
  };
  leaves = builtins.genList (i: leaf (i + 1)) $LEAVES;
in builtins.derivation {
  name = "top";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "mkdir \$out && for l in \${toString leaves}; do echo \$l; done > \$out/list" ];
}
NIX
nixb() { HOME=$W/nixhome NIX_CONF_DIR=$W/nixconf nix-build --store "$W/nix" --no-out-link "$P/graph.nix"; }
hermitb() { HERMIT_HOME=$W/home "$HERMIT" build "$TOP" -j 2 --quiet; }

# ------------------------------------------------ warm-up (untimed)
echo "preparing: the image's root filesystem for hermit, the specs' locks..."
HERMIT_HOME=$W/home0 "$HERMIT" build "$P/warm/spec.toml" --quiet >/dev/null
HERMIT_HOME=$W/home-lock "$HERMIT" build "$TOP" -j 2 --quiet >/dev/null
chmod -R u+w "$W/home-lock"; rm -rf "$W/home-lock"
# Check that both sides build what they should.
cp -a "$W/home0" "$W/home"
out=$(HERMIT_HOME=$W/home "$HERMIT" build "$TOP" -j 2 --json | sed -n 's/^  "output": "\(.*\)",$/\1/p')
[ "$(wc -l < "$out/list")" -eq "$LEAVES" ] || die "hermit's top does not list $LEAVES inputs"
out=$(nixb 2>/dev/null)
[ "$(wc -l < "$W/nix$out/list")" -eq "$LEAVES" ] || die "Nix's top does not list $LEAVES leaves"

for _ in $(seq "$RUNS"); do
  chmod -R u+w "$W/home" "$W/nix" 2>/dev/null || true
  rm -rf "$W/home" "$W/nix"
  cp -a "$W/home0" "$W/home"
  timed hermit.fresh hermitb
  timed nix.fresh nixb
  timed hermit.cached hermitb
  timed nix.cached nixb
done

HF=$(median_ms hermit.fresh); NF=$(median_ms nix.fresh)
HC=$(median_ms hermit.cached); NC=$(median_ms nix.cached)
HFC=$(median_ms hermit.fresh.cpu); NFC=$(median_ms nix.fresh.cpu)
HCC=$(median_ms hermit.cached.cpu); NCC=$(median_ms nix.cached.cpu)
echo "$((LEAVES + 1))-node graph, medians of $RUNS interleaved runs (wall; CPU user+sys):"
echo "(a) fresh:  hermit ${HF} ms, nix ${NF} ms, ratio $(ratio "$HF" "$NF") (target <= 0.5); CPU hermit ${HFC} ms, nix ${NFC} ms, ratio $(ratio "$HFC" "$NFC")"
echo "(b) cached: hermit ${HC} ms, nix ${NC} ms, ratio $(ratio "$HC" "$NC") (target <= 0.5); CPU hermit ${HCC} ms, nix ${NCC} ms, ratio $(ratio "$HCC" "$NCC")"
