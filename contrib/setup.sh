#!/usr/bin/env bash
# Installs what sealfs needs on a fresh Debian/Ubuntu machine (run as root):
# FUSE 3 (fusermount3, /dev/fuse), the tools the integration tests drive
# (rsync, sqlite3, git, tar, attr; util-linux mount for the fstab test,
# systemd-analyze to verify the unit), fio + gocryptfs for the benchmarks,
# and pjdfstest (the POSIX conformance suite, built from crates.io; it links
# libacl) with the `tests` user its cases switch to.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    fuse3 rsync sqlite3 git tar attr diffutils procps python3 mount systemd fio gocryptfs \
    libacl1-dev acl >/dev/null
if [ ! -e /dev/fuse ]; then
    modprobe fuse 2>/dev/null || true
fi
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing; FUSE is not available on this machine" >&2; exit 1; }
command -v cargo >/dev/null || { echo "setup: cargo (Rust toolchain) is required" >&2; exit 1; }
# pjdfstest switches to the users `nobody` and `tests` (tests/pjdfstest.rs).
getent passwd tests >/dev/null ||
    useradd --system --user-group --no-create-home --home-dir / --shell /usr/sbin/nologin tests
# Pinned: tests/pjdfstest-expected-failures names its cases.
PJDFSTEST_VERSION=0.2.2
pjd="${CARGO_HOME:-$HOME/.cargo}/bin/pjdfstest"
if ! "$pjd" --version 2>/dev/null | grep -qx "pjdfstest $PJDFSTEST_VERSION"; then
    cargo install --quiet --locked --version "$PJDFSTEST_VERSION" pjdfstest
fi
echo "setup: ok"
