# Shared by the benchmark scripts: source it after setting NAME.
#   . "$(dirname "$0")/lib.sh"
# Makes the work directory $W on tmpfs (removed on exit) and defines the
# timing helpers.
W=$(mktemp -d "${BENCH_DIR:-/dev/shm}/hermit-bench-$NAME.XXXXXX")
cleanup() { chmod -R u+w "$W" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# time_cmd VAR CMD... : runs CMD (a command or function), appends its wall
# and CPU (user+sys, children included) seconds to $W/VAR.wall / $W/VAR.cpu
time_cmd() {
  local var=$1 t; shift
  t=$( { TIMEFORMAT='%3R %3U %3S'; time "$@" >/dev/null 2>"$W/stderr"; } 2>&1 ) || {
    cat "$W/stderr" >&2; exit 1; }
  echo "$t" | awk '{print $1}' >> "$W/$var.wall"
  echo "$t" | awk '{print $2 + $3}' >> "$W/$var.cpu"
}
# median FILE: the median of the numbers in $W/FILE, in ms
median() { sort -n "$W/$1" | awk '{a[NR]=$1*1000} END {printf "%d", (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v p="$1" -v h="$2" 'BEGIN {printf "%.2f", p/h}'; }
