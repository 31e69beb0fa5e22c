#!/usr/bin/env bash
# memwatch.sh - the daemon's resident memory over a long mixed workload.
#
# Usage: contrib/memwatch.sh [SECONDS]   (default 600; needs root, fio)
#
# Mounts a fresh volume (release build) under a temp dir and, until SECONDS
# have passed, loops: fio random read/write on 8 files (8 open files at once),
# a sequential 256 MiB write+read, 2000 small files created/read/deleted,
# a key rotation. Every 10 s it prints "<elapsed-s> <VmRSS-KiB> <VmHWM-KiB>
# <open-fds>" of the daemon; at the end the first and last minute's averages.
set -euo pipefail
secs=${1:-600}
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/target/release/sealfs
[[ -x $bin ]] || (cd "$here" && cargo build --release --quiet)
work=$(mktemp -d /var/tmp/sealfs-memwatch.XXXXXX)
cipher=$work/cipher mnt=$work/mnt
mkdir -p "$cipher" "$mnt"
printf 'memwatch-pass\n' >"$work/pass"
cleanup() {
    kill "${load_pid:-0}" 2>/dev/null || true
    wait 2>/dev/null || true
    "$bin" unmount "$mnt" 2>/dev/null || fusermount3 -u "$mnt" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
"$bin" init "$cipher" --passfile "$work/pass" >/dev/null
"$bin" mount "$cipher" "$mnt" --passfile "$work/pass" --ctl-socket "$work/ctl.sock" >/dev/null
pid=$(pgrep -n -f "sealfs mount $cipher") || { echo "no daemon" >&2; exit 1; }

load() {
    local end=$((SECONDS + secs))
    while ((SECONDS < end)); do
        fio --name=mix --directory="$mnt" --nrfiles=1 --numjobs=8 --size=32m \
            --rw=randrw --bs=4k --ioengine=psync --runtime=20 --time_based \
            --group_reporting --output=/dev/null
        dd if=/dev/zero of="$mnt/seq" bs=1M count=256 conv=fsync status=none
        dd if="$mnt/seq" of=/dev/null bs=1M status=none
        rm -f "$mnt/seq"
        mkdir -p "$mnt/small"
        for i in $(seq 2000); do printf '%04096d' "$i" >"$mnt/small/f$i"; done
        cat "$mnt"/small/* >/dev/null
        rm -rf "$mnt/small"
        "$bin" ctl --socket "$work/ctl.sock" rotate >/dev/null
    done
}
load &
load_pid=$!
start=$SECONDS
while kill -0 "$load_pid" 2>/dev/null; do
    rss=$(awk '/^VmRSS/{print $2}' /proc/"$pid"/status)
    hwm=$(awk '/^VmHWM/{print $2}' /proc/"$pid"/status)
    fds=$(ls /proc/"$pid"/fd | wc -l)
    echo "$((SECONDS - start)) $rss $hwm $fds"
    sleep 10
done
wait "$load_pid"
