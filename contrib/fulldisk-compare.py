#!/usr/bin/env python3
"""Full-disk behaviour of sealfs, gocryptfs, a plain tmpfs and ext4, side by side.

For each file system and scenario: a fresh 16 MiB tmpfs as the backing
store, the file system on top (sealfs or gocryptfs; "tmpfs" writes to the
tmpfs itself; "ext4" is a 16 MiB ext4 image on that tmpfs, made by
mkfs.ext4 and mounted with fuse2fs, ext4's own allocator and ENOSPC
rules through FUSE), a workload that writes more than fits, then an unmount and
a remount. Printed per scenario: where the first error appeared (write,
fsync, close, or the tool's exit), the size of the files after the
remount, and how many bytes read back as the bytes written (a read error
counts as unreadable, never as correct; "wrong" counts bytes that read
back different, e.g. zeros for lost data).

Needs root, sealfs (SEALFS=path, default target/release/sealfs), gocryptfs,
fuse2fs and mkfs.ext4 (Debian packages fuse2fs, e2fsprogs).
Usage: contrib/fulldisk-compare.py [--only sealfs,gocryptfs,tmpfs,ext4]
"""
import os, random, shutil, subprocess, sys, tempfile, time

SEALFS = os.environ.get("SEALFS", "target/release/sealfs")
MB = 1 << 20


def sh(*a, check=True, **kw):
    return subprocess.run(a, check=check, capture_output=True, **kw)


def wait_mount(p, timeout=20):
    t = time.time()
    while time.time() - t < timeout:
        if subprocess.run(["mountpoint", "-q", p]).returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError("mount did not appear: " + p)


class Fs:
    def __init__(self, kind, base):
        self.kind, self.base = kind, base
        self.back = os.path.join(base, "back")
        self.mnt = os.path.join(base, "mnt")
        self.pw = os.path.join(base, "pw")
        os.makedirs(self.back)
        os.makedirs(self.mnt)
        with open(self.pw, "w") as f:
            f.write("fulldisk-compare\n")
        sh("mount", "-t", "tmpfs", "-o", "size=16m", "fulldisk-cmp", self.back)
        self.cipher = os.path.join(self.back, "c")
        if kind == "sealfs":
            os.makedirs(self.cipher)
            sh(SEALFS, "init", self.cipher, "--passfile", self.pw)
        elif kind == "gocryptfs":
            os.makedirs(self.cipher)
            sh("gocryptfs", "-init", "-q", "-passfile", self.pw, self.cipher)
        elif kind == "ext4":
            # The whole tmpfs but the page mkfs needs for itself.
            self.image = os.path.join(self.back, "ext4.img")
            sh("truncate", "-s", str(16 * MB - 4096), self.image)
            sh("mkfs.ext4", "-q", "-F", "-m", "0", self.image)
        self.proc = None

    def mount(self):
        if self.kind == "tmpfs":
            return self.back
        if self.kind == "sealfs":
            self.proc = subprocess.Popen(
                [SEALFS, "mount", self.cipher, self.mnt, "--passfile", self.pw,
                 "--no-audit", "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elif self.kind == "ext4":
            self.proc = subprocess.Popen(
                ["fuse2fs", "-f", self.image, self.mnt],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            sh("gocryptfs", "-q", "-passfile", self.pw, self.cipher, self.mnt)
        wait_mount(self.mnt)
        return self.mnt

    def unmount(self):
        if self.kind == "tmpfs":
            return
        sh("umount", self.mnt, check=False)
        if self.proc:
            self.proc.wait(timeout=30)
            self.proc = None
        t = time.time()
        while subprocess.run(["mountpoint", "-q", self.mnt]).returncode == 0 and time.time() - t < 10:
            time.sleep(0.05)

    def destroy(self):
        self.unmount()
        # A FUSE daemon may still hold the backing store a moment after
        # its unmount returned.
        for _ in range(50):
            if sh("umount", self.back, check=False).returncode == 0:
                break
            time.sleep(0.1)


def write_loop(path, data, mode="w", chunk=MB):
    """os-level write of data; returns first failing step."""
    err = None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC), 0o644)
    except OSError as e:
        return "open " + os.strerror(e.errno)
    try:
        for i in range(0, len(data), chunk):
            os.write(fd, data[i:i + chunk])
    except OSError as e:
        err = "write " + os.strerror(e.errno)
    try:
        os.fsync(fd)
    except OSError as e:
        err = err or "fsync " + os.strerror(e.errno)
    try:
        os.close(fd)
    except OSError as e:
        err = err or "close " + os.strerror(e.errno)
    return err


def tool(*a):
    r = subprocess.run(a, capture_output=True)
    if r.returncode != 0:
        line = (r.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        return "exit %d (%s)" % (r.returncode, line[:60])
    return None


def scenarios(src):
    rnd = random.Random(7)
    big = rnd.randbytes(24 * MB)
    with open(os.path.join(src, "big"), "wb") as f:
        f.write(big)
    small = {"s%04d" % i: rnd.randbytes(4096) for i in range(5000)}
    os.makedirs(os.path.join(src, "tree"))
    for n, d in small.items():
        with open(os.path.join(src, "tree", n), "wb") as f:
            f.write(d)
    sh("tar", "-cf", os.path.join(src, "tree.tar"), "-C", src, "tree")

    def seq(m):
        return write_loop(os.path.join(m, "big"), big), {"big": big}

    def dd(m):
        return tool("dd", "if=" + os.path.join(src, "big"), "of=" + os.path.join(m, "big"), "bs=1M"), {"big": big}

    def cp(m):
        return tool("cp", os.path.join(src, "big"), os.path.join(m, "big")), {"big": big}

    def rsync(m):
        return tool("rsync", os.path.join(src, "big"), os.path.join(m, "big")), {"big": big}

    def tar(m):
        return tool("tar", "-xf", os.path.join(src, "tree.tar"), "-C", m), {"tree/" + n: d for n, d in small.items()}

    def many(m):
        err = None
        os.makedirs(os.path.join(m, "tree"), exist_ok=True)
        for n, d in small.items():
            err = write_loop(os.path.join(m, "tree", n), d)
            if err:
                break
        return err, {"tree/" + n: d for n, d in small.items()}

    def sparse(m):
        p = os.path.join(m, "sparse")
        size = 24 * MB
        model = bytearray(size)
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(fd, size)
        err = None
        r = random.Random(11)
        try:
            for _ in range(6000):
                off = r.randrange(size // 4096) * 4096
                d = r.randbytes(4096)
                os.pwrite(fd, d, off)
                model[off:off + 4096] = d
        except OSError as e:
            err = "write " + os.strerror(e.errno)
        for step, f in (("fsync", os.fsync), ("close", os.close)):
            try:
                f(fd)
            except OSError as e:
                err = err or step + " " + os.strerror(e.errno)
        return err, {"sparse": bytes(model)}

    def append2(m):
        p = os.path.join(m, "app")
        a = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        b = os.open(p, os.O_WRONLY | os.O_APPEND)
        err, written = None, bytearray()
        r = random.Random(5)
        try:
            for i in range(400):
                d = r.randbytes(64 * 1024)
                os.write(a if i % 2 == 0 else b, d)
                written += d
        except OSError as e:
            err = "write " + os.strerror(e.errno)
        for fd in (a, b):
            for step, f in (("fsync", os.fsync), ("close", os.close)):
                try:
                    f(fd)
                except OSError as e:
                    err = err or step + " " + os.strerror(e.errno)
        return err, {"app": bytes(written)}

    return [("sequential 24 MiB", seq), ("dd bs=1M", dd), ("cp", cp), ("rsync", rsync),
            ("tar -x 5000x4K", tar), ("5000 small files", many),
            ("random 4K into sparse 24 MiB", sparse), ("two appenders", append2)]


def judge(m, want):
    size, correct, wrong, unreadable, missing = 0, 0, 0, 0, 0
    for rel, data in want.items():
        p = os.path.join(m, rel)
        if not os.path.exists(p):
            missing += 1
            continue
        size += os.path.getsize(p)
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            unreadable += len(data)
            continue
        off = 0
        while True:
            try:
                got = os.pread(fd, 65536, off)
            except OSError:
                got = None
            if got is None:
                unreadable += min(4096, max(0, len(data) - off))
                off += 4096
                if off >= max(len(data), os.path.getsize(p)):
                    break
                continue
            if not got:
                break
            exp = data[off:off + len(got)]
            same = sum(1 for x, y in zip(got, exp) if x == y) if got != exp else len(exp)
            correct += same
            wrong += len(got) - same
            off += len(got)
        os.close(fd)
    return size, correct, wrong, unreadable, missing


def main():
    kinds = ["sealfs", "gocryptfs", "tmpfs", "ext4"]
    if "--only" in sys.argv:
        kinds = sys.argv[sys.argv.index("--only") + 1].split(",")
    src = tempfile.mkdtemp(prefix="fdcmp-src.")
    rows = []
    try:
        sc = scenarios(src)
        for name, run in sc:
            for kind in kinds:
                base = tempfile.mkdtemp(prefix="fdcmp.")
                fs = Fs(kind, base)
                try:
                    m = fs.mount()
                    err, want = run(m)
                    fs.unmount()
                    m = fs.mount()
                    size, correct, wrong, unreadable, missing = judge(m, want)
                    total = sum(len(d) for d in want.values())
                    rows.append((name, kind, err or "none", size, correct, wrong, unreadable, missing, total))
                    print("%-30s %-9s first error: %-40s size after remount %9d  correct %9d  wrong %d  unreadable %d  missing files %d  (of %d)" % rows[-1], flush=True)
                finally:
                    fs.destroy()
                    shutil.rmtree(base, ignore_errors=True)
    finally:
        shutil.rmtree(src, ignore_errors=True)


if __name__ == "__main__":
    main()
