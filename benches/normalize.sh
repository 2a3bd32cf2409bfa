#!/bin/sh
# Benchmark: normalising + serialising + hashing an output tree with
# `hermit output hash`, against GNU tar piped into sha256sum and into openssl
# (which uses SHA-NI where the CPU has it), on the same tree, in one run, on
# tmpfs.
#
#   benches/normalize.sh [HERMIT_BIN]
#
# HERMIT_BIN defaults to target/release/hermit (build it with
# `cargo build --release -p hermit`). Needs GNU tar, openssl and perl.
# Set BENCH_DIR to use another tmpfs than /dev/shm, BENCH_RUNS to change the
# number of timed rounds (default 7).
#
# The tree: 50,000 files, about 1 GiB, in nested directories (up to 4
# levels), mostly small files, some medium and a few large ones, 500
# executables and 85 symlinks. Contents are pseudo-random and fixed (seeded).
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
hermit=${1:-$here/target/release/hermit}
runs=${BENCH_RUNS:-7}
base=${BENCH_DIR:-/dev/shm}
[ -x "$hermit" ] || { echo "no hermit binary at $hermit; run: cargo build --release -p hermit" >&2; exit 2; }
for tool in tar openssl perl sha256sum; do
    command -v "$tool" >/dev/null || { echo "benches/normalize.sh needs $tool" >&2; exit 2; }
done
fs=$(stat -f -c %T "$base")
[ "$fs" = tmpfs ] || echo "warning: $base is $fs, not tmpfs; figures will include disk I/O" >&2

work=$(mktemp -d "$base/hermit-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
tree=$work/tree
mkdir "$tree"

echo "generating the tree in $tree ..." >&2
perl -e '
    use strict; use warnings;
    my ($root) = @ARGV;
    srand(20261122);
    # A 4 MiB pool of pseudo-random bytes; files are slices of it with a
    # unique prefix, so no two files are equal.
    my $pool = join("", map { pack("N", int(rand(4294967296))) } 1 .. (1 << 20));
    my @dirs = ("");
    for my $a (0 .. 19) {
        push @dirs, "d$a";
        for my $b (0 .. 4) {
            push @dirs, "d$a/e$b";
            for my $c (0 .. 2) {
                push @dirs, "d$a/e$b/f$c";
                push @dirs, "d$a/e$b/f$c/g" if $c == 0;
            }
        }
    }
    mkdir("$root/$_") for grep { $_ ne "" } @dirs;
    my $total = 0;
    for my $i (0 .. 49_999) {
        my $size;
        if ($i % 1000 == 7)   { $size = 3_000_000 + int(rand(8_000_000)); }   # 50 large
        elsif ($i % 10 == 3)  { $size = 16_384 + int(rand(180_000)); }        # ~5000 medium
        else                  { $size = int(rand(8192)); }                    # ~45000 small
        my $dir = $dirs[$i % @dirs];
        my $path = ($dir eq "" ? "" : "$dir/") . sprintf("file-%05d%s", $i, $i % 7 == 0 ? ".txt" : "");
        open(my $fh, ">", "$root/$path") or die "$path: $!";
        binmode $fh;
        my $head = "file $i\n";
        my $left = $size;
        print $fh substr($head, 0, $left) if $left > 0;
        $left -= length($head);
        my $off = ($i * 7919) % (length($pool) - 1);
        while ($left > 0) {
            my $n = length($pool) - $off;
            $n = $left if $n > $left;
            print $fh substr($pool, $off, $n);
            $left -= $n; $off = 0;
        }
        close $fh;
        chmod(0755, "$root/$path") if $i % 100 == 1;
        symlink(sprintf("file-%05d", $i), "$root/$path.link") if $i % 500 == 0 && $i % 7 != 0;
        $total += $size;
    }
    printf STDERR "%d files, %.2f GiB\n", 50_000, $total / (1 << 30);
' "$tree"
echo "tree: $(find "$tree" -type f | wc -l) files, $(find "$tree" -type l | wc -l) symlinks, $(find "$tree" -type d | wc -l) directories, $(du -sh "$tree" | cut -f1)" >&2
grep -qw sha_ni /proc/cpuinfo && echo "cpu has SHA-NI" >&2
echo "cores: $(nproc)" >&2

# Same digest twice (sanity) before timing.
d1=$("$hermit" output hash "$tree")
d2=$("$hermit" output hash --apply "$tree")
[ "$d1" = "$d2" ] || { echo "digest changed between runs: $d1 $d2" >&2; exit 1; }
echo "output digest: $d1" >&2

tarflags="--sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner"
# The machine may be shared, so the commands are timed interleaved, round
# after round (one warm-up round first), and medians are compared: a burst
# of load then hits every command alike. Wall-clock and CPU (user + system of
# the whole pipeline) are both reported.
perl -MTime::HiRes=time -e '
    use strict; use warnings;
    my ($runs, @cmds) = @ARGV;
    my @names = ("hermit output hash", "hermit output hash --apply", "tar | sha256sum", "tar | openssl");
    my (%wall, %cpu);
    for my $round (0 .. $runs) {
        for my $i (0 .. $#cmds) {
            my @t0 = times; my $w0 = time;
            system("sh", "-c", "$cmds[$i] >/dev/null") == 0 or die "failed: $cmds[$i]\n";
            my $w = time - $w0; my @t1 = times;
            next if $round == 0;    # warm-up
            push @{$wall{$names[$i]}}, $w;
            push @{$cpu{$names[$i]}}, ($t1[2] - $t0[2]) + ($t1[3] - $t0[3]);
        }
        printf STDERR "round %d/%d done\n", $round, $runs if $round;
    }
    sub median { my @s = sort { $a <=> $b } @_; @s % 2 ? $s[$#s / 2] : ($s[@s / 2 - 1] + $s[@s / 2]) / 2 }
    my (%mw, %mc);
    print "\nmedian of $runs interleaved runs     wall s    cpu s   (all wall: min..max)\n";
    for my $n (@names) {
        $mw{$n} = median(@{$wall{$n}}); $mc{$n} = median(@{$cpu{$n}});
        my @s = sort { $a <=> $b } @{$wall{$n}};
        printf "  %-32s %7.3f  %7.3f   (%.3f..%.3f)\n", $n, $mw{$n}, $mc{$n}, $s[0], $s[-1];
    }
    print "\nspeed relative to each peer (peer time / hermit time; >= 0.9 is the target):\n";
    for my $h (@names[0, 1]) {
        for my $p (@names[2, 3]) {
            printf "  %-28s vs %-16s wall %.2fx   cpu %.2fx\n", $h, $p, $mw{$p} / $mw{$h}, $mc{$p} / $mc{$h};
        }
    }
' "$runs" \
    "'$hermit' output hash '$tree'" \
    "'$hermit' output hash --apply '$tree'" \
    "tar $tarflags -cf - -C '$tree' . | sha256sum" \
    "tar $tarflags -cf - -C '$tree' . | openssl dgst -sha256"
