#!/usr/bin/env bash
# fuse-requests.sh - count the FUSE requests (per opcode) and the daemon's
# system calls per file of the small-file workload.
#
# Usage: contrib/fuse-requests.sh [FS...]
#
#   FS   sealfs, gocryptfs, securefs (default: sealfs and the peers that
#        are installed)
#
# For each filesystem: a fresh volume is created and mounted with the
# program's default options, contrib/smallfiles.sh runs in it (create
# NFILES files of 4 KiB in NDIRS directories, read them with cold caches,
# delete them, untar NTARFILES files), and the kernel counts what each
# phase costs:
#
#   * FUSE requests: the tracepoint fuse:fuse_request_send (kernel 6.13+),
#     filtered on the mount's FUSE connection, in a tracefs instance of
#     our own; its opcode is the request type.  Every request the kernel
#     queues is counted, also those sent later by writeback; FORGET and
#     BATCH_FORGET are queued separately and do not pass this tracepoint.
#   * daemon system calls: the syscalls:sys_enter_* tracepoints, filtered
#     on the daemon's threads (set_event_pid with event-fork, so threads
#     it starts later count too), in a second instance.  Calls on a file
#     descriptor that stays open through the whole workload are named by
#     its target ("read /dev/fuse" is the request channel, "write
#     <cipher>/..." a log file the daemon keeps open); Go and libc runtime
#     calls (futex, epoll, mmap, signals, ...) are summed in one row.
#
# No filesystem is changed or run in a special mode; nothing is attached
# to the daemons (no ptrace).  smallfiles.sh calls a hook around each
# timed phase that writes a marker into both traces, so the counts are
# exactly those of the phases.  Tracing slows the daemons down: never take
# timings from this run (bench.sh --requests runs this after its timed
# runs, on volumes of its own).
#
# Output: markdown tables on stdout, the counts divided by the number of
# files of the phase (NFILES; NTARFILES for untar), progress on stderr.
# Needs root, tracefs (mounted at /sys/kernel/tracing if it is not mounted
# anywhere, and unmounted again), a kernel with the fuse tracepoints,
# python3 and fusermount3.
#
# Environment: REQUESTS_NFILES (2000; NFILES of the workload), NDIRS (100),
# NTARFILES (3000), SEALFS_BIN, BENCH_DIR (/var/tmp: where the scratch
# directory goes), REQUESTS_RESULTS (keep the raw traces, fd snapshots and
# logs there; by default they go with the scratch directory),
# TARBALL_CACHE (see smallfiles.sh).

set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prog=fuse-requests.sh
# shellcheck source=contrib/bench-lib.sh
. "$here/bench-lib.sh"

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
    exit "${1:-0}"
}

fss=()
for arg in "$@"; do
    case $arg in
        -h|--help) usage 0 ;;
        sealfs) fss+=(sealfs) ;;
        gocryptfs|securefs)
            fs_installed "$arg" || die "$arg is not installed (apt-get install $arg)"
            fss+=("$arg") ;;
        *) echo "$prog: unknown argument '$arg'" >&2; usage 2 ;;
    esac
done
if [[ ${#fss[@]} -eq 0 ]]; then
    fss=(sealfs)
    for peer in gocryptfs securefs; do
        if fs_installed "$peer"; then
            fss+=("$peer")
        else
            log "$peer is not installed; its column says n/a"
        fi
    done
fi

export NFILES=${REQUESTS_NFILES:-2000}
export NDIRS=${NDIRS:-100}
export NTARFILES=${NTARFILES:-3000}

[[ $(id -u) == 0 ]] || die "needs root (tracefs, drop_caches)"
for tool in python3 fusermount3 timeout; do
    command -v "$tool" > /dev/null || die "$tool is not installed"
done
sealfs_bin=
if [[ " ${fss[*]} " == *" sealfs "* ]]; then
    find_sealfs
fi

# --- tracefs -------------------------------------------------------------------
tracefs=$(awk '$3 == "tracefs" { print $2; exit }' /proc/self/mounts)
we_mounted_tracefs=0
if [[ -z $tracefs ]]; then
    tracefs=/sys/kernel/tracing
    mount -t tracefs nodev "$tracefs" || die "cannot mount tracefs on $tracefs"
    we_mounted_tracefs=1
fi
if [[ ! -d $tracefs/events/fuse/fuse_request_send ]]; then
    [[ $we_mounted_tracefs == 0 ]] || umount "$tracefs"
    die "this kernel ($(uname -r)) has no fuse:fuse_request_send tracepoint (Linux 6.13+)"
fi

# --- scratch, cleanup ------------------------------------------------------------
parent=${BENCH_DIR:-/var/tmp}
scratch=$(mktemp -d "$parent/sealfs-requests.XXXX")
[[ $scratch != *[[:space:]]* ]] || die "scratch path must not contain whitespace"
out=${REQUESTS_RESULTS:-$scratch/results}
mkdir -p "$out"
logdir=$out

instances=()   # tracefs instances of ours, while they exist
readers=()     # trace_pipe readers (cat), while they run

stop_tracing() {
    local inst pid
    for inst in "${instances[@]}"; do
        echo 0 > "$inst/tracing_on" 2> /dev/null
    done
    for pid in "${readers[@]}"; do
        kill -TERM "$pid" 2> /dev/null
        wait "$pid" 2> /dev/null
    done
    readers=()
    for inst in "${instances[@]}"; do
        # Events off first: an instance with enabled events may not go.
        echo > "$inst/set_event" 2> /dev/null
        echo > "$inst/set_event_pid" 2> /dev/null
        rmdir "$inst" 2> /dev/null || log "WARNING: could not remove the tracefs instance $inst"
    done
    instances=()
}
unmount_tracefs() {
    if [[ $we_mounted_tracefs == 1 ]]; then
        umount "$tracefs" 2> /dev/null || log "WARNING: could not unmount $tracefs"
        we_mounted_tracefs=0
    fi
}
cleanup_hooks=(stop_tracing unmount_tracefs)
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

passfile=$scratch/passfile
make_passfile

# The SMALLFILES_HOOK: a marker into both traces, and a snapshot of the
# daemon's open file descriptors (to name the long-lived ones).
hook=$scratch/marker-hook
cat > "$hook" <<'EOF'
#!/usr/bin/env bash
set -euo pipefail
for m in $REQ_MARKERS; do
    echo "sealfs-requests $1 $2" > "$m"
done
for pid in $REQ_DAEMONS; do
    for fd in /proc/"$pid"/fd/*; do
        printf '%s %s %s\n' "$pid" "${fd##*/}" "$(readlink "$fd" 2> /dev/null || echo '?')"
    done
done > "$REQ_FDS.$1-$2" 2> /dev/null || true
EOF
chmod +x "$hook"

# conn_id MNT: the FUSE connection number the tracepoint reports: the
# kernel's dev_t of the mount (major << 20 | minor, from mountinfo).
conn_id() {
    awk -v m="$1" '$5 == m { split($3, d, ":"); print d[1] * 1048576 + d[2]; exit }' \
        /proc/self/mountinfo
}

new_instance() {  # NAME: make a tracefs instance; sets $inst to its path
    inst=$tracefs/instances/$1
    mkdir "$inst"
    instances+=("$inst")
    echo 0 > "$inst/tracing_on"
    echo 16384 > "$inst/buffer_size_kb"
}

count_one() {  # FS
    local fs=$1
    local dir=$scratch/$fs
    log "$fs: NFILES=$NFILES NDIRS=$NDIRS NTARFILES=$NTARFILES"
    mkdir -p "$dir"
    setup_fs "$fs" "$dir" || return 1
    local conn daemons=() tids=() pid task
    conn=$(conn_id "$dir/mnt")
    [[ -n $conn ]] || { log "$fs: no mountinfo entry for $dir/mnt"; return 1; }
    mapfile -t daemons < <(fuse_daemon_pids "$dir")
    [[ ${#daemons[@]} -gt 0 ]] || { log "$fs: no daemon holds /dev/fuse for $dir"; return 1; }
    for pid in "${daemons[@]}"; do
        for task in /proc/"$pid"/task/*; do
            tids+=("${task##*/}")
        done
    done
    echo "$fs conn=$conn daemons=${daemons[*]} tids=${tids[*]}" >> "$out/ids.txt"

    local fuse_inst sys_inst ev inst
    new_instance "sealfs-requests.$$.$fs.fuse"
    fuse_inst=$inst
    new_instance "sealfs-requests.$$.$fs.sys"
    sys_inst=$inst
    echo "connection == $conn" > "$fuse_inst/events/fuse/fuse_request_send/filter"
    echo 1 > "$fuse_inst/events/fuse/fuse_request_send/enable"
    echo "${tids[*]}" > "$sys_inst/set_event_pid"
    echo 1 > "$sys_inst/options/event-fork"
    for ev in "$sys_inst"/events/syscalls/sys_enter_*/enable; do
        echo 1 > "$ev"
    done
    cat "$fuse_inst/trace_pipe" > "$out/$fs.fuse.trace" &
    readers+=($!)
    cat "$sys_inst/trace_pipe" > "$out/$fs.sys.trace" &
    readers+=($!)
    echo 1 > "$fuse_inst/tracing_on"
    echo 1 > "$sys_inst/tracing_on"

    local sflog=$out/$fs.smallfiles.log rc=0
    REQ_MARKERS="$fuse_inst/trace_marker $sys_inst/trace_marker" \
        REQ_DAEMONS="${daemons[*]}" REQ_FDS=$out/$fs.fds \
        SMALLFILES_HOOK=$hook DROP_CACHES=1 \
        run_bg timeout -k 30 1800 "$here/smallfiles.sh" "$dir/mnt" \
        > "$sflog" 2>&1 < /dev/null || rc=$?

    # A last marker: once the readers have written it out, everything
    # before it has been read (trace_pipe merges the CPUs in time order).
    local i lost=0
    for inst in "$fuse_inst" "$sys_inst"; do
        echo "sealfs-requests done" > "$inst/trace_marker"
    done
    for ((i = 0; i < 100; i++)); do
        if grep -q 'sealfs-requests done' "$out/$fs.fuse.trace" &&
                grep -q 'sealfs-requests done' "$out/$fs.sys.trace"; then
            break
        fi
        sleep 0.1
    done
    [[ $i -lt 100 ]] || log "WARNING: $fs: the trace readers did not catch up; counts may be low"
    echo 0 > "$fuse_inst/tracing_on"
    echo 0 > "$sys_inst/tracing_on"
    for inst in "$fuse_inst" "$sys_inst"; do
        lost=$((lost + $(awk '/^overrun:/ { n += $2 } END { print n + 0 }' "$inst"/per_cpu/cpu*/stats)))
    done
    stop_tracing
    teardown_fs "$fs" "$dir"
    if [[ $rc != 0 ]]; then
        log "$fs: smallfiles.sh failed ($rc):"
        sed 's/^/    /' "$sflog" >&2
        return 1
    fi
    if [[ $lost != 0 ]]; then
        log "WARNING: $fs: the trace buffers overran ($lost events lost); counts are low"
        echo "$fs" >> "$out/overrun.txt"
    fi
    log "$fs: $(grep -c fuse_request_send "$out/$fs.fuse.trace") FUSE requests," \
        "$(grep -c ': sys_' "$out/$fs.sys.trace") daemon syscalls traced"
}

: > "$out/ids.txt"
{
    echo "fuse-requests $(date -u +%Y-%m-%dT%H:%M:%SZ) kernel $(uname -r)"
    for fs in "${fss[@]}"; do fs_version "$fs"; done
    echo "NFILES=$NFILES NDIRS=$NDIRS NTARFILES=$NTARFILES"
} > "$out/environment.txt" 2>&1
for fs in "${fss[@]}"; do
    count_one "$fs" || die "$fs: counting failed (logs in $out)"
done
unmount_tracefs

missing=()
for peer in gocryptfs securefs; do
    fs_installed "$peer" || missing+=("$peer")
done
python3 - "$out" "$NFILES" "$NDIRS" "$NTARFILES" "${fss[*]}" "${missing[*]:-}" "$scratch" <<'EOF'
import collections, os, re, sys

out, nfiles, ndirs, ntar = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fss = sys.argv[5].split()
missing = sys.argv[6].split()
scratch = sys.argv[7]
cols = [c for c in ["sealfs", "gocryptfs", "securefs"] if c in fss or c in missing]
phases = ["create", "read", "delete", "untar"]
per = {"create": nfiles, "read": nfiles, "delete": nfiles, "untar": ntar}
marker = re.compile(r"tracing_mark_write: sealfs-requests (begin|end) (\w+)")
fuse_ev = re.compile(r"fuse_request_send: .* opcode \d+ \((?:FUSE_|CUSE_)?(\w+)\)")
sys_ev = re.compile(r": sys_(\w+)\((.*)\)\s*$")
fd_arg = re.compile(r"^(?:fd|fd_in|epfd): (0x[0-9a-f]+|\d+)")
fd_out_arg = re.compile(r"fd_out: (0x[0-9a-f]+|\d+)")
RUNTIME_ROW = "runtime (futex, epoll, mmap, signals, ...)"
RUNTIME = set("""futex futex_waitv sched_yield nanosleep clock_nanosleep epoll_wait
epoll_pwait epoll_pwait2 epoll_ctl madvise mmap munmap mprotect mremap brk
rt_sigprocmask rt_sigaction rt_sigreturn sigaltstack tgkill tkill getpid gettid
getrandom clock_gettime membarrier rseq set_robust_list clone clone3 exit
exit_group prctl sched_getaffinity restart_syscall poll ppoll pselect6 select
getrlimit prlimit64 uname setitimer timer_settime timerfd_settime""".split())

def phase_lines(path):
    """(phase, line) for the lines between a begin and an end marker."""
    cur = None
    if not os.path.exists(path):
        return
    for line in open(path, errors="replace"):
        m = marker.search(line)
        if m:
            cur = m.group(2) if m.group(1) == "begin" else None
        elif cur:
            yield cur, line

def long_lived_fds(fs):
    """fd -> target, for the daemon fds open with the same target at the
    begin and the end of every phase: /dev/fuse, logs, the cipher root."""
    common = None
    for ph in phases:
        for which in ("begin", "end"):
            d = {}
            p = "%s/%s.fds.%s-%s" % (out, fs, which, ph)
            if os.path.exists(p):
                for line in open(p):
                    parts = line.rstrip("\n").split(" ", 2)
                    if len(parts) == 3 and parts[1].isdigit():
                        d[int(parts[1])] = parts[2]
            common = d if common is None else {
                fd: t for fd, t in common.items() if d.get(fd) == t}
    return common or {}

def label(target, fs):
    cipher = "%s/%s/cipher" % (scratch, fs)
    if target.startswith(cipher):
        return "<cipher>" + target[len(cipher):]
    if target.startswith(("socket:", "pipe:", "anon_inode:")):
        return target.split("[")[0].rstrip(":")
    return target

fuse = {}   # fs -> phase -> Counter(opcode)
sysc = {}   # fs -> phase -> Counter(row)
for fs in fss:
    fuse[fs] = {p: collections.Counter() for p in phases}
    sysc[fs] = {p: collections.Counter() for p in phases}
    for ph, line in phase_lines(os.path.join(out, fs + ".fuse.trace")):
        m = fuse_ev.search(line)
        if m:
            fuse[fs][ph][m.group(1)] += 1
    names = long_lived_fds(fs)
    for ph, line in phase_lines(os.path.join(out, fs + ".sys.trace")):
        m = sys_ev.search(line)
        if not m:
            continue
        name, args = m.group(1), m.group(2)
        if name in RUNTIME:
            sysc[fs][ph][RUNTIME_ROW] += 1
            continue
        tgt = None
        fd = fd_arg.match(args)
        if fd:
            tgt = names.get(int(fd.group(1), 0))
        if name == "splice" and tgt != "/dev/fuse":
            fo = fd_out_arg.search(args)
            if fo and names.get(int(fo.group(1), 0)) == "/dev/fuse":
                tgt = "/dev/fuse"
        sysc[fs][ph][name + (" " + label(tgt, fs) if tgt else "")] += 1

def cell(fs, n, ph, bold=False):
    if fs in missing:
        return "n/a"
    v = "%.2f" % (n / per[ph])
    return "**%s**" % v if bold else v

def peak(data, ph, k):
    return max(data[fs][ph][k] for fs in fss)

print("FUSE requests per file (kernel tracepoint fuse:fuse_request_send on "
      "each mount's connection; create, read (cold) and delete: %d files of "
      "4 KiB in %d directories; untar: %d files; FORGETs are not counted):"
      % (nfiles, ndirs, ntar))
print()
print("| phase | request | %s |" % " | ".join(cols))
print("|---|---|" + "---:|" * len(cols))
for ph in phases:
    keys = set().union(*(fuse[fs][ph] for fs in fss))
    for k in sorted(keys, key=lambda k: (-peak(fuse, ph, k), k)):
        print("| %s | %s | %s |" % (ph, k, " | ".join(
            cell(fs, fuse.get(fs, {}).get(ph, {}).get(k, 0), ph) for fs in cols)))
    print("| %s | **total** | %s |" % (ph, " | ".join(
        cell(fs, sum(fuse[fs][ph].values()) if fs in fuse else 0, ph, True)
        for fs in cols)))

print()
print("Daemon system calls per file (tracepoints syscalls:sys_enter_* on the "
      "daemon's threads; /dev/fuse: the request channel; <cipher>/...: a "
      "file the daemon keeps open through the whole workload; a call with no "
      "name: other descriptors and path calls; rows under 0.005 per file "
      "left out):")
print()
print("| phase | syscall | %s |" % " | ".join(cols))
print("|---|---|" + "---:|" * len(cols))
for ph in phases:
    keys = set().union(*(sysc[fs][ph] for fs in fss))
    def order(k):
        return (k == RUNTIME_ROW, "/dev/fuse" in k, -peak(sysc, ph, k), k)
    for k in sorted(keys, key=order):
        if peak(sysc, ph, k) / per[ph] < 0.005:
            continue
        print("| %s | %s | %s |" % (ph, k, " | ".join(
            cell(fs, sysc[fs][ph][k] if fs in sysc else 0, ph) for fs in cols)))
    def backing(fs):
        return sum(v for k, v in sysc[fs][ph].items()
                   if k != RUNTIME_ROW and "/dev/fuse" not in k)
    print("| %s | **total without /dev/fuse and runtime** | %s |" % (ph, " | ".join(
        cell(fs, backing(fs) if fs in sysc else 0, ph, True) for fs in cols)))
if os.path.exists(os.path.join(out, "overrun.txt")):
    print()
    print("WARNING: trace buffers overran for: %s (counts are low)"
          % " ".join(open(os.path.join(out, "overrun.txt")).read().split()))
EOF
