#!/bin/sh
# The long fuzz run: the property/fuzz targets of `cargo test` (every test
# named fuzz_*), round after round with many more cases and fresh random
# seeds, for MINUTES minutes. Prints executions and failures per target.
#
#   sh scripts/fuzz.sh [MINUTES] [CASES_PER_ROUND]     (defaults: 20, 2000)
#
# Run it niced on a shared machine:  nice -n 19 sh scripts/fuzz.sh 30
# A failing case is saved by proptest in a proptest-regressions/ folder
# beside its test (see docs/fuzzing.md) and replayed by every later
# `cargo test`; the full output of each round is in target/fuzz/.
set -eu

minutes=${1:-20}
cases=${2:-2000}
cd "$(dirname "$0")/.."

out=${CARGO_TARGET_DIR:-target}/fuzz
mkdir -p "$out"
out=$(cd "$out" && pwd)
# absolute: each test binary runs in its own crate's folder
stats="$out/stats"
: >"$stats"

# name of a cargo test invocation that runs the fuzz targets of one crate
suites="store builder profiles"
run_suite() {
	case "$1" in
	store) cargo test --locked -q -p hermit-store --test fuzz -- fuzz_ ;;
	builder) cargo test --locked -q -p hermit --bin hermit -- fuzz_ ;;
	profiles) cargo test --locked -q -p hermit-profiles --lib -- fuzz_ ;;
	esac
}

echo "fuzz: building the tests"
for s in $suites; do
	case "$s" in
	store) cargo test --locked -q -p hermit-store --test fuzz --no-run ;;
	builder) cargo test --locked -q -p hermit --bin hermit --no-run ;;
	profiles) cargo test --locked -q -p hermit-profiles --lib --no-run ;;
	esac
done

start=$(date +%s)
end=$((start + minutes * 60))
round=0
failed_rounds=0
while [ "$(date +%s)" -lt "$end" ]; do
	round=$((round + 1))
	for s in $suites; do
		log="$out/round-$round-$s.log"
		if HERMIT_FUZZ_CASES=$cases HERMIT_FUZZ_STATS="$stats" run_suite "$s" >"$log" 2>&1; then
			rm -f "$log"
		else
			failed_rounds=$((failed_rounds + 1))
			echo "fuzz: round $round of $s FAILED, see $log"
		fi
		[ "$(date +%s)" -lt "$end" ] || break
	done
	echo "fuzz: round $round done after $(($(date +%s) - start)) s"
done

echo
echo "fuzz: $round rounds, $(($(date +%s) - start)) s, $cases cases per target per round"
printf '%-22s %12s %9s\n' target executions failures
awk '{ n[$1] += $2; f[$1] += $3 } END { for (t in n) printf "%-22s %12d %9d\n", t, n[t], f[t] }' "$stats" | sort
awk '{ n += $2; f += $3 } END { printf "%-22s %12d %9d\n", "total", n, f }' "$stats"
[ "$failed_rounds" -eq 0 ]
