#!/usr/bin/env bash
# Runs pjdfstest (as root) on a sealfs mount, a plain ext4 directory and a
# gocryptfs mount with the same configuration, and prints each summary:
#   bash contrib/pjdfstest.sh [SEALFS_BINARY]
# The counts are quoted in the README; SEALFS_PJDFSTEST_OUT=DIR keeps each
# filesystem's full output there (DIR/sealfs.out, …). Needs pjdfstest, gocryptfs and the
# `tests` user (contrib/setup.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../target/debug/sealfs}"
conf="$here/pjdfstest.toml"
pjd="$(command -v pjdfstest || echo "${CARGO_HOME:-$HOME/.cargo}/bin/pjdfstest")"
work="$(mktemp -d /var/tmp/pjdfstest.XXXXXX)"
chmod 755 "$work"
cleanup() {
    fusermount3 -u "$work/sealfs.mnt" 2>/dev/null || true
    fusermount3 -u "$work/gocryptfs.mnt" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/ext4" "$work/sealfs.mnt" "$work/gocryptfs" "$work/gocryptfs.mnt"
chmod 755 "$work/ext4"
echo pw > "$work/pass"
"$bin" init "$work/sealfs" --passfile "$work/pass" --kdf-memory-kib 8192 --kdf-iterations 1 >/dev/null
"$bin" mount "$work/sealfs" "$work/sealfs.mnt" --passfile "$work/pass" -o allow_other >/dev/null
# Other users reach a sealfs mount only through grants (tests/pjdfstest.rs
# gives the same): every operation on the whole volume; modes still apply.
for user in nobody tests; do
    "$bin" ctl --mount "$work/sealfs.mnt" grant create --grantee "uid:$(id -u "$user")" \
        --ops all --path-prefix / >/dev/null
done
gocryptfs -q -init -extpass 'echo pw' -scryptn 10 "$work/gocryptfs" 2>/dev/null
gocryptfs -q -extpass 'echo pw' -allow_other "$work/gocryptfs" "$work/gocryptfs.mnt" 2>/dev/null
for fs in sealfs ext4 gocryptfs; do
    dir="$work/$fs"
    [ "$fs" = ext4 ] || dir="$work/$fs.mnt"
    printf '%-10s ' "$fs"
    # /dev/shm: a path on another filesystem, for the EXDEV cases.
    NO_COLOR=1 "$pjd" -c "$conf" -p "$dir" -s /dev/shm 2>/dev/null >"$work/$fs.out" || true
    grep '^Summary' "$work/$fs.out" || true
    if [ -n "${SEALFS_PJDFSTEST_OUT:-}" ]; then
        mkdir -p "$SEALFS_PJDFSTEST_OUT" && cp "$work/$fs.out" "$SEALFS_PJDFSTEST_OUT/$fs.out"
    fi
done
