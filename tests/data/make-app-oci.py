#!/usr/bin/env python3
"""Write a one-layer OCI image layout holding one static program at /usr/bin/<name>, whose
Entrypoint is that program and whose Cmd is the given arguments; fixed times, so the same
bytes every run. Written with Python's tarfile and json (independent of dcr-build).

usage: make-app-oci.py OUTDIR PROGRAM NAME [ARG ...] ; prints the manifest digest.
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

out, program, name, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
data = open(program, "rb").read()
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
    for d in ["usr/", "usr/bin/", "etc/"]:
        ti = tarfile.TarInfo(d)
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
        t.addfile(ti)
    for path, body, mode in [
        (f"usr/bin/{name}", data, 0o755),
        ("etc/passwd", b"root:x:0:0:root:/root:/sbin/nologin\n", 0o644),
    ]:
        ti = tarfile.TarInfo(path)
        ti.size, ti.mode, ti.mtime = len(body), mode, 1_700_000_000
        t.addfile(ti, io.BytesIO(body))
layer = buf.getvalue()
os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)


def put(b):
    d = hashlib.sha256(b).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", d), "wb") as f:
        f.write(b)
    return {"digest": "sha256:" + d, "size": len(b)}


gz = gzip.compress(layer, mtime=0)
config = {
    "architecture": "amd64",
    "os": "linux",
    "config": {"Entrypoint": [f"/usr/bin/{name}"], "Cmd": args, "WorkingDir": "/"},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
}
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **put(json.dumps(config).encode())},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put(gz)}],
}
m = put(json.dumps(manifest).encode())
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [{"mediaType": manifest["mediaType"], **m,
               "annotations": {"org.opencontainers.image.ref.name": "app"}}]}, f)
with open(os.path.join(out, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
print(m["digest"])
