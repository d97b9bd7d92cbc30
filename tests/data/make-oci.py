#!/usr/bin/env python3
"""Write a small OCI image layout whose layers exercise what layer application must get right
(image-spec layer.md): whiteouts, an opaque directory, a hard link to a lower layer's file and
the overwrite of one of its names, a parent that is a symlink (merged /usr), a file replaced by
a directory and back, directory metadata changed over a directory, a multi-block directory, a
long name (PAX), a large uid (PAX), an extended attribute, set-uid, a FIFO; gzip, plain and
zstd layers. Written with Python's tarfile (not the tar crate dcr-build reads with), fixed
times, so the same bytes every run.

usage: make-oci.py OUTDIR [--tamper-diffid] [--gzip-only] [--flip-byte] ; prints the manifest digest.
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

MTIME = 1_700_000_000


def entry(name, kind=tarfile.REGTYPE, data=b"", mode=None, uid=0, gid=0, link="", pax=None):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode if mode is not None else (0o755 if kind == tarfile.DIRTYPE else 0o644)
    ti.uid, ti.gid = uid, gid
    ti.mtime = MTIME
    ti.linkname = link
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    if pax:
        ti.pax_headers = pax
    return ti, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def layer(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for ti, f in entries:
            t.addfile(ti, f)
    return buf.getvalue()


D, F, L, H, FIFO = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE

big = bytearray((i * 7 + 3) % 251 for i in range(10_000))
if "--flip-byte" in sys.argv:
    big[5000] ^= 1
big = bytes(big)
layer1 = layer(
    [
        entry("etc/", D, mode=0o755),
        entry("etc/passwd", F, b"root:x:0:0:root:/root:/bin/sh\nanalyst:x:1000:1000::/home:/bin/sh\n"),
        entry("usr/", D, mode=0o755),
        entry("usr/bin/", D, mode=0o755),
        entry("usr/bin/tool", F, b"#!/bin/sh\necho tool\n", mode=0o4755),
        entry("usr/lib/", D, mode=0o755),
        entry("usr/lib/a.so", F, b"a" * 5000),
        entry("usr/lib/b", F, b"first b\n"),
        entry("lib", L, link="usr/lib"),
        entry("opaque/", D),
        entry("opaque/x", F, b"x\n"),
        entry("opaque/sub/", D),
        entry("opaque/sub/y", F, b"y\n"),
        entry("wh/", D),
        entry("wh/keep", F, b"keep\n"),
        entry("wh/gone", F, b"gone\n"),
        entry("wh/gonedir/", D),
        entry("wh/gonedir/f", F, b"f\n"),
        entry("replace-me", F, b"was a file\n"),
        entry("dir-to-file/", D),
        entry("dir-to-file/child", F, b"child\n"),
        entry("big.bin", F, big, mode=0o600, uid=1000, gid=1000),
        entry("empty", F, b""),
        entry("many/", D),
        *[entry(f"many/entry-{i:04d}-{'n' * (i % 40)}", F, f"{i}\n".encode()) for i in range(300)],
        entry("deep/" + "d" * 120 + "/file-with-a-long-path", F, b"long\n"),
        entry("highuid", F, b"uid 70000\n", uid=70000, gid=70001),
        entry("cap", F, b"capability\n", mode=0o755, pax={"SCHILY.xattr.user.note": "kept out"}),
        entry("fifo", FIFO),
        entry("abs-link", L, link="/etc/passwd"),
        entry("dangling", L, link="/nowhere"),
    ]
)
layer2 = layer(
    [
        entry("wh/.wh.gone", F),
        entry("wh/.wh.gonedir", F),
        entry("opaque/.wh..wh..opq", F),
        entry("opaque/z", F, b"z\n"),
        entry("lib/c.so", F, b"through the symlinked parent\n"),
        entry("hl", H, link="usr/lib/b"),
        entry("replace-me/", D, mode=0o750),
        entry("replace-me/inside", F, b"now a dir\n"),
        entry("dir-to-file", F, b"now a file\n"),
        entry("etc/", D, mode=0o700, uid=0, gid=0),
        entry("wh/gone", F, b"same-layer file survives its own whiteout? no: added after\n"),
    ]
)
layer3 = layer(
    [
        entry("usr/lib/b", F, b"second b\n"),
        entry(".wh.does-not-exist", F),
        entry("usr/bin/tool2", H, link="usr/bin/tool"),
    ]
)


def main():
    out = sys.argv[1]
    tamper = "--tamper-diffid" in sys.argv
    os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)

    def put(b):
        d = hashlib.sha256(b).hexdigest()
        with open(os.path.join(out, "blobs", "sha256", d), "wb") as f:
            f.write(b)
        return "sha256:" + d, len(b)

    if "--gzip-only" in sys.argv:
        third = (gzip.compress(layer3, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip", layer3)
    else:
        zst = subprocess.run(["zstd", "-q", "-c", "-19"], input=layer3, capture_output=True, check=True).stdout
        third = (zst, "application/vnd.oci.image.layer.v1.tar+zstd", layer3)
    blobs = [
        (gzip.compress(layer1, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip", layer1),
        (layer2, "application/vnd.oci.image.layer.v1.tar", layer2),
        third,
    ]
    layers, diff_ids = [], []
    for b, mt, plain in blobs:
        d, n = put(b)
        layers.append({"mediaType": mt, "digest": d, "size": n})
        diff_ids.append("sha256:" + hashlib.sha256(plain).hexdigest())
    if tamper:
        diff_ids[1] = "sha256:" + "0" * 64
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/usr/bin/tool"], "Cmd": ["--x"], "Env": ["A=1"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "make-oci.py"}],
    }
    cd, cn = put(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
        "layers": layers,
    }
    md, mn = put(json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": md,
                "size": mn,
                "annotations": {"org.opencontainers.image.ref.name": "test"},
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(md)


main()
