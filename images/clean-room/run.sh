#!/usr/bin/env bash
# The main job, end to end, on this machine:
#  1. install what is missing; build dcr-build, dcr-attest and the data generator;
#  2. manufacture a vTPM with an EK certificate (swtpm_setup + a private swtpm-localca);
#  3. start the key-release service (dcr-attest serve) on loopback: plain HTTP for the TEE,
#     TLS for the parties (its certificate pinned through service.pub.json);
#  4. the parties make recipient keys; the contract gets their keys and the service's
#     signing key; dcr-build builds the image with that contract and shows its measurements;
#  5. each party generates its dataset (deterministic, ROWS rows), seals it, registers its key
#     with the image's reference values, and uploads the sealed data;
#  6. the advertiser submits its SQL query (overlap.sql) under the contract's analysis, and
#     the same question under the differentially private analysis (overlap-dp.sql);
#  7. the UKI boots under OVMF + swtpm (QEMU TCG): guest-init attests, gets the keys, runs
#     the native join, answers the query with the SQL engine (the rule's k = 50 enforced on
#     the plan), seals both to the parties, uploads them, powers off;
#  8. the advertiser fetches the SQL answer, checks its proof (an attested TEE of this
#     contract signed it) while opening it; the publisher opens the native output; they must
#     be the same table, which is printed; then the DP answer (noisy, with its ε, noise
#     scales and the service's signed budget debit);
#  9. the publisher downloads the run's receipt (signed by the TEE's attested result key)
#     and the evidence it posted, and verifies both offline against image/measurements.json
#     and the service's pinned key (dcr-attest verify receipt).
# Environment: ROWS (default 10000), SEED (default 1), WORK (default out/clean-room-run);
# DCR_BUILD_BIN, DCR_ATTEST_BIN and DCR_GEN_BIN, all three set: use these binaries instead
# of building them (the tests do: their binaries are built already).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
DCR_TOP=$top
DCR_HINT="the main job stopped; fix the cause above and run bash images/clean-room/run.sh again"
. "$top/reproducible/lib.sh"
. "$top/reproducible/room.sh"
cd "$top"
rows=${ROWS:-10000}
seed=${SEED:-1}
work=${WORK:-$top/out/clean-room-run}
t0=$(date +%s)
step() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }

step "setup"
bash reproducible/setup.sh
# The tests (tests/run.sh) have built them already, with their own profile.
room_binaries "$top"

rm -rf "$work"
mkdir -p "$work"/{ca,tpm,keys,data,image}
cd "$work"

step "manufacturing the vTPM: EK certificate from a private swtpm-localca"
room_vtpm "$work"
step "starting the key-release service on loopback"
room_service "$attest" "$work"
echo "service $url (TEE), $party_url (parties, pinned certificate), signing key $signing"

step "the parties' keys and the contract"
room_contract "$attest" "$top/images/clean-room/contract.toml"

step "dcr-build image images/clean-room --contract contract.toml"
"$builder" image "$top/images/clean-room" --contract contract.toml --out image
step "reference values (image/measurements.json: predicted launch measurements)"
python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["measurements"]
for p,v in sorted(m.items()):
    if p=="tpm": print("  tpm pcrs", " ".join(f"{k}={x[:16]}…" for k,x in sorted(v["pcrs"].items(), key=lambda kv:int(kv[0]))))
    if p=="snp": print("  snp launch_digest", v["launch_digest"])
    if p=="tdx": print("  tdx mrtd", v["mrtd"])' image/measurements.json

step "generating $rows rows per party (seed $seed), sealing, registering, uploading"
"$gen" --seed "$seed" --rows "$rows" --out-dir data
room_provide "$attest"

step "the advertiser submits its SQL query (images/clean-room/overlap.sql) under analysis overlap"
"$attest" query submit --service "$party_url" --service-pub service/service.pub.json \
  --token-file keys/advertiser.token --contract contract.toml --party advertiser --analysis overlap \
  --sql-file "$top/images/clean-room/overlap.sql" --query-out query.json | tee submit.out
qid=$(sed -n 's/^submitted query \([0-9a-f]\{32\}\) .*/\1/p' submit.out)
[ -n "$qid" ] || die "query submit printed no query id: $(cat submit.out)"
step "the advertiser submits the same question under analysis overlap_dp (differential privacy: noise, budget)"
"$attest" query submit --service "$party_url" --service-pub service/service.pub.json \
  --token-file keys/advertiser.token --contract contract.toml --party advertiser --analysis overlap_dp \
  --sql-file "$top/images/clean-room/overlap-dp.sql" --query-out query-dp.json | tee submit-dp.out
qid_dp=$(sed -n 's/^submitted query \([0-9a-f]\{32\}\) .*/\1/p' submit-dp.out)
[ -n "$qid_dp" ] || die "query submit printed no query id: $(cat submit-dp.out)"

step "booting the clean room: UKI under OVMF + swtpm (QEMU TCG), network to the service"
"$builder" run image --mode uefi --net --tpm-state tpm --timeout "${TIMEOUT:-900}" --memory "${MEMORY:-1024}" \
  | sed -u -e '/^dcr-init: eventlog/s/base64=.*/base64=… (in console.log)/' \
  | grep --line-buffered -E '^(dcr-init|run):' | tee console.log

step "the advertiser fetches and opens the answer to its SQL query"
# query result checks the answer's proof first (the service's signed release, key pinned in
# the contract, names the TEE's result key, whose signature covers the sealed bytes), then
# that it answers exactly query.json.
"$attest" query result --service "$party_url" --service-pub service/service.pub.json \
  --contract contract.toml --id "$qid" --key keys/advertiser.key --query query.json --out result.csv
step "the publisher fetches and opens the native workload's output (the same table)"
"$attest" get --service "$party_url" --service-pub service/service.pub.json --contract contract.toml \
  --name overlap-result.sealed --out result.sealed
"$attest" open --in result.sealed --out native.csv --key keys/publisher.key --contract contract.toml
cmp -s result.csv native.csv ||
  die "the SQL answer (result.csv) and the native workload's output (native.csv) differ: $(diff result.csv native.csv | head -5 | tr '\n' ' ')"
echo "== result (audience overlap and conversions per segment; groups under k = 50 suppressed; SQL = native)"
column -s, -t < result.csv 2>/dev/null || cat result.csv
step "the advertiser opens the differentially private answer (its ε, noise scales and the service's budget debit)"
"$attest" query result --service "$party_url" --service-pub service/service.pub.json \
  --contract contract.toml --id "$qid_dp" --key keys/advertiser.key --query query-dp.json --out result-dp.csv
echo "== differentially private answer (noisy; segments released by a noisy threshold of at least 50 people)"
column -s, -t < result-dp.csv 2>/dev/null || cat result-dp.csv
step "the publisher fetches the run's signed receipt and verifies it offline (service key, TEE signature, debits, evidence vs measurements)"
"$attest" receipts --service "$party_url" --service-pub service/service.pub.json --contract contract.toml \
  --token-file keys/publisher.token --out receipts
n=0
for r in receipts/*.receipt.json; do
  [ -e "$r" ] || die "the service holds no receipt of this run"
  "$attest" verify receipt --receipt "$r" --evidence "${r%.receipt.json}.evidence.json" \
    --measurements image/measurements.json --service-pub service/service.pub.json ||
    die "receipt $r does not verify"
  n=$((n + 1))
done
echo "== receipt: $n run(s) verified offline"
step "done: $work/result.csv"
