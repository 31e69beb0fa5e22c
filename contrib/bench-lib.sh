# bench-lib.sh - volume setup and cleanup shared by bench.sh, space.sh and
# fuse-requests.sh.  Sourced, not run.
#
# The caller sets, before calling anything here:
#   prog      its name, for messages
#   scratch   a fresh scratch directory (mktemp -d) that only this run uses
#   logdir    where daemon logs go (daemon.log, securefs-*.log)
#   passfile  a file with a random password (make_passfile writes one)
#   sealfs_bin  the sealfs binary (find_sealfs sets it), if sealfs is used
# and installs bench_cleanup as its EXIT trap.  Functions named in the
# array cleanup_hooks run first on exit (e.g. tracing teardown).
#
# Filesystems: "plain" (a directory of the scratch filesystem, normally
# ext4), "sealfs", "sealfs-noaudit" (sealfs mounted with --no-audit), "sealfs-shared"
# (sealfs mounted with --shared-storage),
# "gocryptfs" and "securefs" (lite format, securefs 0.x's --format 4).
# Every volume is created fresh with the password in $passfile, mounted
# with each program's default options, and unmounted with fusermount3 -u.

# shellcheck shell=bash
# The variables above are set by the sourcing script:
# shellcheck disable=SC2154

log() { echo "$prog: $*" >&2; }
die() { log "$*"; exit 1; }

lib_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
lib_repo=$(cd "$lib_here/.." && pwd)

# fs_installed FS: can FS be measured on this machine?
fs_installed() {
    case $1 in
        plain|sealfs|sealfs-noaudit|sealfs-shared) return 0 ;;
        gocryptfs|securefs) command -v "$1" > /dev/null ;;
        *) return 1 ;;
    esac
}

# fs_version FS: one line naming the version, for the environment record.
fs_version() {
    case $1 in
        sealfs|sealfs-noaudit|sealfs-shared)
            # With $SEALFS_BIN the checkout need not be what was built.
            echo "$("$sealfs_bin" --version 2> /dev/null || echo sealfs) $sealfs_bin" \
                "(${SEALFS_BIN:+SEALFS_BIN; }checkout $(git -C "$lib_repo" rev-parse --short HEAD 2> /dev/null || echo '?'))" ;;
        gocryptfs) gocryptfs -version 2> /dev/null | head -n 1 ;;
        securefs)
            # securefs 0.x prints no version of its own ("GIT-NOTFOUND")
            # when built from the Debian source package; ask dpkg.
            echo "securefs $(dpkg-query -W -f '${Version}' securefs 2> /dev/null || echo '?')" \
                "(lite format: create --format 4)" ;;
        plain) echo "plain $(findmnt -n -o FSTYPE -T "$scratch" 2> /dev/null || echo '?')" ;;
    esac
}

# find_sealfs: set sealfs_bin to $SEALFS_BIN or a release build of this repo.
find_sealfs() {
    if [[ -n ${SEALFS_BIN:-} ]]; then
        sealfs_bin=$SEALFS_BIN
    else
        log "building sealfs (cargo build --release)"
        (cd "$lib_repo" && cargo build --release >&2) || die "cargo build --release failed"
        sealfs_bin=${CARGO_TARGET_DIR:-$lib_repo/target}/release/sealfs
    fi
    [[ -x $sealfs_bin ]] || die "no sealfs binary at $sealfs_bin"
}

make_passfile() {
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$passfile" && echo >> "$passfile")
}

declare -A mounted=()   # mountpoint -> filesystem name, while mounted
cleanup_hooks=()

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

# fuse_daemon_pids DIR: the processes that serve a mount under DIR: their
# command line mentions DIR and they hold /dev/fuse open.
fuse_daemon_pids() {
    local dir=$1 pid fd args
    for pid in $(our_pids); do
        args=()
        mapfile -d '' args 2> /dev/null < "/proc/$pid/cmdline" || continue
        [[ "${args[*]:-}" == *"$dir/"* ]] || continue
        for fd in /proc/"$pid"/fd/*; do
            if [[ $(readlink "$fd" 2> /dev/null) == /dev/fuse ]]; then
                echo "$pid"
                break
            fi
        done
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
            "$sealfs_bin" unmount "$mnt" >> "$logdir/daemon.log" 2>&1 </dev/null || true
        fi
        # fusermount3 fails with EBUSY while something still has a file
        # open in there; give it a few seconds.
        for ((i = 0; i < 20; i++)); do
            is_mounted "$mnt" || break
            fusermount3 -u "$mnt" >> "$logdir/daemon.log" 2>&1 || sleep 0.5
        done
        if is_mounted "$mnt"; then
            log "WARNING: $mnt is busy; detaching it lazily"
            fusermount3 -u -z "$mnt" >> "$logdir/daemon.log" 2>&1 || true
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

bench_cleanup() {
    local rc=$? mnt i hook
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
    for hook in "${cleanup_hooks[@]}"; do
        "$hook"
    done
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

can_drop=1
[[ -w /proc/sys/vm/drop_caches ]] || can_drop=0
drop_caches() {
    sync
    if [[ $can_drop == 1 ]]; then
        echo 3 > /proc/sys/vm/drop_caches
    fi
}

# setup_fs FS DIR: create a volume in DIR and mount it; sets $work to the
# directory the workloads run in and $cipher to the directory that holds
# what lands on disk (for plain: $work itself).  (Not called in a
# subshell, so that the mounted[] bookkeeping for the cleanup trap sticks.)
work=
cipher=
setup_fs() {
    local fs=$1 dir=$2
    local mnt=$dir/mnt dlog=$logdir/daemon.log
    cipher=$dir/cipher
    case $fs in
        plain)
            mkdir -p "$dir/plain"
            work=$dir/plain
            cipher=$work
            return 0 ;;
        sealfs|sealfs-noaudit|sealfs-shared)
            mkdir -p "$cipher" "$mnt"
            echo "== $fs init/mount $cipher" >> "$dlog"
            "$sealfs_bin" init "$cipher" --passfile "$passfile" >> "$dlog" 2>&1 </dev/null ||
                { log "sealfs init failed (see $dlog)"; return 1; }
            mounted[$mnt]=$fs
            local extra=()
            [[ $fs == sealfs-noaudit ]] && extra=(--no-audit)
            [[ $fs == sealfs-shared ]] && extra=(--shared-storage)
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
        securefs)
            # securefs 0.13 (Debian): --format 4 is the lite format (one
            # backing file per file, names encrypted one by one), also its
            # default.  The password is read from standard input when that
            # is not a terminal (--pass would put it on the command line).
            # "mount -b" daemonizes after the mount is up (libfuse 2's
            # fuse_main); its log goes to --log.
            mkdir -p "$cipher" "$mnt"
            echo "== $fs create/mount $cipher" >> "$dlog"
            securefs create --format 4 "$cipher" < "$passfile" >> "$dlog" 2>&1 ||
                { log "securefs create failed (see $dlog)"; return 1; }
            mounted[$mnt]=$fs
            securefs mount -b --log "$logdir/securefs.${dir##*/}.log" "$cipher" "$mnt" \
                < "$passfile" >> "$dlog" 2>&1 ||
                { log "securefs mount failed (see $dlog)"; return 1; } ;;
        *)
            log "unknown filesystem $fs"
            return 1 ;;
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

# du_kib DIR: "APPARENT BLOCKS" in KiB (du -sk --apparent-size, du -sk).
du_kib() {
    local app blk
    app=$(du -sk --apparent-size -- "$1" | cut -f1)
    blk=$(du -sk -- "$1" | cut -f1)
    echo "$app $blk"
}
