#!/usr/bin/env bash
# diskreads.sh - disk reads per cold 4 KiB random read (fio randread-4k,
# queue depth 1), for sealfs, gocryptfs or the plain directory.
#
# Usage: contrib/diskreads.sh sealfs|gocryptfs|ext4 [DEVICE]
#
# Lays out a 256 MiB file, drops the page cache, runs
# contrib/fio/randread-4k.fio for 8 s and divides the reads the backing
# DEVICE completed (/proc/diskstats; default: the device under /var/tmp)
# by the reads fio made. 1.0 = one disk read per read (ext4, whose fio
# reads run without readahead); sealfs's backing reads get the kernel's
# readahead, so neighbours of a read may already be cached later. The
# device count includes every other process's reads: on a shared machine
# read the daemon's own figure (sealfs and gocryptfs: "daemon_kib_per_read",
# the KiB /proc/PID/io says the daemon made the disk read, readahead and
# prefetch included).
# SEALFS_BIN (default: target/release/sealfs), BENCH_DIR (/var/tmp).
# Needs root (drop_caches), fio, python3, fusermount3.

set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fs=${1:?usage: diskreads.sh sealfs|gocryptfs|ext4 [DEVICE]}
parent=${BENCH_DIR:-/var/tmp}
dev=${2:-$(basename "$(df --output=source "$parent" | tail -1)")}
bin=${SEALFS_BIN:-$here/../target/release/sealfs}
d=$(mktemp -d "$parent/diskreads.XXXX")
m=$d/m
cleanup() {
    if [[ $m != "$d/c" ]] && mountpoint -q "$m"; then
        fusermount3 -u "$m"
        sleep 1 # the daemon writes its last audit record as it exits
    fi
    rm -rf -- "$d"
}
trap cleanup EXIT
mkdir -p "$d/c" "$m"; echo pw > "$d/p"
case $fs in
    ext4) m=$d/c ;;
    gocryptfs) gocryptfs -init -q -passfile "$d/p" -scryptn 10 "$d/c" > /dev/null
               gocryptfs -q -passfile "$d/p" "$d/c" "$m" ;;
    sealfs) "$bin" init "$d/c" --passfile "$d/p" --kdf-memory-kib 8192 --kdf-iterations 1 > /dev/null
            "$bin" mount "$d/c" "$m" --passfile "$d/p" > /dev/null ;;
    *) echo "diskreads.sh: unknown filesystem $fs" >&2; exit 2 ;;
esac
fio --name=lay --directory="$m" --filename=randfile --size=256m --rw=write --bs=1m > /dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
reads() { awk -v d="$dev" '$3 == d { print $4 }' /proc/diskstats; }
daemon=$(pgrep -f -- "$d/c" | head -1 || true)
dio() { if [[ -n $daemon ]]; then awk '$1 == "read_bytes:" { print $2 }' "/proc/$daemon/io"; else echo 0; fi; }
r0=$(reads); b0=$(dio)
res=$(RUNTIME=8s fio --directory="$m" "$here/fio/randread-4k.fio" --output-format=json |
      python3 -c 'import json,sys; r=json.load(sys.stdin)["jobs"][0]["read"]; print(int(r["iops"]), r["total_ios"])')
r1=$(reads); b1=$(dio)
read -r iops ios <<< "$res"
echo "$fs iops=$iops reads=$ios disk_reads=$((r1 - r0)) per_read=$(python3 -c "print(round(($r1 - $r0) / $ios, 2))") daemon_kib_per_read=$(python3 -c "print(round(($b1 - $b0) / 1024 / $ios, 2))") load=$(cut -d' ' -f1 /proc/loadavg)"
