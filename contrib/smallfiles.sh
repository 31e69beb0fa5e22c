#!/usr/bin/env bash
# smallfiles.sh - metadata-heavy small-file workload for one directory.
#
# Usage: contrib/smallfiles.sh DIR
#
# Phases, each timed with wall-clock seconds and printed as "<phase> <s>":
#   create  NFILES files of 4 KiB spread over NDIRS directories, then sync
#   read    drop caches, then cat every file to /dev/null
#   delete  rm -rf of the whole tree, then sync
#   untar   extract a tarball of a synthetic source tree (NTARFILES files of
#           1-20 KiB, deterministic content) into DIR, then sync
#
# Environment:
#   NFILES=10000     number of 4 KiB files
#   NDIRS=100        number of directories they are spread over
#   NTARFILES=3000   files in the synthetic tarball
#   DROP_CACHES=auto drop the page cache before "read" (echo 3 >
#                    /proc/sys/vm/drop_caches): auto = if we can (root),
#                    1 = required, 0 = never (the caller handles it)
#   TARBALL_CACHE=/tmp  where the generated tarball is kept between runs
#   SMALLFILES_HOOK  a program run as "HOOK begin PHASE" right before and
#                    "HOOK end PHASE" right after each timed phase (outside
#                    the timing); a failure stops the script.  bench.sh
#                    uses it to measure the space a phase left on disk,
#                    fuse-requests.sh to mark the phases in a kernel trace.
#
# "sync" is the global sync(1): for a FUSE filesystem it is what also
# flushes the backing filesystem underneath, so every filesystem pays for
# getting its metadata to disk.  Files are written with bash builtins (no
# process per file) so that the numbers are dominated by the filesystem,
# not by fork/exec.  Everything is created under DIR/smallfiles.$$ and
# DIR/untar.$$, and removed again.

set -euo pipefail
export LC_ALL=C

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

[[ $# -eq 1 ]] || usage
[[ $1 != -h && $1 != --help ]] || usage
dir=$1
[[ -d $dir ]] || { echo "smallfiles.sh: $dir is not a directory" >&2; exit 1; }

nfiles=${NFILES:-10000}
ndirs=${NDIRS:-100}
ntarfiles=${NTARFILES:-3000}
drop=${DROP_CACHES:-auto}
tarcache=${TARBALL_CACHE:-/tmp}

for v in "$nfiles" "$ndirs" "$ntarfiles"; do
    [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "smallfiles.sh: bad count '$v'" >&2; exit 2; }
done

hook() {
    if [[ -n ${SMALLFILES_HOOK:-} ]]; then
        "$SMALLFILES_HOOK" "$@"
    fi
}

# Seconds since the epoch with microseconds, without forking.
now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

drop_caches() {
    case $drop in
        0) return 0 ;;
        1) sync; echo 3 > /proc/sys/vm/drop_caches ;;
        auto)
            sync
            if [[ -w /proc/sys/vm/drop_caches ]]; then
                echo 3 > /proc/sys/vm/drop_caches
            else
                echo "smallfiles.sh: cannot drop caches (not root); read is warm" >&2
            fi ;;
        *) echo "smallfiles.sh: DROP_CACHES must be auto, 0 or 1" >&2; exit 2 ;;
    esac
}

# Build (once) a deterministic tarball of a synthetic source tree: NTARFILES
# text files of 1-20 KiB in a few levels of directories.  The content comes
# from a fixed-seed Park-Miller generator written out in awk (not awk's
# rand(), which differs between mawk and gawk), so the tarball is the same
# on every machine.  It is cached and only rebuilt when missing.
tree_tmp=
make_tarball() {
    local tarball=$1 n=$2
    tree_tmp=$(mktemp -d "$tarcache/sealfs-tree.XXXXXX")
    (
        cd "$tree_tmp"
        awk -v n="$n" '
        function rnd(m) {   # uniform integer in [0, m)
            seed = (seed * 16807) % 2147483647
            return seed % m
        }
        BEGIN {
            seed = 20240601
            words = "fn let mut self impl struct enum match return if else " \
                    "for while loop break continue pub use mod crate super " \
                    "where trait type const static unsafe async await dyn"
            nw = split(words, w, " ")
            for (i = 0; i < n; i++) {
                d = sprintf("tree/crate%02d/src/mod%d", i % 40, int(i / 40) % 8)
                if (!(d in made)) { dirs = dirs " " d; made[d] = 1 }
            }
            if (system("mkdir -p" dirs) != 0) exit 1
            for (i = 0; i < n; i++) {
                d = sprintf("tree/crate%02d/src/mod%d", i % 40, int(i / 40) % 8)
                f = sprintf("%s/file%04d.rs", d, i)
                target = 1024 + rnd(19 * 1024)    # 1..20 KiB
                size = 0
                while (size < target) {
                    line = sprintf("// %s:%d", f, size)
                    k = 4 + rnd(10)
                    for (j = 0; j < k; j++) line = line " " w[1 + rnd(nw)]
                    print line > f
                    size += length(line) + 1
                }
                close(f)
            }
        }'
        tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
            -cf "$tarball.tmp.$$" tree
    )
    mv -f "$tarball.tmp.$$" "$tarball"
    rm -rf "$tree_tmp"
    tree_tmp=
}

base="$dir/smallfiles.$$"
untar="$dir/untar.$$"
cleanup() { rm -rf -- "$base" "$untar" ${tree_tmp:+"$tree_tmp"}; }
trap cleanup EXIT

tarball="$tarcache/sealfs-bench-tree-v1-$ntarfiles.tar"
[[ -s $tarball ]] || make_tarball "$tarball" "$ntarfiles"

# --- create -------------------------------------------------------------
mkdir "$base"
sync
hook begin create
t0=$(now)
for ((d = 0; d < ndirs; d++)); do
    mkdir "$base/d$d"
done
for ((i = 0; i < nfiles; i++)); do
    # 4095 characters plus newline = exactly 4096 bytes, unique per file.
    printf '%-4095s\n' "file $i of $nfiles" > "$base/d$((i % ndirs))/f$i"
done
sync
t1=$(now)
hook end create
echo "create $(elapsed "$t0" "$t1")"

# --- read ---------------------------------------------------------------
drop_caches
hook begin read
t0=$(now)
# find lists every directory; cat gets the files in large batches.
find "$base" -type f -exec cat -- {} + > /dev/null
t1=$(now)
hook end read
echo "read $(elapsed "$t0" "$t1")"

# --- delete -------------------------------------------------------------
sync
hook begin delete
t0=$(now)
rm -rf -- "$base"
sync
t1=$(now)
hook end delete
echo "delete $(elapsed "$t0" "$t1")"

# --- untar --------------------------------------------------------------
# Make sure the tarball itself comes from memory, so that only the writes
# into DIR are measured.
cat -- "$tarball" > /dev/null
mkdir "$untar"
sync
hook begin untar
t0=$(now)
tar -xf "$tarball" -C "$untar"
sync
t1=$(now)
hook end untar
echo "untar $(elapsed "$t0" "$t1")"
