#!/usr/bin/env bash
# The WebAssembly clean room, end to end, on this machine (like images/clean-room/run.sh, with
# the overlap workload as a WASI module run by dcr's wasmtime runner in the guest):
#  1. install what is missing; build dcr-build, dcr-attest and the data generator;
#  2. a vTPM with an EK certificate, the key-release service on loopback, the parties' keys;
#  3. dcr-build image: the overlap crate built for wasm32-wasip1 (its SHA-256 is the
#     contract's), the runner (attest/wasm-runner) for the guest;
#  4. data generated, sealed, registered and uploaded by each party;
#  5. the UKI boots under OVMF + swtpm (QEMU TCG): guest-init attests, gets the keys, runs the
#     module under the runner (inputs preopened read-only, no sockets, limits), seals the
#     result to both parties, powers off;
#  6. the publisher opens the result and prints it; it is compared with sqlite3 on the
#     plaintext (the same aggregates computed by an independent engine).
# Environment: ROWS (default 10000), SEED (default 1), WORK (default out/wasm-overlap-run),
# DCR_BUILD_BIN + DCR_ATTEST_BIN + DCR_GEN_BIN (all three: use these binaries).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
DCR_TOP=$top
DCR_HINT="the wasm clean room stopped; fix the cause above and run bash images/wasm-overlap/run.sh again"
. "$top/reproducible/lib.sh"
. "$top/reproducible/room.sh"
cd "$top"
here="$top/images/wasm-overlap"
rows=${ROWS:-10000}
seed=${SEED:-1}
work=${WORK:-$top/out/wasm-overlap-run}
t0=$(date +%s)
step() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }

step "setup"
bash reproducible/setup.sh
room_binaries "$top"
command -v sqlite3 >/dev/null 2>&1 || die "sqlite3 not found (apt-get install sqlite3): it checks the result"

rm -rf "$work"
mkdir -p "$work"/{ca,tpm,keys,data,image}
cd "$work"
step "manufacturing the vTPM: EK certificate from a private swtpm-localca"
room_vtpm "$work"
step "starting the key-release service on loopback"
room_service "$attest" "$work"

step "the parties' keys and the contract"
room_contract "$attest" "$here/contract.toml"

step "dcr-build image images/wasm-overlap --contract contract.toml"
"$builder" image "$here" --contract contract.toml --out image
python3 -c 'import json,sys; i=json.load(open(sys.argv[1]))["inputs"]
for k in ("workload:overlap", "wasm-runner"):
    v = i[k]
    print("  %-17s sha256 %s (%d bytes, %s)" % (k, v["sha256"], v["size"], v["source"]))' image/measurements.json

step "generating $rows rows per party (seed $seed), sealing, registering, uploading"
"$gen" --seed "$seed" --rows "$rows" --out-dir data
room_provide "$attest"

step "booting the clean room: UKI under OVMF + swtpm (QEMU TCG)"
"$builder" run image --mode uefi --net --tpm-state tpm --timeout "${TIMEOUT:-900}" \
  | sed -u -e '/^dcr-init: eventlog/s/base64=.*/base64=… (in console.log)/' \
  | grep --line-buffered -E '^(dcr-init|run):' | tee console.log

step "the publisher fetches and opens the result"
"$attest" get --service "$party_url" --service-pub service/service.pub.json --contract contract.toml \
  --name overlap-wasm-result.sealed --out result.sealed
"$attest" open --in result.sealed --out result.csv --key keys/publisher.key --contract contract.toml
echo "== result (audience overlap and conversions per segment, computed by the WebAssembly module; groups under k = 50 suppressed)"
column -s, -t < result.csv 2>/dev/null || cat result.csv

step "the same aggregates by sqlite3 on the plaintext"
sqlite3 -csv -header :memory: \
  ".import --csv data/publisher.csv segments" \
  ".import --csv data/advertiser.csv conversions" \
  "SELECT s.segment AS segment, COUNT(*) AS overlap, SUM(CAST(c.converted AS INTEGER)) AS conversions
     FROM segments s JOIN conversions c ON s.user = c.user
     GROUP BY s.segment HAVING COUNT(*) >= 50 ORDER BY s.segment;" | tr -d '\r' > sqlite.csv
cmp -s result.csv sqlite.csv ||
  die "the clean room's result and sqlite3's differ: $(diff result.csv sqlite.csv | head -5 | tr '\n' ' ')"
echo "== sqlite3 on the plaintext gives the same table"
step "done: $work/result.csv"
