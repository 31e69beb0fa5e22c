#!/usr/bin/env bash
# space.sh - disk space a tree takes in each encrypted filesystem.
#
# Usage: contrib/space.sh TREE [FS...]
#
#   TREE  a directory to copy (for example /usr/share/doc, a real
#         documentation tree of a few thousand mostly small files)
#   FS    sealfs, gocryptfs, securefs (default: sealfs and the peers that
#         are installed); the plain scratch directory is always measured
#         as the plaintext reference
#
# For each filesystem a fresh volume is created in a scratch directory
# (/var/tmp/sealfs-space.XXXX, $BENCH_DIR instead of /var/tmp) and
# mounted with the program's default options; TREE is copied in with
# "cp -a", then sync and a statfs of the mount (sealfs finishes deferred
# work before it answers).  The cipher directory is measured with
# "du -sk --apparent-size" and "du -sk" (allocated blocks) before and
# after; the difference is what the tree costs, including per-directory
# files (gocryptfs.diriv) and logs (sealfs's audit log, shown apart).
# The same copy into a plain directory of the scratch filesystem (normally
# ext4) is the plaintext size the ratios divide by.
#
# Output: a markdown table on stdout; progress on stderr.  Every volume is
# unmounted and the scratch directory removed on exit.
# Environment: SEALFS_BIN (else cargo build --release), BENCH_DIR.

set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prog=space.sh
# shellcheck source=contrib/bench-lib.sh
. "$here/bench-lib.sh"

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
    exit "${1:-0}"
}

[[ $# -ge 1 ]] || usage 2
[[ $1 != -h && $1 != --help ]] || usage 0
tree=$(cd "$1" && pwd) || die "$1 is not a directory"
shift
fss=()
for arg in "$@"; do
    case $arg in
        sealfs) fss+=(sealfs) ;;
        gocryptfs|securefs)
            fs_installed "$arg" || die "$arg is not installed (apt-get install $arg)"
            fss+=("$arg") ;;
        *) echo "$prog: unknown filesystem '$arg'" >&2; usage 2 ;;
    esac
done
missing=()
if [[ ${#fss[@]} -eq 0 ]]; then
    fss=(sealfs)
    for peer in gocryptfs securefs; do
        if fs_installed "$peer"; then
            fss+=("$peer")
        else
            log "$peer is not installed; its row says n/a"
            missing+=("$peer")
        fi
    done
fi
fss=(plain "${fss[@]}")
command -v fusermount3 > /dev/null || die "fusermount3 is not installed (apt-get install fuse3)"
sealfs_bin=
if [[ " ${fss[*]} " == *" sealfs "* ]]; then
    find_sealfs
fi

parent=${BENCH_DIR:-/var/tmp}
scratch=$(mktemp -d "$parent/sealfs-space.XXXX")
[[ $scratch != *[[:space:]]* ]] || die "scratch path must not contain whitespace"
[[ $scratch/ != "$tree"/* ]] || die "the scratch directory must not be inside TREE"
logdir=$scratch/logs
mkdir -p "$logdir"
cleanup_hooks=()
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
passfile=$scratch/passfile
make_passfile

read -r src_app src_blk < <(du_kib "$tree")
nfiles=$(find "$tree" -type f | wc -l)
ndirs=$(find "$tree" -type d | wc -l)
nlinks=$(find "$tree" -type l | wc -l)
log "$tree: $nfiles files, $ndirs directories, $nlinks symlinks," \
    "$src_app KiB apparent, $src_blk KiB in blocks (on $(findmnt -n -o FSTYPE -T "$tree"))"

rows=$scratch/rows
: > "$rows"
for fs in "${fss[@]}"; do
    dir=$scratch/$fs
    mkdir -p "$dir"
    setup_fs "$fs" "$dir" || die "$fs: setup failed (log: $(tail -n 5 "$logdir/daemon.log" 2> /dev/null))"
    sync
    stat -f -- "$work" > /dev/null
    read -r a0 b0 < <(du_kib "$cipher")
    audit0=0
    [[ -d $cipher/sealfs.audit ]] && audit0=$(du -sk -- "$cipher/sealfs.audit" | cut -f1)
    log "$fs: copying $tree"
    run_bg cp -a -- "$tree" "$work/tree" || die "$fs: cp -a failed"
    sync
    stat -f -- "$work" > /dev/null
    read -r a1 b1 < <(du_kib "$cipher")
    audit=0
    [[ -d $cipher/sealfs.audit ]] && audit=$(( $(du -sk -- "$cipher/sealfs.audit" | cut -f1) - audit0 ))
    backing_files=$(find "$cipher" -type f | wc -l)
    echo "$fs $((a1 - a0)) $((b1 - b0)) $audit $backing_files" >> "$rows"
    log "$fs: +$((a1 - a0)) KiB apparent, +$((b1 - b0)) KiB in blocks"
    teardown_fs "$fs" "$dir"
done

python3 - "$rows" "$tree" "$nfiles" "$ndirs" "$nlinks" "$src_app" "$src_blk" "${missing[*]:-}" <<'EOF'
import sys
rows, tree, nfiles, ndirs, nlinks, src_app, src_blk = sys.argv[1:8]
missing = sys.argv[8].split()
data = {}
for line in open(rows):
    fs, app, blk, audit, nback = line.split()
    data[fs] = (int(app), int(blk), int(audit), int(nback))
p_app, p_blk = data["plain"][0], data["plain"][1]
print("Space of a copy of %s (%s files, %s directories, %s symlinks; "
      "%s KiB apparent, %s KiB in blocks where it lives):" %
      (tree, nfiles, ndirs, nlinks, src_app, src_blk))
print()
print("| filesystem | apparent (KiB) | blocks (KiB) | apparent / plaintext "
      "| blocks / plaintext | files in the cipher dir | of which audit log (KiB) |")
print("|---|---:|---:|---:|---:|---:|---:|")
for fs in ["plain", "sealfs", "gocryptfs", "securefs"]:
    if fs in missing:
        print("| %s | n/a | n/a | n/a | n/a | n/a | n/a |" % fs)
        continue
    if fs not in data:
        continue
    app, blk, audit, nback = data[fs]
    print("| %s | %d | %d | %.3f | %.3f | %d | %s |" % (
        "plaintext (plain dir)" if fs == "plain" else fs, app, blk,
        app / p_app, blk / p_blk, nback, audit if fs.startswith("sealfs") else "-"))
print()
print("KiB: growth of the cipher directory (du -sk --apparent-size, du -sk) "
      "from the empty volume to the copied tree, after sync and statfs.")
EOF
