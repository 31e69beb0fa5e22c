#!/usr/bin/env bash
# Makes a frozen format fixture: a small volume with a known passphrase that
# every later sealfs must keep mounting and reading byte-exact
# (tests/fixtures.rs). Run once per format version, as root (it mounts):
#   bash contrib/make-fixture.sh tests/fixtures/v1 [SEALFS_BINARY]
#   KEYSLOTS=1 bash contrib/make-fixture.sh tests/fixtures/v2-keyslots
#   KEYSLOTS=1 GROUP_STATES=1 bash contrib/make-fixture.sh tests/fixtures/v3-group-states
#   LINKS=1 bash contrib/make-fixture.sh tests/fixtures/v2-links
#   KEYSLOTS=1 GROUP_STATES=1 LINKS=1 bash contrib/make-fixture.sh tests/fixtures/v4-keyless-ids
#   KEYSLOTS=1 GROUP_STATES=1 LINKS=1 PACKED_TAILS=1 bash contrib/make-fixture.sh tests/fixtures/v5-packed-tails
# It refuses an existing directory: a format change adds a fixture, never
# edits one. With KEYSLOTS=1 the volume gets three keyslots (the
# passphrase, a key file saved as OUTDIR/key-file, and a recovery key saved
# as OUTDIR/recovery-key) and their list in OUTDIR/keyslots.json.
#
# Contents: files of 0, 1, 4095, 4096, 4097, 128 KiB+5 and 1 MiB+3 bytes; a
# 255-byte name and a 200-byte one (long-name sidecars); non-ASCII and
# spaced names; nested directories; symlinks (relative, absolute, dangling,
# a long target); and two master key versions in use (files written before
# and after a rotation, and a file renamed after it, which re-wraps it).
# With GROUP_STATES=1 (volumes with sealed group states, FORMAT §4.2) also:
# sparse files (a hole over a group boundary, a truncate up over three
# groups, a whole hole group between two with data) and files spanning
# several groups (three groups, and two groups cut down to one by a
# truncate).
# With PACKED_TAILS=1 (volumes with packed tails, FORMAT §4.7) also files
# around every boundary of the room in block 0 (1 byte, the whole room, one
# past it, the same for a second chunk), one packed then grown past it,
# one cut into the room from three chunks, one grown past group 0 from a
# packed tail, a sparse one whose tail is packed after a hole, and a
# packed file with a second name (the link table beside the tail).
# With LINKS=1 also hard links (a file with 3 names in two directories, one
# with 15, whose link table is external, one renamed after the rotation)
# and extended attributes (user.* on files and a directory, trusted.* on a
# symlink, an access and a default ACL), listed in OUTDIR/links.json and
# OUTDIR/xattrs.json; git keeps no xattrs, so the backing ones (sealed
# values, external link tables) are saved as OUTDIR/backing-xattrs.txt
# (`getfattr -R -P -h -d -m - -e hex` in the cipher dir; `setfattr -h --restore`
# puts them back) and pinned in OUTDIR/backing-xattrs.sha256. git keeps no
# hard links either: the backing link groups are listed in
# OUTDIR/backing-links.txt (one group per line, paths relative to the cipher
# dir, space-separated), and tests/fixtures.rs links them again.
set -euo pipefail
out="${1:?usage: make-fixture.sh OUTDIR [SEALFS_BINARY]}"
bin="${2:-$(dirname "$0")/../target/debug/sealfs}"
[ ! -e "$out" ] || { echo "make-fixture: $out exists; a fixture is never edited" >&2; exit 1; }
mkdir -p "$out"
work="$(mktemp -d)"
cleanup() { fusermount3 -u "$work/mnt" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir "$work/mnt"
if [ -n "${KEYSLOTS:-}" ]; then
    printf 'sealfs frozen fixture %s\n' "$(basename "$out")" > "$out/passphrase"
    pass="$out/passphrase"
    head -c 32 /dev/urandom > "$out/key-file"
    "$bin" init "$out/cipher" --passfile "$pass" --key-file "$out/key-file" --recovery-key \
        --kdf-memory-kib 8192 --kdf-iterations 1 > "$out/recovery-key"
    "$bin" keyslot list "$out/cipher" --json | python3 -c \
        'import json,sys; print(json.dumps(json.load(sys.stdin), indent=1, sort_keys=True))' \
        > "$out/keyslots.json"
elif [ -n "${LINKS:-}" ]; then
    printf 'sealfs frozen fixture %s\n' "$(basename "$out")" > "$out/passphrase"
    pass="$out/passphrase"
    "$bin" init "$out/cipher" --passfile "$pass" --kdf-memory-kib 8192 --kdf-iterations 1
else
    printf 'sealfs frozen fixture v1\n' > "$out/passphrase"
    pass="$out/passphrase"
    "$bin" init "$out/cipher" --passfile "$pass" --kdf-memory-kib 8192 --kdf-iterations 1
fi

"$bin" mount "$out/cipher" "$work/mnt" --passfile "$pass"
python3 - "$work/mnt" <<'PY'
import os, random, sys
m = sys.argv[1]
rng = random.Random(20261122)
def data(n):
    return bytes(rng.getrandbits(8) for _ in range(n))
os.makedirs(f"{m}/sizes")
for n in [0, 1, 4095, 4096, 4097, 128 * 1024 + 5, (1 << 20) + 3]:
    with open(f"{m}/sizes/{n}.bin", "wb") as f:
        f.write(data(n))
os.makedirs(f"{m}/a/b/c/d")
with open(f"{m}/a/b/c/d/deep.txt", "wb") as f:
    f.write(b"five levels down\n")
with open(f"{m}/a/" + "n" * 255, "wb") as f:
    f.write(b"a name of 255 bytes\n")
with open(f"{m}/a/b/" + "m" * 200, "wb") as f:
    f.write(data(5000))
os.makedirs(f"{m}/" + "D" * 255)
with open(f"{m}/" + "D" * 255 + "/inside", "wb") as f:
    f.write(b"in a directory with a 255-byte name\n")
with open(f"{m}/ünïcödé ✓ name.txt", "wb") as f:
    f.write("ünïcödé\n".encode())
with open(f"{m}/with space", "wb") as f:
    f.write(b" ")
os.makedirs(f"{m}/empty-dir")
os.symlink("sizes/4096.bin", f"{m}/rel-link")
os.symlink("/etc/hostname", f"{m}/abs-link")
os.symlink("does/not/exist", f"{m}/a/dangling")
os.symlink("x/" * 1000 + "end", f"{m}/a/long-target")
os.symlink("b/c", f"{m}/a/dir-link")
PY
if [ -n "${GROUP_STATES:-}" ]; then
    grep -q sealed-group-state "$out/cipher/sealfs.toml" ||
        { echo "make-fixture: this sealfs makes no sealed group states" >&2; exit 1; }
    python3 - "$work/mnt" <<'PY'
import os, random, sys
m = sys.argv[1]
rng = random.Random(20261203)
def data(n):
    return bytes(rng.getrandbits(8) for _ in range(n))
G = 128 * 4096
os.makedirs(f"{m}/sparse")
with open(f"{m}/sparse/over-a-group-boundary", "wb") as f:
    f.write(data(3000))
    f.seek(600_000)
    f.write(data(5000))
with open(f"{m}/sparse/truncated-up", "wb") as f:
    f.write(data(4097))
    f.truncate(2 * G + 17)
with open(f"{m}/sparse/hole-group", "wb") as f:
    f.write(data(G))
    f.seek(2 * G + 100)
    f.write(data(9000))
os.makedirs(f"{m}/groups")
with open(f"{m}/groups/three", "wb") as f:
    f.write(data(2 * G + 12345))
with open(f"{m}/groups/shrunk", "wb") as f:
    f.write(data(2 * G - 7))
    f.truncate(G + 100)
PY
fi
if [ -n "${PACKED_TAILS:-}" ]; then
    grep -q packed-tails "$out/cipher/sealfs.toml" ||
        { echo "make-fixture: this sealfs packs no tails" >&2; exit 1; }
    python3 - "$work/mnt" <<'PY'
import os, random, sys
m = sys.argv[1]
rng = random.Random(20261203 + 19)
def data(n):
    return bytes(rng.getrandbits(8) for _ in range(n))
room0, room1 = 3556, 3528
os.makedirs(f"{m}/tails")
for n in [1, 100, room0 - 1, room0, room0 + 1, 4096 + room1, 4096 + room1 + 1, 10240]:
    with open(f"{m}/tails/{n}.bin", "wb") as f:
        f.write(data(n))
with open(f"{m}/tails/grown-past-room", "wb") as f:
    f.write(data(3000))
with open(f"{m}/tails/grown-past-room", "ab") as f:
    f.write(data(1000))
with open(f"{m}/tails/cut-into-room", "wb") as f:
    f.write(data(3 * 4096))
    f.truncate(4096 + 17)
with open(f"{m}/tails/grown-past-group", "wb") as f:
    f.write(data(2000))
    f.seek(128 * 4096 + 50)
    f.write(data(3000))
with open(f"{m}/tails/hole-then-tail", "wb") as f:
    f.seek(3 * 4096)
    f.write(data(77))
with open(f"{m}/tails/linked", "wb") as f:
    f.write(data(room0))
os.link(f"{m}/tails/linked", f"{m}/tails/linked-too")
PY
fi
"$bin" unmount "$work/mnt"
# The daemon releases the volume's lock a moment after the unmount.
for _ in $(seq 50); do
    "$bin" rotate "$out/cipher" --passfile "$pass" 2>/dev/null && break
    sleep 0.2
done
"$bin" mount "$out/cipher" "$work/mnt" --passfile "$pass"
python3 - "$work/mnt" <<'PY'
import os, sys
m = sys.argv[1]
os.makedirs(f"{m}/after-rotation")
with open(f"{m}/after-rotation/new.txt", "wb") as f:
    f.write(b"written under key version 2\n" * 300)
# A rename re-binds (re-wraps) the file under the primary version.
os.rename(f"{m}/sizes/4097.bin", f"{m}/after-rotation/4097-renamed.bin")
os.rename(f"{m}/a/b/c", f"{m}/a/b/c-renamed")
PY
if [ -n "${LINKS:-}" ]; then
    python3 - "$work/mnt" <<'PY'
import os, sys
m = sys.argv[1]
os.makedirs(f"{m}/links/more")
with open(f"{m}/links/one", "wb") as f:
    f.write(b"one file, three names\n")
os.link(f"{m}/links/one", f"{m}/links/two")
os.link(f"{m}/links/one", f"{m}/a/three-from-elsewhere")
with open(f"{m}/links/many", "wb") as f:
    f.write(b"fifteen names: an external link table\n" * 200)
for i in range(14):
    os.link(f"{m}/links/many", f"{m}/links/more/{i}")
os.link(f"{m}/after-rotation/new.txt", f"{m}/links/new-too")
os.rename(f"{m}/links/new-too", f"{m}/links/more/new-renamed")
os.setxattr(f"{m}/links/one", "user.color", b"blue")
os.setxattr(f"{m}/sizes/4096.bin", "user.bin", bytes(range(256)))
os.setxattr(f"{m}/sizes/4096.bin", "user.empty", b"")
os.setxattr(f"{m}/a", "user.dir", b"on a directory")
os.setxattr(f"{m}/rel-link", "trusted.on-symlink", b"keyless", follow_symlinks=False)
PY
    setfacl -m u:nobody:r,g:nogroup:rw "$work/mnt/links/more/0"
    setfacl -m d:u:nobody:rwx,u:nobody:rx "$work/mnt/empty-dir"
    python3 - "$work/mnt" > "$out/links.json" <<'PY'
import json, os, sys
m = sys.argv[1]
groups = {}
for dp, dns, fns in os.walk(m):
    for n in fns:
        p = os.path.join(dp, n)
        st = os.lstat(p)
        if st.st_nlink > 1:
            groups.setdefault(st.st_ino, []).append(os.path.relpath(p, m))
print(json.dumps(sorted(sorted(g) for g in groups.values()), indent=1))
PY
    python3 - "$work/mnt" > "$out/xattrs.json" <<'PY'
import json, os, sys
m = sys.argv[1]
out = {}
for dp, dns, fns in os.walk(m):
    for n in dns + fns:
        p = os.path.join(dp, n)
        names = os.listxattr(p, follow_symlinks=False)
        if names:
            out[os.path.relpath(p, m)] = {
                x: os.getxattr(p, x, follow_symlinks=False).hex() for x in sorted(names)}
print(json.dumps(out, indent=1, sort_keys=True))
PY
fi
# The manifest: every entry with its type and content hash or target.
python3 - "$work/mnt" > "$out/manifest.jsonl" <<'PY'
import hashlib, json, os, sys
m = sys.argv[1]
rows = []
for dirpath, dirnames, filenames in os.walk(m):
    for name in dirnames + filenames:
        p = os.path.join(dirpath, name)
        rel = os.path.relpath(p, m)
        if os.path.islink(p):
            rows.append({"path": rel, "type": "symlink", "target": os.readlink(p)})
        elif os.path.isdir(p):
            rows.append({"path": rel, "type": "dir"})
        else:
            b = open(p, "rb").read()
            rows.append({"path": rel, "type": "file", "size": len(b),
                         "sha256": hashlib.sha256(b).hexdigest()})
for r in sorted(rows, key=lambda r: r["path"]):
    print(json.dumps(r, ensure_ascii=False))
PY
"$bin" unmount "$work/mnt"
# The daemon still records the unmount (and stores the keyring) after the
# mount is gone: wait until it lets go of the volume's lock.
for _ in $(seq 50); do
    flock -n "$out/cipher/sealfs.lock" true && break
    sleep 0.2
done
for _ in $(seq 50); do
    "$bin" info "$out/cipher" --passfile "$pass" --json > "$work/info.json" 2>/dev/null && break
    sleep 0.2
done
python3 - "$work/info.json" > "$out/key-versions.json" <<'PY'
import json, sys
print(json.dumps(json.load(open(sys.argv[1])), indent=1, sort_keys=True))
PY
rm -f "$out/cipher/sealfs.lock"
if [ -n "${LINKS:-}" ]; then
    (cd "$out/cipher" && getfattr -R -P -h -d -m - -e hex --absolute-names .) \
        > "$out/backing-xattrs.txt"
    sha256sum < "$out/backing-xattrs.txt" | cut -d' ' -f1 > "$out/backing-xattrs.sha256"
    (cd "$out/cipher" && find . -type f -links +1 -printf '%i %P\n') | sort |
        awk '$1 != prev { if (NR > 1) printf "\n"; printf "%s", $2; prev = $1; next }
             { printf " %s", $2 } END { if (NR) printf "\n" }' > "$out/backing-links.txt"
fi
# Pin the cipher files (tests/fixtures.rs recomputes the same fingerprint).
python3 - "$out/cipher" > "$out/cipher.sha256" <<'PY'
import hashlib, os, sys
root = sys.argv[1]
lines = []
for dp, dns, fns in os.walk(root):
    for n in dns + fns:
        p = os.path.join(dp, n)
        rel = os.path.relpath(p, root)
        if os.path.islink(p):
            lines.append(f"l {rel} {os.readlink(p)}")
        elif os.path.isdir(p):
            lines.append(f"d {rel}")
        elif rel != "sealfs.lock":
            lines.append(f"f {rel} {hashlib.sha256(open(p, 'rb').read()).hexdigest()}")
lines.sort()
print(hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest())
PY
du -sh "$out"
echo "make-fixture: wrote $out"
