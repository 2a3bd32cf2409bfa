#!/bin/sh
# One command from a fresh Debian 12 machine (as root) to a built, recorded
# example: installs system packages, builds hermit, builds examples/hello in
# the sandbox over a bootstrapped Debian toolchain, runs the result and shows
# the record.
#
# Only the install step needs root. As an ordinary user, after it:
#   target/release/hermit build examples/hello/spec.toml -o result
# works the same, in the user's own store (~/.local/share/hermit or
# $HERMIT_HOME); the Debian bootstrap then needs a subordinate id range for
# the user (usermod --add-subuids 100000-165535 --add-subgids 100000-165535 USER).
set -eu
cd "$(dirname "$0")/.."
sh scripts/install-deps.sh
cargo build --release --locked
HERMIT=./target/release/hermit
$HERMIT doctor
$HERMIT build examples/hello/spec.toml -o result
echo
echo "== running the output"
./result/usr/bin/hello
echo
echo "== the record (first lines; the whole file is beside the output)"
head -n 30 "$(dirname "$(readlink result)")/record.json"
echo
echo "== building again is a cache hit"
$HERMIT build examples/hello/spec.toml -o result
