#!/usr/bin/env bash
# bench.sh - benchmark sealfs against gocryptfs and the plain backing disk.
#
# Usage: contrib/bench.sh [--runs N] [--quick] [--only sealfs|gocryptfs]
#
#   --runs N      repeat every workload N times and report the median (3)
#   --quick       SIZE=256m, RUNTIME=5s, NFILES=2000 and 1 run (unless
#                 --runs is also given): a smoke test, not a measurement
#   --audit-off   also measure sealfs mounted with --no-audit (adds a
#                 column and an "audit on/off" ratio: the cost of the log)
#   --only FS     benchmark only FS (sealfs or gocryptfs); the plain
#                 backing directory is always measured as the reference
#   -h, --help    this text
#
# Filesystems: sealfs (built with "cargo build --release" from this
# repository, or $SEALFS_BIN if set), gocryptfs if it is installed, and the
# plain scratch directory (normally ext4) underneath both.  All three live
# on the same disk, in a scratch directory /var/tmp/sealfs-bench.XXXX
# ($BENCH_DIR instead of /var/tmp).  Each run makes a fresh volume with a
# passfile, mounts it, runs the fio jobs in contrib/fio/ and
# contrib/smallfiles.sh, and unmounts it.  Runs are interleaved (run 1:
# sealfs, gocryptfs, plain; run 2: ...) so that background noise hits every
# filesystem alike.  The page cache is dropped (sync; echo 3 >
# /proc/sys/vm/drop_caches) before each read workload, which needs root.
#
# Output: one markdown table on stdout with the median of the runs; progress
# goes to stderr.  Raw fio JSON, logs and every single result are kept in
# /var/tmp/sealfs-bench-results.DATE ($BENCH_RESULTS to choose).
#
# Environment overrides: SIZE (1g), RUNTIME (15s), NFILES (10000),
# NTARFILES (3000), FIO_TIMEOUT (1800 seconds per fio job), SEALFS_BIN,
# BENCH_DIR, BENCH_RESULTS.  Needs fio, python3, fusermount3 (fuse3).
#
# Everything that gets mounted is unmounted on exit (also on error or
# Ctrl-C), and any daemon still running on the scratch directory is
# killed, so no mount or daemon outlives the script.

set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
fiodir=$here/fio

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
    exit "${1:-0}"
}
die() { echo "bench.sh: $*" >&2; exit 1; }
log() { echo "bench.sh: $*" >&2; }

# --- arguments ---------------------------------------------------------------
runs=3
runs_given=0
quick=0
only=
audit_off=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --runs) [[ $# -ge 2 ]] || usage 2; runs=$2; runs_given=1; shift 2 ;;
        --runs=*) runs=${1#--runs=}; runs_given=1; shift ;;
        --quick) quick=1; shift ;;
        --audit-off) audit_off=1; shift ;;
        --only) [[ $# -ge 2 ]] || usage 2; only=$2; shift 2 ;;
        --only=*) only=${1#--only=}; shift ;;
        -h|--help) usage 0 ;;
        *) echo "bench.sh: unknown argument '$1'" >&2; usage 2 ;;
    esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs needs a positive integer"
case $only in
    ''|sealfs|gocryptfs|plain|ext4) ;;
    *) die "--only must be sealfs or gocryptfs" ;;
esac

if [[ $quick == 1 ]]; then
    export SIZE=${SIZE:-256m} RUNTIME=${RUNTIME:-5s} NFILES=${NFILES:-2000}
    [[ $runs_given == 1 ]] || runs=1
else
    export SIZE=${SIZE:-1g} RUNTIME=${RUNTIME:-15s} NFILES=${NFILES:-10000}
fi
export NTARFILES=${NTARFILES:-3000}
fio_timeout=${FIO_TIMEOUT:-1800}

# --- prerequisites -----------------------------------------------------------
for tool in fio python3 timeout; do
    command -v "$tool" > /dev/null || die "$tool is not installed"
done

fss=()
case $only in
    '')
        fss=(sealfs)
        if command -v gocryptfs > /dev/null; then
            fss+=(gocryptfs)
        else
            log "gocryptfs is not installed; measuring sealfs and the plain directory only"
        fi ;;
    sealfs) fss=(sealfs) ;;
    gocryptfs)
        command -v gocryptfs > /dev/null || die "gocryptfs is not installed (apt-get install gocryptfs)"
        fss=(gocryptfs) ;;
esac
if [[ $audit_off == 1 && " ${fss[*]} " == *" sealfs "* ]]; then
    fss=(sealfs sealfs-noaudit "${fss[@]:1}")
fi
fss+=(plain)
if [[ ${#fss[@]} -gt 1 ]]; then
    command -v fusermount3 > /dev/null || die "fusermount3 is not installed (apt-get install fuse3)"
fi

can_drop=1
if ! [[ -w /proc/sys/vm/drop_caches ]]; then
    can_drop=0
    log "WARNING: cannot write /proc/sys/vm/drop_caches (run as root); read numbers will be cache-warm"
fi

sealfs_bin=
if [[ " ${fss[*]} " == *" sealfs "* ]]; then
    if [[ -n ${SEALFS_BIN:-} ]]; then
        sealfs_bin=$SEALFS_BIN
    else
        log "building sealfs (cargo build --release)"
        (cd "$repo" && cargo build --release >&2) || die "cargo build --release failed"
        sealfs_bin=${CARGO_TARGET_DIR:-$repo/target}/release/sealfs
    fi
    [[ -x $sealfs_bin ]] || die "no sealfs binary at $sealfs_bin"
fi

# --- scratch space, results, cleanup -------------------------------------------
parent=${BENCH_DIR:-/var/tmp}
scratch=$(mktemp -d "$parent/sealfs-bench.XXXX")
[[ $scratch != *[[:space:]]* ]] || die "scratch path must not contain whitespace"
results=${BENCH_RESULTS:-$parent/sealfs-bench-results.$(date +%Y%m%d-%H%M%S)}
mkdir -p "$results"
tsv=$results/results.tsv
: > "$tsv"

declare -A mounted=()   # mountpoint -> filesystem name, while mounted

is_mounted() {  # MNT: listed in the mount table? (no stat, works on dead FUSE)
    awk -v m="$1" '$2 == m { found = 1 } END { exit !found }' /proc/self/mounts
}

# PIDs of processes other than this script whose command line mentions the
# scratch directory: the FUSE daemons we started (and any child of ours that
# an interrupt left behind).  The scratch path is unique to this run, so
# this never matches anything we did not start.
our_pids() {
    local p pid args
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        args=()
        mapfile -d '' args 2> /dev/null < "$p/cmdline" || continue
        [[ "${args[*]:-}" == *"$scratch/"* ]] && echo "$pid"
    done
    return 0
}

# Wait up to ~10 s for the daemons matching PATTERN to exit, then kill them.
reap_daemons() {
    local pattern=$1 pids=() pid i
    for ((i = 0; i < 50; i++)); do
        mapfile -t pids < <(our_pids)
        local left=()
        for pid in "${pids[@]}"; do
            local args=()
            mapfile -d '' args 2> /dev/null < "/proc/$pid/cmdline" || continue
            [[ "${args[*]:-}" == *"$pattern"* ]] && left+=("$pid")
        done
        [[ ${#left[@]} -eq 0 ]] && return 0
        if [[ $i -eq 25 ]]; then
            log "WARNING: daemon(s) ${left[*]} still running after unmount; sending SIGTERM"
            kill -TERM "${left[@]}" 2> /dev/null || true
        elif [[ $i -eq 49 ]]; then
            log "WARNING: killing daemon(s) ${left[*]}"
            kill -KILL "${left[@]}" 2> /dev/null || true
        fi
        sleep 0.2
    done
}

unmount_fs() {  # FS MNT
    local fs=$1 mnt=$2 i
    if is_mounted "$mnt"; then
        if [[ $fs == sealfs* ]]; then
            "$sealfs_bin" unmount "$mnt" >> "$results/daemon.log" 2>&1 </dev/null || true
        fi
        # fusermount3 fails with EBUSY while something still has a file
        # open in there; give it a few seconds.
        for ((i = 0; i < 20; i++)); do
            is_mounted "$mnt" || break
            fusermount3 -u "$mnt" >> "$results/daemon.log" 2>&1 || sleep 0.5
        done
        if is_mounted "$mnt"; then
            log "WARNING: $mnt is busy; detaching it lazily"
            fusermount3 -u -z "$mnt" >> "$results/daemon.log" 2>&1 || true
        fi
    fi
    unset 'mounted[$mnt]'
}

# Long-running steps run in the background and the script waits for them:
# a signal then interrupts "wait" at once and the INT/TERM trap runs right
# away.  (A foreground child that catches SIGINT itself, like fio, or that
# sits in its own process group, like timeout, would make bash skip the
# trap and carry on with the next job.)
child=
run_bg() {
    local rc=0
    "$@" &
    child=$!
    wait "$child" || rc=$?
    child=
    return "$rc"
}

cleanup() {
    local rc=$? mnt i
    set +e
    trap - EXIT INT TERM
    if [[ -n $child ]]; then
        # timeout(1) passes the signal on to the whole job it runs.
        kill -TERM "$child" 2> /dev/null
        for ((i = 0; i < 50; i++)); do
            kill -0 "$child" 2> /dev/null || break
            sleep 0.2
        done
        kill -KILL "$child" 2> /dev/null
        wait "$child" 2> /dev/null
    fi
    for mnt in "${!mounted[@]}"; do
        unmount_fs "${mounted[$mnt]}" "$mnt"
    done
    # Anything that still runs on our scratch dir is ours: stop it.
    reap_daemons "$scratch/"
    if grep -q -F " $scratch/" /proc/self/mounts; then
        log "WARNING: something is still mounted under $scratch; not deleting it"
    else
        rm -rf -- "$scratch"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

drop_caches() {
    sync
    if [[ $can_drop == 1 ]]; then
        echo 3 > /proc/sys/vm/drop_caches
    fi
}

# --- filesystems -------------------------------------------------------------
passfile=$scratch/passfile
(umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$passfile" && echo >> "$passfile")

# setup_fs FS DIR: create a volume in DIR and mount it; sets $work to the
# directory the workloads run in.  (Not called in a subshell, so that the
# mounted[] bookkeeping for the cleanup trap sticks.)
work=
setup_fs() {
    local fs=$1 dir=$2
    local cipher=$dir/cipher mnt=$dir/mnt dlog=$results/daemon.log
    case $fs in
        plain)
            mkdir -p "$dir/plain"
            work=$dir/plain
            return 0 ;;
        sealfs|sealfs-noaudit)
            mkdir -p "$cipher" "$mnt"
            echo "== $fs init/mount $cipher" >> "$dlog"
            "$sealfs_bin" init "$cipher" --passfile "$passfile" >> "$dlog" 2>&1 </dev/null ||
                { log "sealfs init failed (see $dlog)"; return 1; }
            mounted[$mnt]=$fs
            local extra=()
            [[ $fs == sealfs-noaudit ]] && extra=(--no-audit)
            "$sealfs_bin" mount "$cipher" "$mnt" --passfile "$passfile" "${extra[@]}" >> "$dlog" 2>&1 </dev/null ||
                { log "sealfs mount failed (see $dlog)"; return 1; } ;;
        gocryptfs)
            mkdir -p "$cipher" "$mnt"
            echo "== $fs init/mount $cipher" >> "$dlog"
            gocryptfs -init -passfile "$passfile" -q "$cipher" >> "$dlog" 2>&1 </dev/null ||
                { log "gocryptfs -init failed (see $dlog)"; return 1; }
            mounted[$mnt]=$fs
            gocryptfs -passfile "$passfile" -q "$cipher" "$mnt" >> "$dlog" 2>&1 </dev/null ||
                { log "gocryptfs mount failed (see $dlog)"; return 1; } ;;
    esac
    local i
    for ((i = 0; i < 50; i++)); do
        is_mounted "$mnt" && { work=$mnt; return 0; }
        sleep 0.2
    done
    log "$fs: $mnt did not show up in /proc/self/mounts"
    return 1
}

teardown_fs() {  # FS DIR
    local fs=$1 dir=$2
    if [[ $fs != plain ]]; then
        unmount_fs "$fs" "$dir/mnt"
        reap_daemons "$dir/"
    fi
    if grep -q -F " $dir/" /proc/self/mounts; then
        die "$dir/mnt is still mounted"
    fi
    rm -rf -- "$dir"
}

# --- measuring -----------------------------------------------------------------
# Workloads, in table order: name, unit, how to read the fio JSON.
workloads=(seq-write seq-read randread-4k randread-4k-qd16 randwrite-4k
           mixed-randrw parallel-2jobs verify create read delete untar)

record() {  # RUN FS WORKLOAD VALUE
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$tsv"
}

# fio_value JSON METRIC: print one number from fio's JSON output.
#   write_mib / read_mib: bandwidth summed over jobs, MiB/s
#   write_iops / read_iops: IOPS summed over jobs
#   rw_iops: read plus write IOPS summed over jobs
#   verify: 1 if every job finished without error, else 0
fio_value() {
    python3 - "$1" "$2" <<'EOF'
import json, sys
path, metric = sys.argv[1], sys.argv[2]
text = open(path).read()
data = json.loads(text[text.index("{"):])   # skip any notes before the JSON
jobs = data["jobs"]
if metric == "verify":
    print(1 if jobs and all(j["error"] == 0 for j in jobs) else 0)
else:
    ddir, kind = metric.split("_")
    if ddir == "rw":
        print("%.0f" % sum(j["read"]["iops"] + j["write"]["iops"] for j in jobs))
    elif kind == "mib":
        print("%.1f" % (sum(j[ddir]["bw_bytes"] for j in jobs) / 1048576.0))
    else:
        print("%.0f" % sum(j[ddir]["iops"] for j in jobs))
EOF
}

# run_fio RUN FS DIR JOB METRIC [extra fio args]: run one job file, record it.
run_fio() {
    local run=$1 fs=$2 dir=$3 job=$4 metric=$5
    shift 5
    local out=$results/run$run/$fs/$job.json value
    mkdir -p "${out%/*}"
    if run_bg timeout -k 30 "$fio_timeout" fio --directory="$dir" --output-format=json \
            --output="$out" "$@" "$fiodir/$job.fio" \
            >> "$results/run$run/$fs/fio.log" 2>&1 </dev/null &&
            value=$(fio_value "$out" "$metric"); then
        :
    elif [[ $metric == verify ]]; then
        value=0
    else
        value=NA
    fi
    if [[ $metric == verify ]]; then
        log "  $job: $([[ $value == 1 ]] && echo ok || echo FAILED)"
    else
        case $metric in
            *_mib) log "  $job: $value MiB/s" ;;
            *) log "  $job: $value IOPS" ;;
        esac
    fi
    record "$run" "$fs" "$job" "$value"
}

bench_one() {  # RUN FS
    local run=$1 fs=$2 w
    local dir=$scratch/run$run-$fs
    log "run $run/$runs: $fs"
    mkdir -p "$dir" "$results/run$run/$fs"
    if ! setup_fs "$fs" "$dir"; then
        for w in "${workloads[@]}"; do record "$run" "$fs" "$w" NA; done
        teardown_fs "$fs" "$dir"
        return 0
    fi

    drop_caches
    run_fio "$run" "$fs" "$work" seq-write write_mib
    drop_caches
    run_fio "$run" "$fs" "$work" seq-read read_mib
    rm -f -- "$work/seqfile"

    # Lay out the random-I/O file outside the measurement, then read cold.
    run_bg timeout -k 30 "$fio_timeout" fio --directory="$work" --create_only=1 \
        --output="$results/run$run/$fs/layout.log" "$fiodir/randread-4k.fio" \
        >> "$results/run$run/$fs/fio.log" 2>&1 </dev/null || true
    drop_caches
    run_fio "$run" "$fs" "$work" randread-4k read_iops
    drop_caches
    run_fio "$run" "$fs" "$work" randread-4k-qd16 read_iops
    sync
    run_fio "$run" "$fs" "$work" randwrite-4k write_iops
    rm -f -- "$work/randfile"

    sync
    run_fio "$run" "$fs" "$work" mixed-randrw rw_iops
    rm -f -- "$work"/mixed-randrw.*

    sync
    run_fio "$run" "$fs" "$work" parallel-2jobs write_mib
    rm -f -- "$work"/parallel-2jobs.*
    sync
    run_fio "$run" "$fs" "$work" verify verify
    rm -f -- "$work"/verify-*

    local phase secs seen=()
    local sflog=$results/run$run/$fs/smallfiles.log
    if DROP_CACHES=$can_drop run_bg timeout -k 30 "$fio_timeout" \
            "$here/smallfiles.sh" "$work" > "$sflog" 2>&1 </dev/null; then
        :
    else
        log "  smallfiles.sh failed (see $sflog)"
    fi
    while read -r phase secs; do
        case $phase in
            create|read|delete|untar)
                log "  smallfiles $phase: $secs s"
                record "$run" "$fs" "$phase" "$secs"
                seen+=("$phase") ;;
        esac
    done < "$sflog"
    for w in create read delete untar; do
        [[ " ${seen[*]:-} " == *" $w "* ]] || record "$run" "$fs" "$w" NA
    done

    teardown_fs "$fs" "$dir"
}

plain_type=$(findmnt -n -o FSTYPE -T "$scratch" 2> /dev/null || echo plain)
{
    echo "sealfs bench $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "kernel $(uname -r), $(nproc) CPUs, scratch $scratch ($plain_type)"
    fio --version
    command -v gocryptfs > /dev/null && gocryptfs -version
    [[ -n $sealfs_bin ]] && echo "sealfs $(git -C "$repo" rev-parse --short HEAD 2> /dev/null || echo '?') $sealfs_bin"
    echo "SIZE=$SIZE RUNTIME=$RUNTIME NFILES=$NFILES NTARFILES=$NTARFILES runs=$runs"
} > "$results/environment.txt" 2>&1
log "results and logs: $results"
log "SIZE=$SIZE RUNTIME=$RUNTIME NFILES=$NFILES runs=$runs, filesystems: ${fss[*]}"

for ((run = 1; run <= runs; run++)); do
    for fs in "${fss[@]}"; do
        bench_one "$run" "$fs"
    done
done

# --- report --------------------------------------------------------------------
python3 - "$tsv" "$plain_type" "$runs" <<'EOF' | tee "$results/table.md"
import statistics, sys
from collections import defaultdict

tsv, plain_name, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
vals = defaultdict(list)
present = set()
for line in open(tsv):
    run, fs, work, value = line.rstrip("\n").split("\t")
    present.add(fs)
    if value != "NA":
        vals[fs, work].append(float(value))

# name, label, kind: "hi" = higher is better, "lo" = seconds, "ok" = pass/fail
rows = [
    ("seq-write", "seq write 1M (MiB/s)", "hi"),
    ("seq-read", "seq read 1M, cold (MiB/s)", "hi"),
    ("randread-4k", "rand read 4k qd1 (IOPS)", "hi"),
    ("randread-4k-qd16", "rand read 4k qd16 libaio (IOPS)", "hi"),
    ("randwrite-4k", "rand write 4k + fsync (IOPS)", "hi"),
    ("mixed-randrw", "mixed 70/30 rand r/w 4k, 2 jobs (IOPS)", "hi"),
    ("parallel-2jobs", "2 seq writers 1M (MiB/s)", "hi"),
    ("verify", "fio verify crc32c", "ok"),
    ("create", "small files: create (s)", "lo"),
    ("read", "small files: read, cold (s)", "lo"),
    ("delete", "small files: delete (s)", "lo"),
    ("untar", "untar source tree (s)", "lo"),
]
audit_cmp = "sealfs-noaudit" in present
cols = ["sealfs"] + (["sealfs-noaudit"] if audit_cmp else []) + ["gocryptfs", "plain"]

def median(fs, work):
    v = vals.get((fs, work))
    return statistics.median(v) if v else None

def cell(fs, work, kind):
    if fs not in present:
        return "-"
    if kind == "ok":
        v = vals.get((fs, work))
        if not v:
            return "ERR"
        return "ok" if all(x == 1 for x in v) else "FAIL"
    m = median(fs, work)
    if m is None:
        return "ERR"
    if kind == "lo":
        return "%.2f" % m
    return "%.1f" % m if m < 100 else "%.0f" % m

head = ["workload"] + [("sealfs --no-audit" if c == "sealfs-noaudit" else
                         plain_name if c == "plain" else c) for c in cols]
head += ["sealfs/gocryptfs"] + (["audit on/off"] if audit_cmp else [])
print("| " + " | ".join(head) + " |")
print("|---|" + "---:|" * (len(head) - 1))

def ratio(a, b, kind):
    # > 1 always means a is faster
    if kind == "ok" or not a or not b:
        return "-"
    return "%.2f" % (a / b if kind == "hi" else b / a)

for work, label, kind in rows:
    extra = [ratio(median("sealfs", work), median("gocryptfs", work), kind)]
    if audit_cmp:
        extra.append(ratio(median("sealfs", work), median("sealfs-noaudit", work), kind))
    print("| %s | %s |" % (label, " | ".join(
        [cell(fs, work, kind) for fs in cols] + extra)))
print()
print("Median of %d run%s; throughput and IOPS: higher is better; "
      "seconds: lower is better; ratio > 1 means sealfs is faster."
      % (runs, "" if runs == 1 else "s"))
EOF
log "done; raw results in $results"
