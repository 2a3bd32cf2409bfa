#!/bin/sh
# Runs every benchmark against target/release/hermit; each prints its own ratios.
set -eu
cd "$(dirname "$0")/.."
for b in store unpack fetch normalize sandbox shell build cached graph bundle check; do
  echo "== benches/$b.sh"
  bash "benches/$b.sh"
done
