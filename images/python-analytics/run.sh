#!/usr/bin/env bash
# The python-analytics clean room, end to end, on this machine (like images/clean-room/run.sh,
# with a container image as the workload):
#  1. install what is missing; build dcr-build, dcr-attest and the data generator;
#  2. build the OCI image from Debian packages (build-oci.sh: mmdebstrap, no registry) unless
#     out/python-analytics/oci holds it already; if its digest is not the recipe's pin
#     (Debian's packages moved on), say so and pin this build in a copy of the recipe;
#  3. a vTPM with an EK certificate, the key-release service on loopback, the parties' keys;
#     the contract names the image's run document (its dm-verity root hash inside);
#  4. dcr-build image (rootfs-analytics.img: EROFS + dm-verity), data generated, sealed,
#     registered and uploaded by each party;
#  5. the UKI boots under OVMF + swtpm (QEMU TCG): guest-init verifies the root, attests, gets
#     the keys, runs analyze.py (pandas, scikit-learn) chrooted in the image, seals the
#     per-segment model to both parties, powers off;
#  6. the publisher opens the result and prints it; with Debian's python3-sklearn on this
#     machine the same script on the plaintext is printed beside it for comparison.
# Environment: ROWS (default 10000), SEED (default 1), WORK (default out/python-analytics-run),
# DCR_BUILD_BIN + DCR_ATTEST_BIN + DCR_GEN_BIN (all three: use these binaries).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
DCR_TOP=$top
DCR_HINT="the python-analytics run stopped; fix the cause above and run bash images/python-analytics/run.sh again"
. "$top/reproducible/lib.sh"
. "$top/reproducible/room.sh"
cd "$top"
here="$top/images/python-analytics"
rows=${ROWS:-10000}
seed=${SEED:-1}
work=${WORK:-$top/out/python-analytics-run}
t0=$(date +%s)
step() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }

step "setup"
bash reproducible/setup.sh
room_binaries "$top"

oci="$top/out/python-analytics/oci"
pinned=$(sed -n 's/^digest = "\(.*\)"$/\1/p' "$here/image.toml")
if [ ! -f "$oci/oci-layout" ]; then
  step "building the image from Debian packages (images/python-analytics/build-oci.sh)"
  rm -rf "$oci"
  bash "$here/build-oci.sh" "$oci" >/dev/null
fi
pin=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$oci/index.json")
rm -rf "$work"
mkdir -p "$work"/{ca,tpm,keys,data,image,recipe}
if [ "$pin" != "$pinned" ]; then
  echo "note: the image built here is $pin, the recipe pins $pinned (Debian's packages changed); this run pins $pin"
fi
sed -e "s|^oci = \".*\"$|oci = \"$oci\"|" -e "s|^digest = \".*\"$|digest = \"$pin\"|" "$here/image.toml" > "$work/recipe/image.toml"
run_sha=$("$builder" rootfs --oci "$oci" --digest "$pin" --out "$work/probe.img" --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["run_document_sha256"])')
rm -f "$work/probe.img"
echo "image $pin; run document sha256 $run_sha"
cd "$work"

step "manufacturing the vTPM: EK certificate from a private swtpm-localca"
room_vtpm "$work"
step "starting the key-release service on loopback"
room_service "$attest" "$work"

step "the parties' keys and the contract (the workload: the image's run document)"
room_contract "$attest" "$here/contract.toml" "$run_sha"

step "dcr-build image (the recipe with this image) --contract contract.toml"
"$builder" image recipe/image.toml --contract contract.toml --out image

step "generating $rows rows per party (seed $seed), sealing, registering, uploading"
"$gen" --seed "$seed" --rows "$rows" --out-dir data
room_provide "$attest"

step "booting the clean room: UKI under OVMF + swtpm (QEMU TCG), the image's root on virtio-blk"
"$builder" run image --mode uefi --net --tpm-state tpm --timeout "${TIMEOUT:-1200}" --memory "${MEMORY:-1024}" \
  | sed -u -e '/^dcr-init: eventlog/s/base64=.*/base64=… (in console.log)/' \
  | grep --line-buffered -E '^(dcr-init|run):' | tee console.log

step "the publisher fetches and opens the result"
"$attest" get --service "$party_url" --service-pub service/service.pub.json --contract contract.toml \
  --name analytics-result.sealed --out result.sealed
"$attest" open --in result.sealed --out result.csv --key keys/publisher.key --contract contract.toml
echo "== result (per segment with at least 50 joined users: training count, coefficient ×1000, synthetic conversion rate ‰)"
column -s, -t < result.csv 2>/dev/null || cat result.csv
if /usr/bin/python3 -c 'import pandas, sklearn' 2>/dev/null; then
  DCR_INPUTS="data/publisher.csv:data/advertiser.csv" /usr/bin/python3 "$here/analyze.py" > host.csv
  echo "== the same script on the plaintext with this machine's scikit-learn (Debian python3-sklearn)"
  column -s, -t < host.csv 2>/dev/null || cat host.csv
fi
step "done: $work/result.csv"
