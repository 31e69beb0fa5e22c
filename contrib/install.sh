#!/bin/sh
# Installs a built sealfs (run as root from the repository, after
# `cargo build --release --locked`):
#
#   /usr/local/bin/sealfs                  the binary
#   /sbin/mount.fuse.sealfs -> sealfs      the mount(8) helper: the binary run under
#                                          this name (`mount -t fuse.sealfs`, fstab)
#   /usr/local/share/man/man1/sealfs*.1    the man pages (`man sealfs-mount`)
#   bash/zsh/fish completions
#   /etc/systemd/system/sealfs@.service    the unit (when systemd is there)
#
# Without the helper, mount(8) falls back to mount.fuse3, which runs a
# program named `sealfs` with fuse's own arguments and fails with
# `sealfs: not found` (or a usage error): this script checks it is in place.
#
# Environment: BIN (default target/release/sealfs), PREFIX (/usr/local),
# SBIN (/sbin), DESTDIR (empty: a staging root for packaging).
set -eu
BIN=${BIN:-target/release/sealfs}
PREFIX=${PREFIX:-/usr/local}
SBIN=${SBIN:-/sbin}
D=${DESTDIR:-}
[ -x "$BIN" ] || { echo "install: $BIN not found: run 'cargo build --release --locked' first" >&2; exit 1; }

install -d "$D$PREFIX/bin" "$D$SBIN" "$D$PREFIX/share/man/man1"
install -m755 "$BIN" "$D$PREFIX/bin/sealfs"
ln -sfn "$PREFIX/bin/sealfs" "$D$SBIN/mount.fuse.sealfs"
man=$(mktemp -d)
"$D$PREFIX/bin/sealfs" man "$man"
install -m644 "$man"/*.1 "$D$PREFIX/share/man/man1/"
rm -rf "$man"
install -d "$D$PREFIX/share/bash-completion/completions" \
    "$D$PREFIX/share/zsh/site-functions" "$D$PREFIX/share/fish/vendor_completions.d"
"$D$PREFIX/bin/sealfs" completions bash > "$D$PREFIX/share/bash-completion/completions/sealfs"
"$D$PREFIX/bin/sealfs" completions zsh > "$D$PREFIX/share/zsh/site-functions/_sealfs"
"$D$PREFIX/bin/sealfs" completions fish > "$D$PREFIX/share/fish/vendor_completions.d/sealfs.fish"
if [ -d "$D/etc/systemd/system" ] || [ -n "$D" ]; then
    install -d "$D/etc/systemd/system"
    sed "s|/usr/local/bin/sealfs|$PREFIX/bin/sealfs|" contrib/systemd/sealfs@.service \
        > "$D/etc/systemd/system/sealfs@.service"
fi
# The check: the helper resolves to this binary and runs.
if [ -n "$D" ]; then
    [ -L "$D$SBIN/mount.fuse.sealfs" ] || { echo "install: no $SBIN/mount.fuse.sealfs" >&2; exit 1; }
else
    [ -x "$SBIN/mount.fuse.sealfs" ] || { echo "install: $SBIN/mount.fuse.sealfs does not resolve" >&2; exit 1; }
    "$SBIN/mount.fuse.sealfs" 2>&1 | grep -q "usage: mount.fuse.sealfs" ||
        { echo "install: $SBIN/mount.fuse.sealfs does not run as the mount helper" >&2; exit 1; }
fi
echo "install: sealfs $("$D$PREFIX/bin/sealfs" --version | cut -d' ' -f2) in $D$PREFIX/bin, mount helper $D$SBIN/mount.fuse.sealfs, man pages, completions"
