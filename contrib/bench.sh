#!/usr/bin/env bash
# bench.sh - benchmark sealfs against gocryptfs, securefs and the plain disk.
#
# Usage: contrib/bench.sh [--runs N] [--quick] [--audit-off] [--shared] [--requests]
#                         [--only sealfs|gocryptfs|securefs]
#
#   --runs N      repeat every workload N times and report the median (3)
#   --quick       SIZE=256m, RUNTIME=5s, NFILES=2000 and 1 run (unless
#                 --runs is also given): a smoke test, not a measurement
#   --audit-off   also measure sealfs mounted with --no-audit (adds a
#                 column and an "audit on/off" ratio: the cost of the log)
#   --shared      also measure sealfs mounted with --shared-storage (one
#                 daemon; adds a column and a "default/shared" ratio:
#                 what close-to-open consistency costs, no writeback
#                 cache and entries cached at most the refresh period)
#   --requests    after the timed runs, count the FUSE requests (per
#                 opcode) and daemon syscalls per file of the small-file
#                 workload with contrib/fuse-requests.sh, in separate,
#                 untimed volumes (tracing perturbs timings, so counts and
#                 timings never come from the same run)
#   --only FS     benchmark only FS (sealfs, gocryptfs or securefs); the
#                 plain backing directory is always measured as the
#                 reference
#   -h, --help    this text
#
# Filesystems: sealfs (built with "cargo build --release" from this
# repository, or $SEALFS_BIN if set), gocryptfs and securefs (lite format)
# when installed (apt packages gocryptfs and securefs; a column says "n/a"
# otherwise), and the plain scratch directory (normally ext4) underneath
# them.  All live on the same disk, in a scratch directory
# /var/tmp/sealfs-bench.XXXX ($BENCH_DIR instead of /var/tmp).  Each run
# makes a fresh volume with a passfile, mounts it with the program's
# default options, runs the fio jobs in contrib/fio/ and
# contrib/smallfiles.sh, and unmounts it.  Runs are interleaved (run 1:
# sealfs, gocryptfs, securefs, plain; run 2: ...) so that background noise
# hits every filesystem alike.  The page cache is dropped (sync; echo 3 >
# /proc/sys/vm/drop_caches) before each read workload, which needs root.
#
# Space: right before and after the small-file create phase and the untar
# phase, "du -sk --apparent-size" and "du -sk" (allocated blocks) of the
# cipher directory (of the plain directory for the plain disk, after a
# statfs so that deferred deletes are done); the difference is what the
# tree costs on disk, audit log and per-directory files included.
#
# Output: one markdown table on stdout with the median of the runs (plus a
# table of the space against the plaintext, and with --requests the
# request counts); progress goes to stderr.  Columns: each filesystem,
# the best peer of the row (the faster or smaller of gocryptfs and
# securefs, by the row's direction), sealfs/best peer and sealfs/plain;
# a ratio > 1 always means sealfs is better.  Raw fio JSON, logs and every
# single result are kept in /var/tmp/sealfs-bench-results.DATE
# ($BENCH_RESULTS to choose).
#
# Environment overrides: SIZE (1g), RUNTIME (15s), NFILES (10000),
# NTARFILES (3000), FIO_TIMEOUT (1800 seconds per fio job), SEALFS_BIN,
# BENCH_DIR, BENCH_RESULTS; RANDSIZE and VERIFYSIZE replace the fixed
# sizes of the random-I/O files (256m) and of the verify files (64m) in
# copies of the job files (for smoke tests); REQUESTS_NFILES (2000) is the
# NFILES of --requests.  Needs fio, python3, fusermount3 (fuse3).
#
# Everything that gets mounted is unmounted on exit (also on error or
# Ctrl-C), and any daemon still running on the scratch directory is
# killed, so no mount or daemon outlives the script.

set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fiodir=$here/fio
prog=bench.sh
# shellcheck source=contrib/bench-lib.sh
. "$here/bench-lib.sh"

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
    exit "${1:-0}"
}

# --- arguments ---------------------------------------------------------------
runs=3
runs_given=0
quick=0
only=
audit_off=0
shared=0
requests=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --runs) [[ $# -ge 2 ]] || usage 2; runs=$2; runs_given=1; shift 2 ;;
        --runs=*) runs=${1#--runs=}; runs_given=1; shift ;;
        --quick) quick=1; shift ;;
        --audit-off) audit_off=1; shift ;;
        --shared) shared=1; shift ;;
        --requests) requests=1; shift ;;
        --only) [[ $# -ge 2 ]] || usage 2; only=$2; shift 2 ;;
        --only=*) only=${1#--only=}; shift ;;
        -h|--help) usage 0 ;;
        *) echo "bench.sh: unknown argument '$1'" >&2; usage 2 ;;
    esac
done
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs needs a positive integer"
case $only in
    ''|sealfs|gocryptfs|securefs|plain|ext4) ;;
    *) die "--only must be sealfs, gocryptfs or securefs" ;;
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
        for peer in gocryptfs securefs; do
            if fs_installed "$peer"; then
                fss+=("$peer")
            else
                log "$peer is not installed (apt-get install $peer); its column says n/a"
            fi
        done ;;
    sealfs) fss=(sealfs) ;;
    gocryptfs|securefs)
        fs_installed "$only" || die "$only is not installed (apt-get install $only)"
        fss=("$only") ;;
esac
if [[ $audit_off == 1 && " ${fss[*]} " == *" sealfs "* ]]; then
    fss=(sealfs sealfs-noaudit "${fss[@]:1}")
fi
if [[ $shared == 1 && " ${fss[*]} " == *" sealfs "* ]]; then
    fss=(sealfs sealfs-shared "${fss[@]:1}")
fi
fss+=(plain)
if [[ ${#fss[@]} -gt 1 ]]; then
    command -v fusermount3 > /dev/null || die "fusermount3 is not installed (apt-get install fuse3)"
fi

if [[ $can_drop == 0 ]]; then
    log "WARNING: cannot write /proc/sys/vm/drop_caches (run as root); read numbers will be cache-warm"
fi

sealfs_bin=
if [[ " ${fss[*]} " == *" sealfs "* ]]; then
    find_sealfs
fi

# --- scratch space, results, cleanup -------------------------------------------
parent=${BENCH_DIR:-/var/tmp}
scratch=$(mktemp -d "$parent/sealfs-bench.XXXX")
[[ $scratch != *[[:space:]]* ]] || die "scratch path must not contain whitespace"
results=${BENCH_RESULTS:-$parent/sealfs-bench-results.$(date +%Y%m%d-%H%M%S)}
mkdir -p "$results"
logdir=$results
tsv=$results/results.tsv
: > "$tsv"
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

passfile=$scratch/passfile
make_passfile

# Smaller fixed-size files for smoke tests: edited copies of the job files.
if [[ -n ${RANDSIZE:-} || -n ${VERIFYSIZE:-} ]]; then
    mkdir "$scratch/fio"
    for job in "$fiodir"/*.fio; do
        sed -e "s/^size=256m\$/size=${RANDSIZE:-256m}/" \
            -e "s/^size=64m\$/size=${VERIFYSIZE:-64m}/" "$job" > "$scratch/fio/${job##*/}"
    done
    fiodir=$scratch/fio
fi

# The SMALLFILES_HOOK of the timed runs: before and after the create and
# untar phases, "PHASE begin|end APPARENT BLOCKS" (KiB) of $SPACE_DIR into
# $SPACE_OUT, after a statfs of $SPACE_MNT (sealfs frees unlinked files in
# the background and makes statfs wait for that).
space_hook=$scratch/space-hook
cat > "$space_hook" <<'EOF'
#!/usr/bin/env bash
set -euo pipefail
case $2 in create|untar) ;; *) exit 0 ;; esac
stat -f -- "$SPACE_MNT" > /dev/null
printf '%s %s %s %s\n' "$2" "$1" \
    "$(du -sk --apparent-size -- "$SPACE_DIR" | cut -f1)" \
    "$(du -sk -- "$SPACE_DIR" | cut -f1)" >> "$SPACE_OUT"
EOF
chmod +x "$space_hook"

# --- measuring -----------------------------------------------------------------
# Workloads, in table order: name, unit, how to read the fio JSON.
workloads=(seq-write seq-read randread-4k randread-4k-qd16 randwrite-4k
           mixed-randrw parallel-2jobs verify create read delete untar
           space-small-app space-small-blk space-untar-app space-untar-blk)

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
    local spacelog=$results/run$run/$fs/space.txt
    : > "$spacelog"
    if DROP_CACHES=$can_drop SMALLFILES_HOOK=$space_hook SPACE_MNT=$work \
            SPACE_DIR=$cipher SPACE_OUT=$spacelog run_bg timeout -k 30 "$fio_timeout" \
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

    # Space: what each phase added to the cipher (or plain) directory.
    local short app blk
    for phase in create untar; do
        short=$phase
        [[ $phase == create ]] && short=small
        read -r app blk < <(awk -v p="$phase" '
            $1 == p && $2 == "begin" { a0 = $3; b0 = $4; got++ }
            $1 == p && $2 == "end" { a1 = $3; b1 = $4; got++ }
            END { if (got == 2) print a1 - a0, b1 - b0; else print "NA NA" }' "$spacelog")
        log "  space after $phase: apparent $app KiB, blocks $blk KiB"
        record "$run" "$fs" "space-$short-app" "$app"
        record "$run" "$fs" "space-$short-blk" "$blk"
    done

    teardown_fs "$fs" "$dir"
}

plain_type=$(findmnt -n -o FSTYPE -T "$scratch" 2> /dev/null || echo plain)
# Peers that this machine lacks: their column says n/a.
missing=()
for peer in gocryptfs securefs; do
    fs_installed "$peer" || missing+=("$peer")
done
{
    echo "sealfs bench $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "kernel $(uname -r), $(nproc) CPUs, scratch $scratch ($plain_type)"
    fio --version
    for fs in "${fss[@]}"; do
        fs_version "$fs"
    done
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
python3 - "$tsv" "$plain_type" "$runs" "${missing[*]:-}" <<'EOF' | tee "$results/table.md"
import statistics, sys
from collections import defaultdict

tsv, plain_name, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
missing = set(sys.argv[4].split())
vals = defaultdict(list)
present = set()
for line in open(tsv):
    run, fs, work, value = line.rstrip("\n").split("\t")
    present.add(fs)
    if value != "NA":
        vals[fs, work].append(float(value))

# name, label, kind: "hi" = higher is better, "lo" = seconds or KiB,
# "ok" = pass/fail
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
    ("space-small-app", "space, small files: apparent (KiB)", "lo"),
    ("space-small-blk", "space, small files: blocks (KiB)", "lo"),
    ("space-untar-app", "space, untar tree: apparent (KiB)", "lo"),
    ("space-untar-blk", "space, untar tree: blocks (KiB)", "lo"),
]
direction = {"hi": "higher", "lo": "lower", "ok": "-"}
peers = ["gocryptfs", "securefs"]
audit_cmp = "sealfs-noaudit" in present
shared_cmp = "sealfs-shared" in present
cols = (["sealfs"] + (["sealfs-noaudit"] if audit_cmp else [])
        + (["sealfs-shared"] if shared_cmp else []) + peers + ["plain"])
names = {"sealfs-noaudit": "sealfs --no-audit",
         "sealfs-shared": "sealfs --shared-storage"}

def median(fs, work):
    v = vals.get((fs, work))
    return statistics.median(v) if v else None

def fmt(m, kind, work):
    if work.startswith("space-"):
        return "%.0f" % m
    if kind == "lo":
        return "%.2f" % m
    return "%.1f" % m if m < 100 else "%.0f" % m

def cell(fs, work, kind):
    if fs in missing:
        return "n/a"
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
    return fmt(m, kind, work)

def ratio(a, b, kind):
    # > 1 always means a is better (faster, or smaller on disk)
    if kind == "ok" or not a or not b:
        return "-"
    return "%.2f" % (a / b if kind == "hi" else b / a)

def best_peer(work, kind):
    best = None
    for p in peers:
        m = median(p, work)
        if m is None or kind == "ok" or (m == 0 and kind == "hi"):
            continue
        if best is None or (m > best[1] if kind == "hi" else m < best[1]):
            best = (p, m)
    return best

head = ["workload", "better"] + [
    (plain_name if c == "plain" else names.get(c, c)) for c in cols]
head += ["best peer", "sealfs/best peer", "sealfs/%s" % plain_name]
head += ["audit on/off"] if audit_cmp else []
head += ["default/shared"] if shared_cmp else []
print("| " + " | ".join(head) + " |")
print("|---|---|" + "---:|" * (len(cols)) + "---|" + "---:|" * (len(head) - len(cols) - 3))

for work, label, kind in rows:
    s = median("sealfs", work)
    bp = best_peer(work, kind)
    extra = [bp[0] if bp else "-",
             ratio(s, bp[1], kind) if bp else "-",
             ratio(s, median("plain", work), kind)]
    if audit_cmp:
        extra.append(ratio(s, median("sealfs-noaudit", work), kind))
    if shared_cmp:
        extra.append(ratio(s, median("sealfs-shared", work), kind))
    print("| %s | %s | %s |" % (label, direction[kind], " | ".join(
        [cell(fs, work, kind) for fs in cols] + extra)))
print()
print("Median of %d run%s; better: higher for throughput and IOPS, lower "
      "for seconds and KiB; a ratio > 1 means sealfs is better (faster, or "
      "smaller on disk), against the best peer of the row (the better of "
      "gocryptfs and securefs) and against plain %s%s. Space: what the "
      "phase added to the cipher directory (du -sk --apparent-size, du -sk)."
      % (runs, "" if runs == 1 else "s", plain_name,
         "; n/a: not installed" if missing else ""))

# Space against the plaintext: each cipher directory over the plain one.
space = [("space-small-app", "small files, apparent"),
         ("space-small-blk", "small files, blocks"),
         ("space-untar-app", "untar tree, apparent"),
         ("space-untar-blk", "untar tree, blocks")]
scols = [c for c in cols if c != "plain"]
print()
print("| space / plaintext | " + " | ".join(
    names.get(c, c) for c in scols)
    + " | %s (KiB) |" % plain_name)
print("|---|" + "---:|" * (len(scols) + 1))
for work, label in space:
    p = median("plain", work)
    cells = []
    for c in scols:
        m = median(c, work)
        if c in missing:
            cells.append("n/a")
        elif m is None or not p:
            cells.append("-")
        else:
            cells.append("%.2f" % (m / p))
    print("| %s | %s | %s |" % (label, " | ".join(cells),
                                "%.0f" % p if p else "-"))
print()
print("Cipher directory growth divided by the plaintext's on %s "
      "(1.00 = no overhead)." % plain_name)
EOF

if [[ $requests == 1 ]]; then
    req_fss=()
    for fs in sealfs gocryptfs securefs; do
        if [[ " ${fss[*]} " == *" $fs "* ]]; then
            req_fss+=("$fs")
        fi
    done
    if [[ ${#req_fss[@]} -gt 0 ]]; then
        log "counting FUSE requests per file (contrib/fuse-requests.sh ${req_fss[*]})"
        if SEALFS_BIN=$sealfs_bin BENCH_DIR=$parent REQUESTS_RESULTS=$results/requests \
                run_bg "$here/fuse-requests.sh" "${req_fss[@]}" \
                > "$results/requests.md" < /dev/null; then
            { echo; cat "$results/requests.md"; } | tee -a "$results/table.md"
        else
            log "WARNING: contrib/fuse-requests.sh failed (see $results/requests)"
            printf '\nFUSE request counts: contrib/fuse-requests.sh failed\n' |
                tee -a "$results/table.md"
        fi
    fi
fi
log "done; raw results in $results"
