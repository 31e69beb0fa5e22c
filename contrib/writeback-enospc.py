#!/usr/bin/env python3
"""Where ENOSPC shows with and without the writeback cache (README, "Full
disk": why the ENOSPC margin and not a fallocate reservation).

For margin 0 (new opens keep the kernel's writeback cache) and 1G (every
open is write-through): a fresh volume on a 16 MiB tmpfs, 24 MiB written in
4 KiB write() calls, then fsync and close; prints which calls failed.
Needs root. Usage: contrib/writeback-enospc.py [SEALFS_BINARY]
"""
import os, subprocess, sys, tempfile, time

S = sys.argv[1] if len(sys.argv) > 1 else "target/release/sealfs"
for margin in ["0", "1G"]:
    base = tempfile.mkdtemp(prefix="wbf.")
    c, mnt, pw = base + "/c", base + "/m", base + "/pw"
    os.makedirs(c)
    os.makedirs(mnt)
    with open(pw, "w") as f:
        f.write("writeback-enospc\n")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "wbf", c], check=True)
    try:
        subprocess.run([S, "init", c, "--passfile", pw, "--kdf-memory-kib", "8192",
                        "--kdf-iterations", "1"], check=True, capture_output=True)
        p = subprocess.Popen([S, "mount", c, mnt, "--passfile", pw, "--no-audit", "-f",
                              "--enospc-margin", margin],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if subprocess.run(["mountpoint", "-q", mnt]).returncode == 0:
                break
            time.sleep(0.05)
        fd = os.open(mnt + "/f", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        block, written, errs = os.urandom(4096), 0, []
        try:
            for _ in range(6144):
                written += os.write(fd, block)
        except OSError as e:
            errs.append("write %s after %d bytes" % (os.strerror(e.errno), written))
        for step, f in (("fsync", os.fsync), ("close", os.close)):
            try:
                f(fd)
            except OSError as e:
                errs.append("%s %s" % (step, os.strerror(e.errno)))
        print("margin %-3s: 24 MiB in 4 KiB writes onto a 16 MiB tmpfs: %s"
              % (margin, "; ".join(errs) or "no error"))
        subprocess.run(["umount", mnt])
        p.wait(timeout=30)
    finally:
        for _ in range(50):
            if subprocess.run(["umount", c]).returncode == 0:
                break
            time.sleep(0.1)
        subprocess.run(["rm", "-rf", base])
