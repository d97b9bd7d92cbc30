"""A newc (SVR4 with no CRC) cpio archive of a directory tree, for the throwaway initramfs of
the Nitro scripts' helper VMs (reproducible/nitro-kernel.sh --check, nitro-enclave.sh); never
an image's (dcr-build packs those deterministically itself).

usage: python3 reproducible/newc.py ROOT OUT
Directories 0755, files 0755 (each one here is an executable or a shared library), owner 0,
entries in sorted order, padded to 512 bytes. Symlinks and special files are refused.
"""
import os
import sys


def entry(name, mode, body, ino):
    name = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(name), 0)
    out = b"070701" + b"".join(b"%08X" % v for v in fields) + name
    out += b"\0" * (-len(out) % 4) + body
    return out + b"\0" * (-len(out) % 4)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: newc.py ROOT OUT")
    root, out = sys.argv[1], sys.argv[2]
    arc, ino = b"", 1
    for d, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(d, root)
        if rel != ".":
            arc += entry(rel, 0o040755, b"", ino)
            ino += 1
        for f in sorted(files):
            p = os.path.join(d, f)
            if os.path.islink(p) or not os.path.isfile(p):
                sys.exit("newc.py: %s is not a regular file" % p)
            with open(p, "rb") as fh:
                arc += entry(os.path.normpath(os.path.join(rel, f)), 0o100755, fh.read(), ino)
            ino += 1
    arc += entry("TRAILER!!!", 0, b"", 0)
    with open(out, "wb") as fh:
        fh.write(arc + b"\0" * (-len(arc) % 512))


main()
