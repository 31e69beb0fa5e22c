#!/usr/bin/env bash
# Builds sealfs, creates an example volume and mounts it:
#   cipher dir  /tmp/sealfs-demo/cipher   (what lands on disk: encrypted)
#   mount point /tmp/sealfs-demo/plain    (what you use: plaintext)
# The passphrase is in /tmp/sealfs-demo/passphrase (demo only!).
# Unmount with: target/release/sealfs unmount /tmp/sealfs-demo/plain
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q
bin=target/release/sealfs
demo=/tmp/sealfs-demo
mkdir -p "$demo/plain"
if mountpoint -q "$demo/plain"; then "$bin" unmount "$demo/plain"; fi
if [ ! -f "$demo/cipher/sealfs.toml" ]; then
    rm -rf "$demo/cipher"
    head -c 24 /dev/urandom | base64 > "$demo/passphrase"
    chmod 600 "$demo/passphrase"
    "$bin" init "$demo/cipher" --passfile "$demo/passphrase"
fi
"$bin" mount "$demo/cipher" "$demo/plain" --passfile "$demo/passphrase"
echo "Hello from sealfs" > "$demo/plain/hello.txt"
mkdir -p "$demo/plain/docs" && cp README.md "$demo/plain/docs/"
echo "== plaintext view ($demo/plain):"; ls -la "$demo/plain"
echo "== what is stored ($demo/cipher):"; ls -la "$demo/cipher"
echo "Mounted. Unmount with: $bin unmount $demo/plain"
