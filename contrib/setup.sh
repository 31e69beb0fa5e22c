#!/usr/bin/env bash
# Installs what sealfs needs on a fresh Debian/Ubuntu machine (run as root):
# FUSE 3 (fusermount3, /dev/fuse), the tools the integration tests drive
# (rsync, sqlite3, git, tar, attr; util-linux mount for the fstab test,
# systemd-analyze to verify the unit), and fio + gocryptfs for the benchmarks.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    fuse3 rsync sqlite3 git tar attr diffutils procps python3 mount systemd fio gocryptfs >/dev/null
if [ ! -e /dev/fuse ]; then
    modprobe fuse 2>/dev/null || true
fi
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing; FUSE is not available on this machine" >&2; exit 1; }
command -v cargo >/dev/null || { echo "setup: cargo (Rust toolchain) is required" >&2; exit 1; }
echo "setup: ok"
