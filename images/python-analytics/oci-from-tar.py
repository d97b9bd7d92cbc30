#!/usr/bin/env python3
"""Wrap a root file system tarball (mmdebstrap's output) into an OCI image layout with one
uncompressed layer and the given Entrypoint/Env/WorkingDir; no daemon, no registry. Same
input bytes, same layout bytes (no timestamps but SOURCE_DATE_EPOCH's).

usage: oci-from-tar.py ROOTFS.tar OUTDIR --entrypoint JSON-ARRAY [--env K=V …] [--workdir DIR]
prints the manifest digest.
"""
import argparse
import datetime
import hashlib
import json
import os
import shutil

p = argparse.ArgumentParser()
p.add_argument("tar")
p.add_argument("out")
p.add_argument("--entrypoint", required=True, help="a JSON array of strings")
p.add_argument("--env", nargs="*", default=[])
p.add_argument("--workdir", default="/")
a = p.parse_args()
entrypoint = json.loads(a.entrypoint)
if not (isinstance(entrypoint, list) and entrypoint and all(isinstance(x, str) for x in entrypoint)):
    p.error("--entrypoint: a non-empty JSON array of strings")
os.makedirs(os.path.join(a.out, "blobs", "sha256"), exist_ok=True)


def digest_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest(), os.path.getsize(path)


def put(b):
    d = hashlib.sha256(b).hexdigest()
    with open(os.path.join(a.out, "blobs", "sha256", d), "wb") as f:
        f.write(b)
    return {"digest": "sha256:" + d, "size": len(b)}


layer, size = digest_file(a.tar)
shutil.copyfile(a.tar, os.path.join(a.out, "blobs", "sha256", layer))
epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
config = {
    "architecture": "amd64",
    "os": "linux",
    "created": created,
    "config": {"Entrypoint": entrypoint, "Env": a.env, "WorkingDir": a.workdir},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + layer]},
    "history": [{"created": created, "created_by": "images/python-analytics/build-oci.sh (mmdebstrap)"}],
}
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
               **put(json.dumps(config, sort_keys=True).encode())},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": "sha256:" + layer, "size": size}],
}
m = put(json.dumps(manifest, sort_keys=True).encode())
index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
         "manifests": [{"mediaType": manifest["mediaType"], **m,
                        "annotations": {"org.opencontainers.image.ref.name": "python-analytics"},
                        "platform": {"architecture": "amd64", "os": "linux"}}]}
with open(os.path.join(a.out, "index.json"), "w") as f:
    json.dump(index, f, sort_keys=True)
with open(os.path.join(a.out, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
print(m["digest"])
