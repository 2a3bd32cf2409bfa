#!/bin/sh
# Writes minish-v1.tar, the compatibility-guard bundle: a graph of two specs
# (app reads lib's output through [inputs]) built over a toolchain image whose
# only file is /bin/sh = minish.c (x86_64, no libc), exported with
# `hermit export`. The committed file was made by the hermit that introduced
# bundle format 1; tests/e2e/bundle.rs checks that every later hermit still
# verifies it and rebuilds it identically. Do not regenerate it to make that
# test pass: a failure there means a later hermit broke old bundles.
#   HERMIT=target/release/hermit tests/data/bundles/make.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
hermit=${HERMIT:-hermit}
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
gcc -static -nostdlib -ffreestanding -fno-builtin -fno-tree-loop-distribute-patterns -Os \
    -fno-stack-protector -fno-pie -no-pie -fno-asynchronous-unwind-tables \
    -Wl,--build-id=none -s -o "$w/sh" "$here/minish.c"
python3 - "$w" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
w = sys.argv[1]
blobs = os.path.join(w, "image/blobs/sha256")
os.makedirs(blobs)
def put(b):
    d = hashlib.sha256(b).hexdigest()
    open(os.path.join(blobs, d), "wb").write(b)
    return "sha256:" + d
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as t:
    d = tarfile.TarInfo("bin"); d.type = tarfile.DIRTYPE; d.mode = 0o755; t.addfile(d)
    sh = open(os.path.join(w, "sh"), "rb").read()
    f = tarfile.TarInfo("bin/sh"); f.size = len(sh); f.mode = 0o755; t.addfile(f, io.BytesIO(sh))
layer = raw.getvalue()
gz = gzip.compress(layer, mtime=0)
config = json.dumps({"architecture": "amd64", "os": "linux",
    "config": {"Env": ["PATH=/bin"]},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}}).encode()
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(gz), "size": len(gz)}]}).encode()
m = put(manifest)
open(os.path.join(w, "image/index.json"), "w").write(json.dumps({"schemaVersion": 2, "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m, "size": len(manifest)}]}))
open(os.path.join(w, "image/oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
open(os.path.join(w, "manifest"), "w").write(m)
PY
manifest=$(cat "$w/manifest")
for name in lib app; do
    mkdir -p "$w/$name/src"
    echo "the $name source" > "$w/$name/src/msg.txt"
    cat > "$w/$name/spec.toml" <<SPEC
[package]
name = "$name"
version = "1"

[toolchain]
oci = "../image"
digest = "$manifest"

[[source]]
name = "src"
path = "src"

[build]
script = """
cat \$HERMIT_INPUTS /sources/src/msg.txt > \$out/msg
"""
SPEC
done
sed -i 's|\$HERMIT_INPUTS|/inputs/lib/msg|; s|> \$out/msg|> \$out/both|' "$w/app/spec.toml"
sed -i 's|\$HERMIT_INPUTS ||' "$w/lib/spec.toml"
printf '\n[inputs]\nlib = { spec = "../lib/spec.toml" }\n' >> "$w/app/spec.toml"
HERMIT_HOME="$w/home" "$hermit" export "$w/app/spec.toml" -o "$here/minish-v1.tar"
HERMIT_HOME="$w/home" "$hermit" verify "$here/minish-v1.tar"
