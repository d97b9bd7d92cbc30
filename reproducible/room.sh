# Sourced by the clean rooms' run.sh (bash, after lib.sh; they define `step MESSAGE`): the
# pieces every room needs around its own contract and image.
#
# room_binaries TOP   sets builder, attest, gen: DCR_BUILD_BIN, DCR_ATTEST_BIN and
#                     DCR_GEN_BIN when all three are set (the tests' builds), else a release
#                     build of dcr-build, dcr-attest (without its local SQL engine: DataFusion
#                     on the host is not needed, the guest's engine is built by dcr-build
#                     image) and dcr-cleanroom-gen
# room_vtpm WORK      a vTPM state in WORK/tpm with an EK certificate from a private
#                     swtpm-localca (WORK/ca)
# room_service ATTEST WORK
#                     the parties' tokens (WORK/tokens, WORK/keys/<party>.token) and the
#                     key-release service on loopback: plain HTTP for the TEE (everything it
#                     exchanges is bound and signed) and TLS for the parties (their tokens and
#                     blobs; they pin its certificate via service.pub.json). Sets svc_pid, url,
#                     party_url, port, signing; room_track stops the service at exit.
# room_contract ATTEST TEMPLATE [WORKLOAD_SHA256]
#                     (in the work directory) the parties' recipient keys (keys/), and
#                     contract.toml: TEMPLATE with their keys, the service's URL as the guest
#                     reaches it and its signing key (and every sha256 = WORKLOAD_SHA256 when
#                     given); prints its digest. Uses port, signing
# room_provide ATTEST [PLATFORM]
#                     each party seals data/<party>.csv (a fresh data key), registers the key
#                     with the service for contract.toml on the reference values of
#                     image/measurements.json (PLATFORM, default tpm) and uploads the sealed blob
#                     (the reference contract's key ids and blob names); uses party_url

# room_track PID      stop PID when the script exits (one EXIT trap for every background
#                     process of a room: the service and whatever the script starts)
room_pids=()
room_stop() {
  local p
  for p in "${room_pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
room_track() {
  room_pids+=("$1")
  trap room_stop EXIT
}

room_binaries() {
  local top=$1
  if [ -n "${DCR_BUILD_BIN:-}" ] && [ -n "${DCR_ATTEST_BIN:-}" ] && [ -n "${DCR_GEN_BIN:-}" ]; then
    step "using DCR_BUILD_BIN, DCR_ATTEST_BIN, DCR_GEN_BIN (not building)"
    builder=$DCR_BUILD_BIN attest=$DCR_ATTEST_BIN gen=$DCR_GEN_BIN
  else
    step "building dcr-build, dcr-attest (without the local SQL engine), dcr-cleanroom-gen"
    (cd "$top" && cargo build --locked --release --quiet --no-default-features \
      -p dcr-build -p dcr-attest -p dcr-cleanroom-gen)
    builder="$top/target/release/dcr-build" attest="$top/target/release/dcr-attest"
    gen="$top/target/release/dcr-cleanroom-gen"
  fi
  local b
  for b in "$builder" "$attest" "$gen"; do
    [ -x "$b" ] || die "$b is not an executable (DCR_BUILD_BIN, DCR_ATTEST_BIN, DCR_GEN_BIN)"
  done
}

room_contract() {
  local attest=$1 template=$2 workload_sha=${3:-} pub_key adv_key
  pub_key=$("$attest" keygen --out-dir keys --name publisher)
  adv_key=$("$attest" keygen --out-dir keys --name advertiser)
  awk -v pk="$pub_key" -v ak="$adv_key" -v url="http://10.0.2.2:$port" -v sk="$signing" -v ws="$workload_sha" '
    /^hpke_public_key = /   { n++; print "hpke_public_key = \"" (n == 1 ? pk : ak) "\""; next }
    /^url = /               { print "url = \"" url "\""; next }
    /^signing_key = /       { print "signing_key = \"" sk "\""; next }
    /^sha256 = / && ws != "" { print "sha256 = \"" ws "\""; next }
    { print }' "$template" > contract.toml
  "$attest" contract --in contract.toml | sed 's/^/contract digest /'
}

room_vtpm() {
  local work=$1
  cat > "$work/localca.conf" <<CONF
statedir = $work/ca
signingkey = $work/ca/signkey.pem
issuercert = $work/ca/issuercert.pem
certserial = $work/ca/certserial
CONF
  cat > "$work/swtpm-setup.conf" <<CONF
create_certs_tool= /usr/bin/swtpm_localca
create_certs_tool_config = $work/localca.conf
create_certs_tool_options = /etc/swtpm-localca.options
active_pcr_banks = sha256
CONF
  swtpm_setup --tpm2 --create-ek-cert --overwrite --tpmstate "$work/tpm" --config "$work/swtpm-setup.conf" >/dev/null
}

room_service() {
  local attest=$1 work=$2
  umask 077
  printf 'publisher:%s\nadvertiser:%s\n' "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
    "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$work/tokens"
  sed -n 's/^publisher://p' "$work/tokens" > "$work/keys/publisher.token"
  sed -n 's/^advertiser://p' "$work/tokens" > "$work/keys/advertiser.token"
  umask 022
  "$attest" serve --data-dir "$work/service" --listen 127.0.0.1:0 --tls-listen 127.0.0.1:0 \
    --tokens "$work/tokens" --tpm-ek-root "$work/ca/swtpm-localca-rootca-cert.pem" \
    --tpm-ek-intermediate "$work/ca/issuercert.pem" > "$work/service.out" 2> "$work/service.log" &
  svc_pid=$!
  room_track "$svc_pid"
  for _ in $(seq 100); do grep -q '^listening on https' "$work/service.out" 2>/dev/null && break; sleep 0.1; done
  url=$(sed -n 's/^listening on \(http:.*\)/\1/p' "$work/service.out")
  party_url=$(sed -n 's/^listening on \(https:.*\)/\1/p' "$work/service.out")
  [ -n "$url" ] && [ -n "$party_url" ] ||
    die "the key-release service did not start within 10 s: $(tr '\n' ' ' < "$work/service.log")"
  port=${url##*:}
  signing=$(sed -n 's/.*"signing_key": "\(.*\)".*/\1/p' "$work/service/service.pub.json")
}

room_provide() {
  local attest=$1 platform=${2:-tpm} party key_id blob
  for party in publisher advertiser; do
    case $party in
      publisher) key_id=publisher-segments-1; blob=publisher-segments.sealed ;;
      advertiser) key_id=advertiser-conversions-1; blob=advertiser-conversions.sealed ;;
    esac
    "$attest" seal --in "data/$party.csv" --out "data/$party.sealed" --key-id "$key_id" --dek-out "keys/$party.dek"
    "$attest" register --service "$party_url" --service-pub service/service.pub.json \
      --token-file "keys/$party.token" --dek "keys/$party.dek" --contract contract.toml \
      --reference image/measurements.json --platform "$platform"
    "$attest" put --service "$party_url" --service-pub service/service.pub.json \
      --token-file "keys/$party.token" --contract contract.toml \
      --name "$blob" --in "data/$party.sealed"
  done
}
